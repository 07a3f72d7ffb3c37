"""Greedy layer-wise RICA training of every stage, then optional joint fine-tuning.

    repro train                                   # faces32 on the built-in pypi-faces data, 1 rank
    mpiexec -n 4 repro train --config le2012 --data youtube-frames --device gpu --out results/le
    repro train --out results/le --resume         # continue an interrupted run

The schedule is a list of steps: ``layer_steps`` for stage 0, then for stage 1, ..., then
``finetune_steps`` joint steps. Step ``g`` always trains on the same minibatch (drawn from the seed
and ``g``), so a resumed run ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from repro import __version__, atomic
from repro.data.loader import Loader
from repro.engine import threads
from repro.engine.backend import DTYPE, is_gpu, rank_memory, to_numpy
from repro.engine.comm import Mesh, mesh
from repro.engine.stop import StopRequests
from repro.errors import ReproError
from repro.experiments.run import Session, data_record, recorded_training_data
from repro.model import checkpoint as ckpt
from repro.model.config import NetworkConfig, load_config, load_saved, validate
from repro.model.memory import estimate_rank, human
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
          console: Console | None = None, keep: int = 2, progress_every: float = 30.0, replicas: int = 1
          ) -> dict[str, Any]:
    """Run (or continue) the schedule; checkpoints in ``RUN/checkpoints`` (the newest ``keep``); returns the summary.

    ``max_steps`` is the step to stop at, counted from the start of the run (a resumed run at step
    1200 with ``max_steps`` 1300 trains 100 steps). A run already at or past it changes nothing.
    SIGTERM, SIGUSR1 or Ctrl-C stop every rank after the current step, with a checkpoint there
    (``summary["stopped_by"]`` names the signal).

    ``replicas`` R: the job's ranks form R model-parallel copies of the network (``comm.mesh``); each
    step's R x ``train.batch`` images are shared out, a slice per replica, and the gradients averaged
    across replicas before the update, so R replicas give the parameters of one copy trained with
    batch R x ``train.batch``. Replica 0 writes the checkpoints (one copy of the model)."""
    w, xp, t = session.w, session.xp, cfg.train  # w: the whole job (stops, log, record)
    check_same_replicas(session.run, resume, replicas)
    m = mesh(w, replicas)
    mw = m.model  # this replica's ranks: the network lives on them
    console = console or Console(stderr=True)
    cfg.check_image_shape(tuple(store.shape), str(getattr(store, "path", "dataset")))
    ck_dir = session.run / "checkpoints"
    opt = Optimizer.from_config(t)
    start = 0
    if resume and (ck_dir / "latest.json").exists():
        net, manifest = load_checkpoint(ck_dir, cfg, xp, mw, opt=opt)
        start = int(manifest["step"])
    else:
        if resume and w.is_root:
            console.print(f"no checkpoint in {ck_dir}: starting from step 0")
        net = Network.create(cfg, seed=t.seed, xp=xp, w=mw)
    phases = schedule(cfg)
    total = sum(p.steps for p in phases)
    end = total if max_steps is None else min(total, max_steps)
    if end <= start and start > 0:  # nothing to train: keep the run's record as it is
        if w.is_root:
            console.print(f"nothing to do: the run is already at step {start} of {total}"
                          + (f" (--max-steps {max_steps})" if max_steps is not None and max_steps < total else ""))
        return _read_summary(session.run) or {"steps_done": start, "steps_total": total, "finished": start >= total,
                                              "ranks": w.size, "device": session.backend.name, "last_loss": {},
                                              "images_per_s": 0.0, "seconds": 0.0}
    session.write_json("config.json", cfg.to_dict())
    if start == 0 or not (session.run / "data.json").exists():
        session.write_json("data.json", data_record(store))
    log_path = session.run / "train-log.jsonl"
    if w.is_root:
        _trim_log(log_path, start)
    losses: dict[str, float] = {}
    phase_start_loss: dict[str, float] = {}
    began, t0, seen, done, stopped_by = _utc_now(), time.perf_counter(), 0, start, None
    if w.is_root:
        console.print(f"train {cfg.name}: steps {start} -> {end} of {total} on {w.size} rank(s)"
                      + (f" = {m.replicas} replicas x {mw.size}" if m.replicas > 1 else "") + " "
                      f"({session.backend.name}), {threads.describe()}")
    with StopRequests() as stops, TrainProgress(console, total, start, w.is_root, progress_every) as progress, \
            (open(log_path, "a", buffering=1) if w.is_root else _Null()) as log:
        # every rank of a replica reads the same images, step by step, read ahead; replica r the r-th
        # slice of the step's R x batch images
        lo = m.replica * t.batch
        batches = Loader(store, t.batch, t.seed, shuffle=False).read(
            batch_indices(len(store), t.batch * m.replicas, t.seed, g)[lo:lo + t.batch] for g in range(start, end))
        grad_bufs: dict = {}
        for g in range(start, end):
            phase = next(p for p in phases if p.start <= g < p.start + p.steps)
            x = next(batches)
            if phase.stage is None:
                loss, grads = net.finetune_loss_and_grads(x, out=grad_bufs)
            else:
                loss, grads = net.layer_loss_and_grads(x, phase.stage, out=grad_bufs)
            grad_bufs.update(grads)  # the next step writes its gradients over these
            if m.replicas > 1:
                loss = _average_across_replicas(grads, loss, m, xp)
            apply_update(net, opt, grads)
            first = phase_start_loss.setdefault(phase.name, loss)
            if not np.isfinite(loss) or loss > DIVERGED * first:
                raise ReproError(f"loss diverged at step {g + 1} ({phase.name}: {first:.4g} -> {loss:.4g}); "
                                 "lower train.lr (--lr)")
            losses[phase.name] = loss
            seen += t.batch * m.replicas
            ips = seen / (time.perf_counter() - t0)
            done = g + 1
            progress.update(done, phase.name, loss, ips)
            if w.is_root:
                log.write(json.dumps({"step": done, "phase": phase.name, "loss": loss, "lr": opt.lr,
                                      "images_per_s": round(ips, 2), "unix_time": round(time.time(), 3)}) + "\n")
            stopped_by = stops.agreed(w)  # collective: every rank stops after the same step
            if done % t.checkpoint_every == 0 or done == end or stopped_by:
                if not _finite(net):  # a finite loss before the update does not make finite weights after it
                    raise ReproError(f"parameters are no longer finite after step {done} ({phase.name}); no checkpoint "
                                     "written; lower train.lr (--lr)")
                if m.replica == 0:  # replicas hold the same parameters: one copy is written
                    save_checkpoint(net, opt, ck_dir, done, {"phase": phase.name}, keep=keep)
                if m.replicas > 1:
                    w.barrier()  # no replica runs ahead of a checkpoint being written
            if stopped_by:
                break
        batches.close()
    wall = time.perf_counter() - t0
    segment = {"from_step": start, "to_step": done, "ranks": w.size, "replicas": m.replicas,
               "batch": t.batch * m.replicas, "device": session.backend.name,
               "threads_per_rank": threads.configure()[0], "seconds": wall,
               "images_per_s": seen / wall if wall else 0.0, "started": began, "ended": _utc_now(),
               **run_provenance()}
    if stopped_by:
        segment["stopped_by"] = stopped_by
    before = (_read_summary(session.run) or {}).get("segments", []) if start > 0 else []
    summary = {"steps_done": done, "steps_total": total, "finished": done == total, "ranks": w.size,
               "device": session.backend.name, "last_loss": losses, "images_per_s": segment["images_per_s"],
               "seconds": wall + sum(s.get("seconds", 0.0) for s in before), "segments": before + [segment],
               "checkpoint": str(ck_dir / f"step-{done:08d}") if done else None}
    if stopped_by:
        summary["stopped_by"] = stopped_by
    session.write_json("train.json", summary)
    return summary


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_provenance() -> dict[str, Any]:
    """What produced a segment of a run: the command line, the package version and, when the package
    runs from a git checkout, its commit (``+dirty`` with uncommitted changes), and the host."""


    rec: dict[str, Any] = {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "repro_version": __version__,
                           "python": platform.python_version(), "host": platform.node()}
    src = Path(__file__).resolve().parents[2]
    if (src / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # no git: the record says less
            head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if head:
                rec["git_commit"] = head + ("+dirty" if dirty else "")
    return rec


class TrainProgress:
    """Progress on rank 0: a live bar on a terminal; elsewhere (a batch job's log file, any rank under
    ``mpiexec``) a plain line after the first step, then every ``every`` seconds, and at the last step."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool, every: float) -> None:
        self.console, self.total, self.start, self.enabled, self.every = console, total, start, enabled, every
        self.live = enabled and console.is_terminal
        self.t0 = time.perf_counter()
        self.last = -float("inf")
        self.bar: Progress | None = None

    def __enter__(self) -> "TrainProgress":
        if self.live:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                                TimeRemainingColumn(), console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, loss=float("nan"), ips=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, step: int, phase: str, loss: float, ips: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, description=f"train {phase}", loss=loss, ips=ips)
            return
        now = time.perf_counter()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        rate = (step - self.start) / (now - self.t0) if now > self.t0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total - step) / rate)) if rate > 0 else "?"
        f = self.console.file
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {step}/{self.total} ({100 * step / self.total:.1f}%) "
                f"{phase} loss {loss:.4f} {ips:.0f} img/s ETA {eta}\n")
        f.flush()


