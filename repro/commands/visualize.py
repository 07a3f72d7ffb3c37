"""``repro visualize best-neuron`` and ``repro visualize invariance``: pictures of the best neuron."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from repro.errors import ReproError
from repro.options import (ReproGroup, concept_option, device_option, err_console, figure_options, out_console,
                           root_option)


def _evaluated_test_set(run: Path, concept: str) -> list[str] | None:
    """The store folders the evaluation used, if it recorded them and they still exist."""
    path = Path(run) / f"evaluate-{concept}.json"
    try:
        stores = json.loads(path.read_text())["test_set"]["stores"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(stores, list) and stores and all((Path(p) / "index.json").exists() for p in stores):
        return [str(p) for p in stores]
    return None


def neuron_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--checkpoint", "run", required=True,
                     help="Run folder (its latest checkpoint; results go there) or one checkpoint folder."),
        click.option("--config", "config_name", default=None,
                     help="Config the checkpoint must match (built-in name or .toml); default: its own."),
        concept_option("Whose best neuron: read from RUN/evaluate-<concept>.json (written by `repro evaluate`)."),
        click.option("--layer", type=click.IntRange(0), default=None, help="Override: stage index of the neuron."),
        click.option("--sublayer", type=click.Choice(["filter", "pool", "lcn"]), default=None, help="Override: sublayer."),
        click.option("--index", type=click.IntRange(0), default=None, help="Override: flat index into (map, row, col)."),
        click.option("--data", multiple=True, help="Test store(s) instead of the evaluation's (name or folder; repeatable)."),
        click.option("--split", default=None, help="Labeled split of the test stores (default: the one the "
                     "evaluation used, else test)."),
        root_option,
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of random starts / choices / the reference network."),
        device_option,
    ]):
        f = opt(f)
    return f


def _setup(obj: Any, run: str, config_name: Any, concept: str, layer: Any, sublayer: Any, index: Any, data: Any,
           split: Any, root: str) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The run, its network, the neuron to show and the test set: by default the stores the
    evaluation used (``RUN/evaluate-<concept>.json``), else as ``repro evaluate`` picks them."""
    from repro.experiments.run import Run
    from repro.experiments.visualize import resolve_neuron

    console = err_console()
    r = Run.open(obj.device, run, config_name, root)
    net, _ = r.network()
    neuron, ev = resolve_neuron(net.cfg, r.folder, concept, layer, sublayer, index)
    used = _evaluated_test_set(r.folder, concept) if not data and split is None else None
    ts = r.test_set(concept, data, split or "test", console, stores=used)
    return r.session, net, neuron, ts, console, ev


@click.group("visualize", cls=ReproGroup)
def visualize() -> None:
    """Pictures of the best neuron: top test images, optimal stimulus, invariance curves.

    \b
    Examples:
      repro visualize best-neuron --checkpoint results/faces32
      repro visualize invariance --checkpoint results/faces32 --faces 20
    """


@visualize.command("best-neuron")
@neuron_options
@click.option("--iters", type=click.IntRange(1), default=200, show_default=True, help="Most ascent steps per start.")
@click.option("--top", "k", type=click.IntRange(1), default=48, show_default=True, help="How many test images to show.")
@click.option("--prior", type=click.Choice(["none", "smooth"]), default="none", show_default=True,
              help="none: the paper's stimulus only. smooth: also one under a Gaussian-blur prior (Yosinski et al. "
              "2015: x blurred after every ascent step, sigma decaying, ||x|| = 1 kept), written to "
              "best-neuron-stimulus-smooth.png/.npy beside the paper's.")
@click.option("--blur-sigma", type=(click.FloatRange(0), click.FloatRange(0)), default=None,
              help="With --prior smooth: blur sigma in pixels at the first and the last step (geometric decay). "
              "[default: 2 0.5]")
