"""``repro control``: train again without faces in the training frames, evaluate both runs side by side.

    repro train --out results/r
    repro control --checkpoint results/r            # writes results/r/control/, control.json, control.md
"""
from __future__ import annotations

from pathlib import Path

import click

from repro.experiments.control import control as run_control
from repro.experiments.evaluate import EvalOptions
from repro.experiments.run import Run
from repro.options import concept_option, device_option, err_console, out_console, root_option


@click.command("control")
@click.option("--checkpoint", "run", required=True, help="The baseline run folder (a `repro train --out` folder).")
@concept_option("Which concept both runs are evaluated on.")
@click.option("--data", default=None, help="The baseline's training data (manifest name or store folder); "
              "default: what the run recorded (RUN/data.json).")
@click.option("--test-data", multiple=True, help="Test store(s) instead of the concept's (as `repro evaluate --data`).")
@click.option("--split", default="test", show_default=True, help="Labeled split of the test stores (as `repro evaluate --split`).")
@root_option
@click.option("--layer", type=click.IntRange(0), default=None, help="Stage whose neurons compete (default: the top).")
@click.option("--sublayer", type=click.Choice(["filter", "pool", "lcn"]), default="pool", show_default=True,
              help="Which units of the stage are the 'neurons' (as `repro evaluate --sublayer`).")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Stop the control training after this many steps (run again to continue).")
@click.option("--linear-filters", type=click.IntRange(1), default=10000, show_default=True,
              help="Linear filters of the evaluation's baseline.")
@click.option("--one-layer-steps", type=click.IntRange(0), default=None,
              help="Steps of the evaluation's one-layer baseline (default: the run's train.layer_steps).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Evaluation seed (as `repro evaluate --seed`).")
@device_option
@click.pass_obj
def control(obj, run, concept, data, test_data, split, root, layer, sublayer, max_steps, linear_filters,  # noqa: ANN001
            one_layer_steps, seed) -> None:
    """Le et al.'s control: remove frames with faces (OpenCV) from the training data, retrain, compare.

    \b
    Example:
      repro control --checkpoint results/faces32    # writes control/, control.json, .md
    """

    console = err_console()
    r0 = Run.open(obj.device, run, None, root)
    session = r0.session
    stage = r0.stage(layer)
    ts = r0.test_set(concept, test_data, split, console)
    store = r0.training_data(data, console)
    opt = EvalOptions(concept=concept, stage=stage, sublayer=sublayer, seed=seed, linear_filters=linear_filters,
                      one_layer_steps=one_layer_steps)
    r = run_control(session, r0.cfg, store, store.name or Path(str(data or r0.data_name)).name, ts, opt, root,
                    max_steps=max_steps, console=console)
    if session.w.is_root:
        b, c, f = r["baseline"], r["faces_removed"], r["face_filter"]
        out_console().print(
            f"[bold]control[/bold] {concept}: best neuron {100 * b['best_neuron']['accuracy']:.1f}% (baseline) -> "
            f"{100 * c['best_neuron']['accuracy']:.1f}% (faces removed; paper 81.7% -> 72.5%); the face filter "
            f"removed {f['removed']} of {f['source_count']} training frames\n"
            f"wrote {session.run}/control.json, control.md and the run {session.run}/control")
