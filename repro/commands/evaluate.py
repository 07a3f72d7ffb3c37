"""``repro evaluate``: the best-neuron test of Le et al. (2012) with its Table 1 baselines.

    repro train --out results/r
    repro evaluate --concept faces --checkpoint results/r                  # the built-in test split
    repro evaluate --concept faces --checkpoint results/r --split val      # choose settings on val only
    repro evaluate --concept faces --checkpoint results/r --data myfaces --neuron-from results/r --out results/r/myfaces
    mpiexec -n 4 repro evaluate --concept faces --checkpoint results/r    # same numbers
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from repro import report
from repro.experiments.evaluate import describe_test_set, EvalOptions, evaluate as run_eval, summary_rows
from repro.experiments.run import Run
from repro.options import concept_option, device_option, err_console, figure_options, out_console, print_table, root_option


@click.command("evaluate")
@concept_option("Which concept the neurons are tested on (its test set, unless --data names one).")
@click.option("--checkpoint", "checkpoint", required=True,
              help="Run folder, its checkpoints folder, or one checkpoint folder (the latest is used).")
@click.option("--config", "config_name", default=None,
              help="Config the checkpoint must match (built-in name or .toml); default: the checkpoint's own.")
@click.option("--layer", type=click.IntRange(0), default=None, help="Stage whose neurons compete (default: the top).")
@click.option("--sublayer", type=click.Choice(["filter", "pool", "lcn"]), default="pool", show_default=True,
              help="Which units of the stage are the 'neurons' (pool = L2 pooling units).")
@click.option("--data", multiple=True, help="Test store(s) instead of the concept's (name or folder; repeat or "
              "comma-separate), e.g. one made by `repro data import`.")
@click.option("--split", default="test", show_default=True,
              help="Which labeled split of the test stores: test (to report), val (to choose settings on), "
                   "or their aligned variants test-aligned / val-aligned where the data set has them.")
@click.option("--train-data", default=None, help="Training data of the linear filters and the one-layer "
              "network (default: the data the run was trained on, RUN/data.json).")
@root_option
@click.option("--linear-filters", type=click.IntRange(1), default=10000, show_default=True,
              help="Linear filters sampled for each reading of that baseline (Le et al.: 100,000).")
@click.option("--one-layer-steps", type=click.IntRange(0), default=None,
              help="Training steps of the one-layer baseline (default: the run's train.layer_steps).")
@click.option("--neuron-from", default=None, metavar="RUN_OR_JSON",
              help="Also apply the best neuron and threshold of another evaluation (a run folder or an "
                   "evaluate-*.json) unchanged to this test set: the JSON gains `transfer`.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Random network, linear filter sampling, held-out split and histogram subsample.")
@click.option("--batch", type=click.IntRange(1), default=256, show_default=True, help="Images per forward pass.")
@click.option("--out", default=None, help="Where to write everything evaluate writes, the one-layer baseline's "
              "run included (default: the run folder).")
@figure_options
@device_option
@click.pass_obj
def evaluate(obj, concept, checkpoint, config_name, layer, sublayer, data, split, train_data, root,  # noqa: ANN001
             linear_filters, one_layer_steps, neuron_from, seed, batch, out, dpi, formats) -> None:
    """Best single neuron for a concept vs guessing, a random network, linear filters and a one-layer network.

    \b
    Examples:
      repro evaluate --checkpoint results/faces32
      repro evaluate --checkpoint results/faces32 --split val --linear-filters 1000
      mpiexec -n 4 repro evaluate --checkpoint results/faces32 --device cpu
    """

    console = err_console()
    run = Run.open(obj.device, checkpoint, config_name, root)
    stage = run.stage(layer)
    ts = run.test_set(concept, data, split, console)  # before the expensive parts: empty, one-class, wrong size
    train_store = run.training_data(train_data, console)
    net, manifest = run.network()
    opt = EvalOptions(concept=concept, stage=stage, sublayer=sublayer, seed=seed, batch=batch,
                      linear_filters=linear_filters, one_layer_steps=one_layer_steps, neuron_from=neuron_from,
                      dpi=dpi, formats=tuple(dict.fromkeys(formats)))
    r = run_eval(run.session, net, run.checkpoint, int(manifest["step"]), ts, train_store, opt, console=console,
                 out=Path(out) if out else None)
    if run.w.is_root:
        print_summary(r, Path(out) if out else run.folder)


def print_summary(r: dict, out: Path) -> None:
    t = Table(title=f"evaluate {r['concept']}: {describe_test_set(r)} ({r['ranks']} rank(s), {r['device']}, "
                    f"{r['seconds']:.0f} s)")
    for h in ("", "ours", "AUC", "Le et al.", "Coates et al."):
        t.add_column(h, justify="left" if not h else "right")
    for name, ours, a, le, co in summary_rows(r):
        t.add_row(name, report.pct(ours) or "", "" if a is None else f"{a:.3f}", report.paper_pct(le) or "",
                  report.paper_pct(co) or "")
    b = r["best_neuron"]
    con = out_console()
    print_table(con, t)
    con.print(f"best neuron {b['index']} = unit {b['unit']} of layer {b['layer']} {b['sublayer']}, "
              f"threshold {b['threshold']:.4g}; reports: {out / ('evaluate-' + r['concept'] + '.json')}, "
              f".md, {', '.join(r['histogram']['files'])}")