def _average_across_replicas(grads: dict[str, Any], loss: float, m: Mesh, xp: Any) -> float:
    """Every gradient tile summed over the ranks holding that tile in the other replicas, then divided
    by R (one Allreduce per array; through host memory on GPUs); the loss averaged alike."""
    for name, g in grads.items():
        buf = to_numpy(g) if is_gpu(xp) else np.ascontiguousarray(g)
        m.across.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf /= m.replicas
        if buf is not g:
            g[...] = xp.asarray(buf)
    return float(sum(m.across.allgather(float(loss)))) / m.replicas


def check_same_replicas(run: Path, resume: bool, replicas: int) -> None:
    """--resume keeps the experiment: with replicas the step's batch is R x train.batch, so another R
    would change it."""
    prev = _read_summary(run) if resume else None
    segs = (prev or {}).get("segments") or []
    had = int(segs[-1].get("replicas", 1)) if segs else replicas
    if had != replicas:
        raise ReproError(f"--replicas {replicas}: the run was trained with --replicas {had} (train.json); each "
                         "step's batch is replicas x train.batch, so --resume keeps it")


def _finite(net: Network) -> bool:
    """Every rank's parameters finite (collective)."""
    ok = all(bool(net.xp.isfinite(p).all()) for p in net.params.values())
    return net.w.allreduce_sum(0.0 if ok else 1.0) == 0.0


