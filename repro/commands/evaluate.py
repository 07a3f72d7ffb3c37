"""``repro evaluate``: the best-neuron test of Le et al. (2012) with its Table 1 baselines.

    repro train --out results/r
    repro evaluate --concept faces --checkpoint results/r
    mpiexec -n 4 repro evaluate --concept faces --checkpoint results/r   # same numbers
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from repro.errors import ReproError

# concept -> the prepared test stores that make its test set (positives, then negatives), as in
# data_manifests/: faces = lfw + imagenet-negatives, cat faces = cat-heads + imagenet-negatives,
# human bodies = daimler-pedestrians (both labels). A network trained on the built-in `mini` data is
# tested on mini's own faces-vs-distractors split.
CONCEPT_SETS = {"faces": ("lfw", "imagenet-negatives"), "cats": ("cat-heads", "imagenet-negatives"),
                "bodies": ("daimler-pedestrians",)}


def run_folder(ckpt: Path) -> Path:
    """The run a checkpoint folder belongs to (``RUN/checkpoints/step-N`` -> ``RUN``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def test_set_names(concept: str, cfg_data: str, data: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for d in data:
        names += [n.strip() for n in d.split(",") if n.strip()]
    if names:
        return names
    if concept == "faces" and cfg_data == "mini":
        return ["mini"]
    return list(CONCEPT_SETS[concept])


def open_test_set(session, names: list[str], root: str):  # noqa: ANN001, ANN201
    from repro.data.builtin import ensure_mini
    from repro.data.prepare import require_store
    from repro.experiments.evaluate import TestSet

    if "mini" in names:
        if session.w.is_root:
            ensure_mini(root)
        session.w.barrier()
    return TestSet.of(names, [require_store(n, "test", root) for n in names])


@click.command("evaluate")
@click.option("--concept", type=click.Choice(sorted(CONCEPT_SETS)), required=True, help="Which test set.")
@click.option("--checkpoint", "checkpoint", required=True,
              help="Run folder, its checkpoints folder, or one checkpoint folder (the latest is used).")
@click.option("--config", "config_name", default=None,
              help="Config the checkpoint must match (built-in name or .toml); default: the checkpoint's own.")
@click.option("--layer", type=click.IntRange(0), default=None, help="Stage whose neurons compete (default: the top).")
@click.option("--sublayer", type=click.Choice(["filter", "pool", "lcn"]), default="pool", show_default=True,
              help="Which units of the stage are the 'neurons' (pool = L2 pooling units, as Le et al.).")
@click.option("--data", multiple=True, help="Test store(s) instead of the concept's (name or folder; repeat or comma-separate).")
@click.option("--train-data", default=None, help="Training data for the linear filters and the one-layer "
              "network (default: the config's data).")
@click.option("--root", default="data", envvar="REPRO_DATA", show_default=True, help="Data root folder.")
@click.option("--linear-filters", type=click.IntRange(1), default=10000, show_default=True,
              help="Linear filters sampled for that baseline (Le et al.: 100,000).")
@click.option("--one-layer-steps", type=click.IntRange(0), default=None,
              help="Training steps of the one-layer baseline (default: the run's train.layer_steps).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random network, linear filter sampling, held-out split and histogram subsample.")
@click.option("--batch", type=click.IntRange(1), default=256, show_default=True, help="Images per forward pass.")
@click.option("--out", default=None, help="Where to write the reports (default: the run folder).")
@click.pass_obj
def evaluate(obj, concept, checkpoint, config_name, layer, sublayer, data, train_data, root, linear_filters,  # noqa: ANN001
             one_layer_steps, seed, batch, out) -> None:
    """Best single neuron for a concept vs guessing, a random network, linear filters and a one-layer network."""
    from repro.commands.train import open_training_data
    from repro.experiments.evaluate import EvalOptions, evaluate as run_eval
    from repro.experiments.run import open_session
    from repro.model import checkpoint as ck
    from repro.model.config import load_config
    from repro.model.network import load_checkpoint

    console = Console(stderr=True)
    path = ck.resolve(checkpoint)
    cfg = load_config(config_name) if config_name else ck.config_of(path)
    ck.check_compatible(path, cfg)
    n_stages = len(cfg.stages)
    stage = n_stages - 1 if layer is None else layer
    if stage >= n_stages:
        raise ReproError(f"--layer {stage}: config {cfg.name!r} has stages 0..{n_stages - 1}")
    run = run_folder(path)
    session = open_session(obj.device, str(run), create=False)
    ts = open_test_set(session, test_set_names(concept, cfg.data, data), root)
    ts.check(cfg)  # before the expensive parts: empty, one-class or wrongly sized test sets
    train_store = open_training_data(session, train_data or cfg.data, root, console)
    net, manifest = load_checkpoint(path, cfg, session.xp, session.w)
    opt = EvalOptions(concept=concept, stage=stage, sublayer=sublayer, seed=seed, batch=batch,
                      linear_filters=linear_filters, one_layer_steps=one_layer_steps)
    r = run_eval(session, net, path, int(manifest["step"]), ts, train_store, opt, console=console,
                 out=Path(out) if out else None)
    if session.w.is_root:
        print_summary(r, Path(out) if out else run)


def print_summary(r: dict, out: Path) -> None:
    from repro import report
    from repro.experiments.evaluate import summary_rows

    t = Table(title=f"evaluate {r['concept']}: {r['n_positive']} positives, {r['n_negative']} negatives "
                    f"({r['ranks']} rank(s), {r['device']}, {r['seconds']:.0f} s)")
    for h in ("", "ours", "Le et al.", "Coates et al."):
        t.add_column(h, justify="left" if not h else "right")
    for name, ours, le, co in summary_rows(r):
        t.add_row(name, report.pct(ours), report.paper_pct(le) or "", report.paper_pct(co) or "")
    b = r["best_neuron"]
    con = Console()
    con.print(t)
    con.print(f"best neuron {b['index']} = unit {b['unit']} of layer {b['layer']} {b['sublayer']}, "
              f"threshold {b['threshold']:.4g}; reports: {out / ('evaluate-' + r['concept'] + '.json')}, "
              f".md, histogram-{r['concept']}.png")
