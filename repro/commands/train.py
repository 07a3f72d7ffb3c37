"""``repro train``: greedy layer-wise RICA training, then optional joint fine-tuning."""
from __future__ import annotations

import click

from repro.engine.stop import exit_code
from repro.experiments.run import open_session, training_store
from repro.experiments.train import (check_memory, check_run_folder, check_same_data, prepare_run_folder, resolve_config,
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
@click.option("--keep", type=click.IntRange(1), default=2, show_default=True, help="Checkpoints to keep (newest).")
@click.option("--progress-every", type=click.FloatRange(0.1), default=30.0, show_default=True,
              envvar="REPRO_PROGRESS_EVERY",
              help="Seconds between progress lines when stderr is not a terminal (batch logs, mpiexec) "
              "($REPRO_PROGRESS_EVERY).")
@device_option
@click.pass_obj
def train(obj, config_name, data, root, out, resume, force, max_steps, layer_steps, finetune_steps, batch, lr,  # noqa: ANN001
          optimizer, seed, checkpoint_every, keep, progress_every) -> int:
    """Train a network (default: faces32 on the built-in pypi-faces data) on any number of MPI ranks, CPU or GPU.

    \b
    Examples:
      repro train --out results/faces32
      repro train --config mini --layer-steps 200 --out results/mini
      mpiexec -n 4 repro train --device cpu --out results/r4
      repro train --out results/faces32 --resume
    """
    if resume and out is None:
        raise click.BadParameter("--resume needs --out RUN (the run to continue)", param_hint="--resume")
    if resume and force:
        raise click.BadParameter("--resume continues the run, --force replaces it: choose one", param_hint="--force")
    console = err_console()
    # everything is checked before the run folder is touched: a bad start changes nothing
    session = open_session(obj.device, out, create=None)
    check_run_folder(session.run, resume, force)
    cfg = resolve_config(session, config_name, resume, {
        "layer_steps": layer_steps, "finetune_steps": finetune_steps, "batch": batch, "lr": lr,
        "optimizer": optimizer, "seed": seed, "checkpoint_every": checkpoint_every})
    check_memory(session, cfg, config_name)
    store = training_store(session, training_data_for(session.run, data, cfg, resume), root, console)
    cfg.check_image_shape(tuple(store.shape), str(store.path))
    if resume:
        check_same_data(session, store, console)
    prepare_run_folder(session, force, console)
    summary = run_training(session, cfg, store, resume=resume, max_steps=max_steps, console=console,
                           keep=keep, progress_every=progress_every)
    if session.w.is_root:
        state = "finished" if summary["finished"] else f"stopped at step {summary['steps_done']}"
        losses = ", ".join(f"{k} {v:.4f}" for k, v in summary["last_loss"].items())
        out_console().print(f"[bold]train[/bold] {cfg.name}: {state} of {summary['steps_total']} steps on "
                        f"{summary['ranks']} rank(s) ({summary['device']}), {summary['images_per_s']:.0f} images/s; "
                        f"last losses: {losses}\nrun folder: {session.run}")
    if summary.get("stopped_by"):
        if session.w.is_root:
            console.print(f"{summary['stopped_by']}: stopped at step {summary['steps_done']} of {summary['steps_total']} "
                          f"with a checkpoint there; continue with: repro train --out {session.run} --resume")
        return exit_code(summary["stopped_by"])
    return 0