def _trim_log(path: Path, step: int) -> None:
    """The log of a run continued from ``step`` keeps exactly its steps 1..step: lines written after
    that checkpoint (the work a kill lost) and a line cut short are dropped, so no step appears twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("step"), int) and e["step"] <= step:
            keep.append(line)
    atomic.write_text(path, "".join(k + "\n" for k in keep))


def _read_summary(run: Path) -> dict[str, Any] | None:
    try:
        s = json.loads((Path(run) / "train.json").read_text())
        return s if isinstance(s, dict) else None
    except (OSError, ValueError):
        return None


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

    saved = session.run / "config.json"
    kw = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        if not saved.exists():
            raise ReproError(f"{session.run}: nothing to resume (no config.json); start a run there without --resume")
        cfg = load_saved(saved)
        ck_dir = session.run / "checkpoints"
        if config is not None and (ck_dir / "latest.json").exists():
            ckpt.check_compatible(ck_dir, load_config(config))
        clash = [f"--{k.replace('_', '-')} {v} (the run has {getattr(cfg.train, k)})" for k, v in kw.items()
                 if getattr(cfg.train, k) != v]
        if clash:
            raise ReproError(f"{session.run}: --resume continues the run as it was configured; {', '.join(clash)} "
                             "would change it (start another run with a new --out)")
        return cfg
    cfg = load_config(config or DEFAULT_CONFIG)
    if kw:
        cfg = cfg.with_train(**kw)
    return validate(cfg, "options")


RUN_FILES = ("checkpoints", "config.json", "data.json", "train.json", "train-log.jsonl", "one-layer", "control",
             "control.json", "control.md", "invariance.json", "visualize-best-neuron.json")
RUN_PATTERNS = ("evaluate-*.json", "evaluate-*.md", "histogram-*", "best-neuron-*", "invariance-*")


def check_memory(session: Session, cfg: NetworkConfig, config_arg: str | None = None, replicas: int = 1) -> None:
    """Refuse, before anything is allocated, a run that cannot fit: every rank compares the planned
    bytes of its tile (``repro info``'s estimate) with the memory it can count on, and all ranks
    raise the same one-line error naming the worst rank. ``REPRO_MEMORY_CHECK=off`` skips it (the
    estimate is of one fine-tuning update and may be pessimistic for a run without one)."""
    if os.environ.get("REPRO_MEMORY_CHECK", "").lower() in ("off", "0", "no"):
        return
    w, backend = session.w, session.backend
    per = max(1, w.size // replicas)  # a rank holds its tile of one replica's network
    need = estimate_rank(cfg, w.rank % per, per, cfg.train.batch, np.dtype(DTYPE).itemsize, backend.is_gpu).total
    have = rank_memory(session.xp, w)
    short = w.allgather(None if need <= have[0] else (need - have[0], w.rank, need, have))
    worst = max((s for s in short if s is not None), default=None)
    if worst is not None:
        _, rank, need, (avail, where) = worst
        raise ReproError(
            f"config {cfg.name!r} needs about {human(need)} per rank to train on {w.size} rank(s) "
            f"(batch {cfg.train.batch}; `repro info --config {config_arg or cfg.name} --ranks {per} --batch {cfg.train.batch}` breaks it down), but rank "
            f"{rank} can count on {human(avail)} ({where}): use more ranks or a smaller train.batch "
            "(REPRO_MEMORY_CHECK=off tries anyway)")


def holds_a_run(folder: Path) -> bool:
    """A folder a `repro train` has written into (so training anew there would mix two runs)."""
    return any((Path(folder) / n).exists() for n in ("checkpoints", "config.json", "train.json", "train-log.jsonl"))


def clear_run(folder: Path) -> None:
    """``--force``: remove what repro wrote into a run folder (and nothing else of the folder)."""
    folder = Path(folder)
    for n in RUN_FILES:
        p = folder / n
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for pat in RUN_PATTERNS:
        for p in folder.glob(pat):
            p.unlink(missing_ok=True)


def check_run_folder(out: Path, resume: bool, force: bool) -> None:
    """Refuse, before anything is written, to train into a folder holding another run unless
    ``resume`` (continue it) or ``force`` (replace it); ``resume`` needs a checkpoint to continue from."""
    out = Path(out)
    if resume and not (out / "checkpoints" / "latest.json").is_file():
        raise ReproError(f"{out}: nothing to resume (no checkpoint in {out / 'checkpoints'})"
                         + ("; start it anew with --force" if holds_a_run(out) else ""))
    if not resume and not force and holds_a_run(out):
        raise ReproError(f"{out}: already holds a run; --resume continues it, --force replaces it")


def prepare_run_folder(session: Session, force: bool, console: Any = None) -> None:
    """Collective, once the start is known to be good: replace the old run if ``force`` (saying so),
    make the folder, and drop checkpoint writes a kill left half done."""
    if session.w.is_root:
        if force and holds_a_run(session.run):
            clear_run(session.run)
            if console is not None:
                console.print(f"--force: replaced the run in {session.run}")
        for p in (session.run / "checkpoints").glob(".step-*.partial"):
            shutil.rmtree(p, ignore_errors=True)
    session.create_folder()


def training_data_for(run: Path, data: str | None, cfg: NetworkConfig, resume: bool) -> str:
    """--data, else (on --resume) the store the run recorded, else the config's data."""
    if resume and data is None:
        rec = recorded_training_data(run)
        if rec is None:
            raise ReproError(f"{run}/data.json: missing, or its store is gone; give the run's data with --data")
        return str(rec["store"])
    return data or cfg.data


def check_same_data(session: Session, store: Any, console: Any = None) -> None:
    """--resume must continue on the store the run started on: same content (its fingerprint); a
    store that moved (same content, new path) is accepted and ``data.json`` follows it."""
    run = session.run
    try:
        rec = json.loads((run / "data.json").read_text())
    except (OSError, ValueError):
        rec = None
    if not isinstance(rec, dict):
        return  # a run from before data.json: nothing to compare with; train writes it now
    if rec.get("fingerprint") != store.fingerprint():
        raise ReproError(f"{store.path}: not the training store of {run} (it trained on {rec.get('store')}, see "
                         "data.json); --resume continues on the run's own data")
    if Path(str(rec.get("store"))).resolve() != Path(store.path).resolve():
        session.write_json("data.json", data_record(store))
        if session.w.is_root and console is not None:
            console.print(f"the run's training store moved to {store.path} (same content): data.json updated")
