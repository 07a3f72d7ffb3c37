"""Greedy layer-wise RICA training of every stage, then optional joint fine-tuning.

    repro train                                   # faces32 on the built-in pypi-faces data, 1 rank
    mpiexec -n 4 repro train --config le2012 --data youtube-frames --device gpu --out results/le
    repro train --out results/le --resume         # continue an interrupted run

The schedule is a list of steps: ``layer_steps`` for stage 0, then for stage 1, ..., then
``finetune_steps`` joint steps. Step ``g`` always trains on the same minibatch (drawn from the seed
and ``g``), so a resumed run ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from repro.data.loader import Loader
from repro.errors import ReproError
from repro.experiments.run import Session, data_record
from repro.model import checkpoint as ckpt
from repro.model.config import NetworkConfig
from repro.model.network import Network, apply_update, load_checkpoint, save_checkpoint
from repro.model.optim import Optimizer


DEFAULT_CONFIG = "faces32"  # what `repro train` trains when no --config is given
DIVERGED = 1e3  # a phase whose loss grows this many times over its first step has diverged


@dataclass(frozen=True)
class Phase:
    name: str  # "stage0" ... or "finetune"
    stage: int | None  # None for joint fine-tuning
    start: int  # first global step of the phase
    steps: int


def schedule(cfg: NetworkConfig) -> list[Phase]:
    phases, g = [], 0
    for i in range(len(cfg.stages)):
        phases.append(Phase(f"stage{i}", i, g, cfg.train.layer_steps))
        g += cfg.train.layer_steps
    if cfg.train.finetune_steps:
        phases.append(Phase("finetune", None, g, cfg.train.finetune_steps))
    return phases


def batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The images of global step ``step``: epochs of seeded permutations, a pure function of (seed, step)."""
    if batch > n:
        raise ReproError(f"minibatch of {batch} is larger than the dataset ({n} images)")
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(perm[pos * batch:(pos + 1) * batch])


def train(session: Session, cfg: NetworkConfig, store: Any, resume: bool = False, max_steps: int | None = None,
          console: Console | None = None, keep: int = 2) -> dict[str, Any]:
    """Run (or continue) the schedule; checkpoints in ``RUN/checkpoints`` (the newest ``keep``); returns the summary."""
    w, xp, t = session.w, session.xp, cfg.train
    console = console or Console(stderr=True)
    cfg.check_image_shape(tuple(store.shape), str(getattr(store, "path", "dataset")))
    ck_dir = session.run / "checkpoints"
    opt = Optimizer.from_config(t)
    start = 0
    if resume and (ck_dir / "latest.json").exists():
        net, manifest = load_checkpoint(ck_dir, cfg, xp, w, opt=opt)
        start = int(manifest["step"])
    else:
        if resume and w.is_root:
            console.print(f"no checkpoint in {ck_dir}: starting from step 0")
        net = Network.create(cfg, seed=t.seed, xp=xp, w=w)
    phases = schedule(cfg)
    total = sum(p.steps for p in phases)
    end = total if max_steps is None else min(total, start + max_steps)
    session.write_json("config.json", cfg.to_dict())
    if start == 0 or not (session.run / "data.json").exists():
        session.write_json("data.json", data_record(store))
    log_path = session.run / "train-log.jsonl"
    losses: dict[str, float] = {}
    phase_start_loss: dict[str, float] = {}
    t0, seen = time.perf_counter(), 0
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                        TimeRemainingColumn(), console=console, disable=not w.is_root)
    with progress, (open(log_path, "a") if w.is_root else _Null()) as log:
        task = progress.add_task("train", total=total, completed=start, loss=float("nan"), ips=0.0)
        # every rank of the model-parallel group reads the same images, step by step, read ahead
        batches = Loader(store, t.batch, t.seed, shuffle=False).read(
            batch_indices(len(store), t.batch, t.seed, g) for g in range(start, end))
        grad_bufs: dict = {}
        for g in range(start, end):
            phase = next(p for p in phases if p.start <= g < p.start + p.steps)
            x = next(batches)
            if phase.stage is None:
                loss, grads = net.finetune_loss_and_grads(x, out=grad_bufs)
            else:
                loss, grads = net.layer_loss_and_grads(x, phase.stage, out=grad_bufs)
            grad_bufs.update(grads)  # the next step writes its gradients over these
            apply_update(net, opt, grads)
            first = phase_start_loss.setdefault(phase.name, loss)
            if not np.isfinite(loss) or loss > DIVERGED * first:
                raise ReproError(f"loss diverged at step {g + 1} ({phase.name}: {first:.4g} -> {loss:.4g}); "
                                 "lower train.lr (--lr)")
            losses[phase.name] = loss
            seen += t.batch
            ips = seen / (time.perf_counter() - t0)
            progress.update(task, advance=1, description=f"train {phase.name}", loss=loss, ips=ips)
            if w.is_root:
                log.write(json.dumps({"step": g + 1, "phase": phase.name, "loss": loss}) + "\n")
            done = g + 1
            if done % t.checkpoint_every == 0 or done == end:
                save_checkpoint(net, opt, ck_dir, done, {"phase": phase.name}, keep=keep)
    if start == end and start > 0 and w.is_root:
        console.print(f"nothing to do: the run is already at step {start} of {total}")
    wall = time.perf_counter() - t0
    summary = {"steps_done": end, "steps_total": total, "finished": end == total, "ranks": w.size,
               "device": session.backend.name, "last_loss": losses, "images_per_s": seen / wall if wall else 0.0,
               "seconds": wall, "checkpoint": str(ck_dir / f"step-{end:08d}") if end else None}
    session.write_json("train.json", summary)
    return summary


class _Null:
    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *a: Any) -> None:
        return None

    def write(self, s: str) -> None:
        return None


def resolve_config(session: Session, config: str | None, resume: bool, overrides: dict[str, Any]) -> NetworkConfig:
    """The config to train: on --resume the run's own (config.json), else the named one plus overrides.

    ``config`` is None when the user did not name one; naming one on --resume checks that the
    run's checkpoint fits it.
    """
    from repro.model.config import load_config, load_saved, validate

    saved = session.run / "config.json"
    if resume and saved.exists():
        cfg = load_saved(saved)
        ck_dir = session.run / "checkpoints"
        if config is not None and (ck_dir / "latest.json").exists():
            ckpt.check_compatible(ck_dir, load_config(config))
    else:
        config = config or DEFAULT_CONFIG
        cfg = load_config(config)
    kw = {k: v for k, v in overrides.items() if v is not None}
    if kw:
        cfg = cfg.with_train(**kw)
    return validate(cfg, "options")