@figure_options
@click.pass_obj
def best_neuron(obj, run, config_name, concept, layer, sublayer, index, data, split, root, seed, iters, k,  # noqa: ANN001
                prior, blur_sigma, dpi, formats) -> None:
    """The 48 test images that excite the neuron most, and its optimal stimulus (||x||_2 = 1);
    with --prior smooth also the stimulus under a Gaussian-blur prior.

    \b
    Examples:
      repro visualize best-neuron --checkpoint results/faces32
      repro visualize best-neuron --checkpoint results/faces32 --prior smooth --format pdf
    """
    from repro.experiments.visualize import SMOOTH_SIGMA, best_neuron as run_best

    if blur_sigma is not None and prior != "smooth":
        raise click.UsageError("--blur-sigma needs --prior smooth")
    session, net, neuron, store, _, _ = _setup(obj, run, config_name, concept, layer, sublayer, index, data, split,
                                               root)
    s = run_best(session, net, store, neuron, iters=iters, seed=seed, k=k, dpi=dpi,
                 formats=tuple(dict.fromkeys(formats)), prior=prior, sigma=tuple(blur_sigma or SMOOTH_SIGMA))
    if session.w.is_root:
        st, b = s["stimulus"], s["best_test_image"]
        out_console().print(
            f"[bold]visualize best-neuron[/bold] {neuron.label()}: top {s['top']['k']} test images hold "
            f"{s['top']['positives']} positives; optimal stimulus f = {st['activation']:.4g} after "
            f"{st['iterations']} steps from {st['start']} ({st['stopped']}), best test image at unit norm "
            f"f = {b['activation_unit_norm']:.4g}"
            + (f"; smooth stimulus (blur prior) f = {s['stimulus_smooth']['activation']:.4g} from "
               f"{s['stimulus_smooth']['start']}" if "stimulus_smooth" in s else "")
            + (f"; top face at unit norm f = {s['top_face']['activation_unit_norm']:.4g}" if s.get("top_face") else "")
            + f"\nwrote {', '.join(s['files'])}, visualize-best-neuron.json in {session.run}")


@visualize.command("invariance")
@neuron_options
@click.option("--faces", type=click.IntRange(1), default=10, show_default=True, help="Test faces to transform.")
@click.option("--rotating", default="rotating-faces", show_default=True,
              help="Rotating-face set for out-of-plane rotation (used when prepared; see data_manifests/rotating-faces.toml).")
@figure_options
@click.pass_obj
def invariance(obj, run, config_name, concept, layer, sublayer, index, data, split, root, seed, faces,  # noqa: ANN001
               rotating, dpi, formats) -> None:
    """Mean response to test faces under scaling, translation and rotation, vs a random network.

    \b
    Example:
      repro visualize invariance --checkpoint results/faces32 --faces 20
    """
    from repro.experiments.invariance import ANGLE_RE, invariance as run_inv

    session, net, neuron, store, console, ev = _setup(obj, run, config_name, concept, layer, sublayer, index, data,
                                                      split, root)
    b = (ev or {}).get("best_neuron", {})
    same = (b.get("layer"), b.get("sublayer"), b.get("index")) == (neuron.layer, neuron.sublayer, neuron.index)
    same = same and not data and split is None  # its threshold was chosen on the evaluation's test set
    rot, pattern = _rotating_set(rotating, root)
    if rot is None and session.w.is_root:
        console.print(f"out-of-plane rotation skipped: no prepared rotating-face set {rotating!r} "
                      f"(`repro data prepare {rotating} --from FOLDER`)")
    r = run_inv(session, net, store, neuron, seed=seed, faces=faces, rotating=rot, angle_pattern=pattern or ANGLE_RE,
                threshold=float(b["threshold"]) if same and "threshold" in b else None, dpi=dpi,
                formats=tuple(dict.fromkeys(formats)))
    if session.w.is_root:
        c = r["curves"]
        def spread(kind: str) -> str:
            t, q = np.asarray(c[kind]["trained"]["relative"]), np.asarray(c[kind]["random"]["relative"])
            return f"{kind} {t.min():.2f}..{t.max():.2f} (random {q.min():.2f}..{q.max():.2f})"
        out_console().print(f"[bold]visualize invariance[/bold] {neuron.label()} on {len(r['faces'])} faces, "
                        f"relative response ranges: " + "; ".join(spread(k) for k in c)
                        + f"\nwrote {session.run}/invariance.json and " + ", ".join(r["files"]))


def _rotating_set(name: str, root: str) -> tuple[Any, str | None]:
    """The prepared rotating-face store and its angle pattern, or (None, None) when absent."""
    from repro.data.prepare import resolve_dataset
    from repro.data.store import is_complete, open_store

    if not name:
        return None, None
    pattern = None
    try:
        from repro.data.manifest import load

        pattern = load(name).prepare.extra.get("angle_pattern")
    except ReproError:
        pattern = None  # no usable manifest: the angle comes from the file name alone
    for split in ("test", "train"):
        p = resolve_dataset(name, split, root)
        if is_complete(p):
            return open_store(p), pattern
    return None, None
