"""What the best neuron responds to (Le et al. 2012, Figure 3).

Long because the paper's search, the prior's search, the top-image grid and their report share one
neuron-response path (below); apart, the two searches would drift from the figure they explain.

    repro visualize best-neuron --checkpoint RUN                 # neuron from RUN/evaluate-faces.json
    mpiexec -n 4 repro visualize best-neuron --checkpoint RUN --layer 2 --sublayer pool --index 17

Two pictures of one neuron:

* the 48 test images that excite it most (a PNG grid, strongest first, row by row);
* its *optimal stimulus* ``x* = argmax_x f(x)  subject to ||x||_2 = 1`` where ``x`` is the
  network's standardised input (the network standardises raw images itself, so the optimisation
  variable is what comes after that step). Projected gradient ascent with a backtracking line
  search: ``x <- normalise(x + t g/||g||)``; a step is accepted when ``f`` increases (then ``t``
  doubles), otherwise ``t`` halves. Two starts, a seeded random unit vector and the best test
  image scaled to unit norm; the better end point wins. The best test image at unit norm is also
  the yardstick the JSON reports: a working ascent ends at or above it.

``--prior smooth`` adds a second stimulus found under a smoothness prior, the Gaussian-blur
regulariser of Yosinski et al. 2015 ("Understanding neural networks through deep
visualization"): the same projected ascent, but after every accepted step ``x`` is blurred with a
Gaussian of standard deviation ``sigma_k`` (mirrored border) and projected back to ``||x|| = 1``;
``sigma_k`` decays geometrically from ``sigma_start`` to ``sigma_end`` pixels over the steps
(coarse to fine), and every one of ``iters`` steps is taken (no early stop: the schedule must
end). The same two starts, the random one blurred first. Both stimuli, the best test image and the
top face (the most exciting positive) are reported at unit norm, so their responses compare.

Every number goes through :func:`neuron_features` / :func:`unit_gradient`, whose results do not
depend on the rank count, so 1 and N ranks give the same neuron, images and stimulus.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repro.engine.backend import to_numpy
from repro import atomic
from repro.errors import ReproError
from repro.model.network import Network, neuron_features, standardize, unit_gradient

SUBLAYERS = ("filter", "pool", "lcn")


# ------------------------------------------------------------------ which neuron
@dataclass(frozen=True)
class Neuron:
    """One neuron: stage index, sublayer, flat index into its (maps, H, W) grid, and that (map, row, col)."""

    layer: int
    sublayer: str
    index: int
    unit: tuple[int, int, int]

    def label(self) -> str:
        m, r, c = self.unit
        return f"stage {self.layer} {self.sublayer} neuron {self.index} (map {m}, row {r}, col {c})"


def grid_shape(cfg: Any, layer: int, sublayer: str) -> tuple[int, int, int]:
    """(maps, H, W) of one sublayer: the grid a flat neuron index points into."""
    h, w = cfg.stage_shapes()[layer][sublayer]
    return cfg.stages[layer].maps, h, w


def make_neuron(cfg: Any, layer: int, sublayer: str, index: int, where: str = "options") -> Neuron:
    """Check a neuron against the network's shapes (a neuron from another config fails here, one line)."""
    if not 0 <= layer < len(cfg.stages):
        raise ReproError(f"{where}: layer {layer} does not exist (config {cfg.name!r} has stages 0..{len(cfg.stages) - 1})")
    if sublayer not in SUBLAYERS:
        raise ReproError(f"{where}: sublayer {sublayer!r} is not one of {', '.join(SUBLAYERS)}")
    shape = grid_shape(cfg, layer, sublayer)
    n = int(np.prod(shape))
    if not 0 <= index < n:
        raise ReproError(f"{where}: neuron index {index} is outside stage {layer} {sublayer} of config "
                         f"{cfg.name!r} (0..{n - 1}); was it found on another config's checkpoint?")
    unit = tuple(int(v) for v in np.unravel_index(index, shape))
    return Neuron(layer, sublayer, int(index), unit)  # type: ignore[arg-type]


def evaluation_path(run: Path, concept: str) -> Path:
    return Path(run) / f"evaluate-{concept}.json"


def read_evaluation(run: Path, concept: str) -> dict[str, Any]:
    """``RUN/evaluate-<concept>.json`` (written by ``repro evaluate``), or a one-line error saying how to make it."""
    path = evaluation_path(run, concept)
    if not path.exists():
        raise ReproError(f"{path}: no evaluation of concept {concept!r}; run "
                         f"`repro evaluate --concept {concept} --checkpoint {run}` first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReproError(f"{path}: unreadable ({exc})") from None


def resolve_neuron(cfg: Any, run: Path, concept: str, layer: int | None = None, sublayer: str | None = None,
                   index: int | None = None) -> tuple[Neuron, dict[str, Any] | None]:
    """The neuron to show: the evaluation's best one, or the one given by ``--layer/--sublayer/--index``.

    Any of the three options overrides the evaluation's field; with all three given no evaluation
    is needed. Returns the neuron and the evaluation (None if not read).
    """
    ev = None
    if layer is None or sublayer is None or index is None:
        ev = read_evaluation(run, concept)
        path = evaluation_path(run, concept)
        best = ev.get("best_neuron")
        if not isinstance(best, dict) or not all(k in best for k in ("layer", "sublayer", "index")):
            raise ReproError(f"{path}: has no best_neuron.layer/sublayer/index")
        made = ev.get("config")
        if isinstance(made, dict) and (made.get("name"), made.get("stages"), list(made.get("input_size", []))) != (
                cfg.name, cfg.as_json()["stages"], list(cfg.input_size)):
            raise ReproError(f"{path}: was made with config {made.get('name')!r}, the checkpoint is config "
                             f"{cfg.name!r}; run `repro evaluate --concept {concept} --checkpoint {run}` again")
        layer = int(best["layer"]) if layer is None else layer
        sublayer = str(best["sublayer"]) if sublayer is None else sublayer
        index = int(best["index"]) if index is None else index
        where = str(path)
    else:
        where = "--layer/--sublayer/--index"
    return make_neuron(cfg, layer, sublayer, index, where), ev


# ------------------------------------------------------------------ activations
def neuron_responses(net: Network, images: np.ndarray, neuron: Neuron, batch: int = 256) -> np.ndarray:
    """The neuron's activation for each image (float32 (B, C, H, W) in [0, 1]); same on every rank.

    Only the neuron's owner rank keeps its column and broadcasts those N numbers
    (:func:`neuron_features`); no rank ever holds the whole activation matrix.
    """
    acts = neuron_features(net, images, neuron.layer, neuron.sublayer, neuron.index, batch=batch)
    return np.asarray(acts, dtype=np.float64)


def top_k(acts: np.ndarray, k: int = 48) -> np.ndarray:
    """Indices of the k largest activations, largest first; ties broken by the lower index (stable)."""
    order = np.lexsort((np.arange(len(acts)), -acts))
    return order[:min(k, len(acts))]


# ------------------------------------------------------------------ optimal stimulus
def unit_norm(x: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(x))
    if n == 0.0:
        raise ValueError("cannot scale a zero array to unit norm")
    return (x / n).astype(np.float32)


def activation(net: Network, x: np.ndarray, neuron: Neuron) -> tuple[float, np.ndarray]:
    """f(x) and df/dx for one standardised input (1, C, H, W) (NumPy out, whatever the backend)."""
    v, g = unit_gradient(net, x, neuron.layer, neuron.sublayer, neuron.unit)
    return float(v), np.asarray(to_numpy(g), dtype=np.float32)


def _ascent_step(net: Network, x: np.ndarray, f: float, g: np.ndarray, neuron: Neuron, t: float,
                 max_halvings: int) -> tuple[tuple[np.ndarray, float, np.ndarray, float] | str, int]:
    """One backtracking step along ``g/||g||`` on the unit sphere, halving ``t`` until ``f`` rises:
    ((x', f', g', t), evaluations), or (why no step exists, evaluations)."""
    gn = float(np.linalg.norm(g))
    if gn == 0.0 or not np.isfinite(gn):
        return "zero gradient", 0
    d, evals = g / gn, 0
    for _ in range(max_halvings):
        xn = unit_norm(x + t * d)
        fn, gn_ = activation(net, xn, neuron)
        evals += 1
        if fn > f:
            return (xn, fn, gn_, t), evals
        t *= 0.5
    return "no ascent step", evals


def ascend(net: Network, x0: np.ndarray, neuron: Neuron, iters: int = 200, tol: float = 1e-6,
           t0: float = 0.5, max_halvings: int = 30, sigma: tuple[float, float] | None = None) -> dict[str, Any]:
    """Projected gradient ascent on the unit sphere from ``x0`` with backtracking line search.

    Steps are along ``g/||g||`` so that ``t`` is a distance on the sphere's scale (``||x|| = 1``);
    ``t`` doubles after an accepted step (up to 2) and halves after a rejected one. Stops after
    ``iters`` accepted steps, when the relative improvement falls below ``tol``, or when no step
    size improves ``f`` (a local maximum to float32 precision).

    ``sigma`` = (start, end) adds the Gaussian-blur prior of Yosinski et al. 2015: the start and every
    accepted point are blurred with that step's sigma (:func:`sigma_schedule`) and put back on the
    unit sphere, and every one of ``iters`` steps is taken (the schedule must end; no ``tol`` stop).
    ``f`` may drop a little at the blur; the end point is the last blurred one.
    """
    sig = None if sigma is None else sigma_schedule(iters, *sigma)
    x = unit_norm(x0 if sig is None else gaussian_blur(x0, float(sig[0])))
    f, g = activation(net, x, neuron)
    f_start, t, it, evals, why = f, t0, 0, 1, "iterations"
    while it < iters:
        step, n = _ascent_step(net, x, f, g, neuron, t, max_halvings)
        evals += n
        if isinstance(step, str):
            why = step
            break
        xn, fn, gn_, t = step
        if sig is None:
            gain = (fn - f) / max(abs(f), 1e-12)
            x, f, g = xn, fn, gn_
        else:
            x = unit_norm(gaussian_blur(xn, float(sig[it])))
            f, g = activation(net, x, neuron)
            evals += 1
            gain = None
        it += 1
        t = min(2.0 * t, 2.0)
        if gain is not None and gain < tol:
            why = "converged"
            break
    return {"x": x, "activation": f, "start_activation": f_start, "iterations": it, "evaluations": evals,
            "stopped": why}


def optimal_stimulus(net: Network, neuron: Neuron, best_image: np.ndarray | None, seed: int = 0,
                     iters: int = 200, tol: float = 1e-6) -> dict[str, Any]:
    """The better of two ascents: from a seeded random unit vector and from the best test image.

    ``best_image`` is a raw (C, H, W) image in [0, 1]; it is standardised the way the network
    standardises its inputs, then scaled to unit norm.
    """
    starts = stimulus_starts(net, best_image, seed)
    runs = {name: ascend(net, x0, neuron, iters, tol) for name, x0 in starts.items()}
    win = max(runs, key=lambda k: (runs[k]["activation"], k == "random"))
    out = dict(runs[win])
    out["start"] = win
    out["runs"] = {k: {kk: v for kk, v in r.items() if kk != "x"} for k, r in runs.items()}
    return out


# ------------------------------------------------------------------ smoothness prior
PRIORS = ("none", "smooth")
SMOOTH_SIGMA = (2.0, 0.5)  # default blur schedule of --prior smooth, pixels: start -> end


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (std ``sigma`` pixels, mirrored border, radius
    ``ceil(3 sigma)``, clipped to the image); ``sigma <= 0`` returns a copy."""
    x = np.asarray(x, np.float32)
    if sigma <= 0:
        return x.copy()
    H, W = x.shape[-2:]
    r = min(int(np.ceil(3.0 * sigma)), H - 1, W - 1)
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).astype(np.float32)
    pad = np.pad(x, ((0, 0),) * (x.ndim - 2) + ((r, r), (r, r)), mode="reflect")
    rows = sum(g[d] * pad[..., d:d + H, :] for d in range(2 * r + 1))
    return np.asarray(sum(g[d] * rows[..., :, d:d + W] for d in range(2 * r + 1)), np.float32)


def sigma_schedule(iters: int, sigma_start: float, sigma_end: float) -> np.ndarray:
    """Blur sigma of each step: geometric from ``sigma_start`` to ``sigma_end`` (both included)."""
    if iters <= 1:
        return np.array([sigma_end], np.float64)
    if sigma_start <= 0 or sigma_end <= 0:
        return np.linspace(sigma_start, sigma_end, iters)
    return sigma_start * (sigma_end / sigma_start) ** (np.arange(iters) / (iters - 1))


def high_frequency_share(x: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the (mean-removed) power spectrum of ``x`` (..., H, W) at radial frequency above
    ``cutoff`` cycles per pixel (0.5 = Nyquist): 0 for a smooth image, large for pixel noise."""
    a = np.asarray(x, np.float64)
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    p = np.abs(np.fft.fft2(a)) ** 2
    fy = np.fft.fftfreq(a.shape[-2])[:, None]
    fx = np.fft.fftfreq(a.shape[-1])[None, :]
    total = float(p.sum())
    return float(p[..., np.hypot(fy, fx) > cutoff].sum()) / total if total > 0 else 0.0


def ascend_smooth(net: Network, x0: np.ndarray, neuron: Neuron, iters: int = 200,
                  sigma: tuple[float, float] = SMOOTH_SIGMA, t0: float = 0.5, max_halvings: int = 30
                  ) -> dict[str, Any]:
    """:func:`ascend` under the blur prior (Yosinski et al. 2015), sigma decaying from ``sigma[0]``
    to ``sigma[1]`` pixels."""
    return ascend(net, x0, neuron, iters, t0=t0, max_halvings=max_halvings, sigma=sigma)


def stimulus_starts(net: Network, best_image: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """The ascents' starts: a seeded random (1, C, H, W) and, if given, the best test image standardised."""
    C, (H, W) = net.cfg.channels, net.cfg.input_size
    rng = np.random.default_rng([seed, 2012])
    starts = {"random": rng.standard_normal((1, C, H, W)).astype(np.float32)}
    if best_image is not None:
        starts["best_image"] = np.asarray(standardize(np.asarray(best_image, np.float32)[None]))
    return starts


def smooth_stimulus(net: Network, neuron: Neuron, best_image: np.ndarray | None, seed: int = 0,
                    iters: int = 200, sigma: tuple[float, float] = SMOOTH_SIGMA) -> dict[str, Any]:
    """:func:`optimal_stimulus` under the blur prior: the better of the same two starts; every
    start's end point is kept (``ends``), with its cosine similarity to its own start."""
    starts = stimulus_starts(net, best_image, seed)
    runs = {name: ascend_smooth(net, x0, neuron, iters, sigma) for name, x0 in starts.items()}
    win = max(runs, key=lambda k: (runs[k]["activation"], k == "random"))
    out = dict(runs[win])
    out["start"] = win
    out["ends"] = {k: r["x"] for k, r in runs.items()}
    out["runs"] = {k: {**{kk: v for kk, v in r.items() if kk != "x"},
                       "cosine_to_start": cosine(r["x"], starts[k]),
                       "high_frequency_share": high_frequency_share(r["x"])} for k, r in runs.items()}
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / d if d > 0 else 0.0


# ------------------------------------------------------------------ pictures
def to_display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, 3), rescaled to [0, 1] (min -> 0, max -> 1)."""
    a = np.asarray(img, np.float64)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure atomically (temp file beside it, then rename); format from the suffix."""
    from repro.report import figure_format

    return atomic.save_figure(fig, path, dpi=fig.dpi, format=figure_format(path))


def figure(figsize: tuple[float, float], dpi: int = 150) -> Any:
    """A figure on the Agg canvas: no display, no pyplot global state (safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


POSITIVE, NEGATIVE = "#1a9641", "#d7191c"  # frame colours: green = positive (face), red = distractor


def image_grid_png(images: np.ndarray, path: Path, title: str, labels: list[str] | None = None,
                   cols: int = 8, positive: np.ndarray | None = None, dpi: int = 150) -> Path:
    """A grid of (N, C, H, W) images in [0, 1], row by row (the paper's Figure 3, left). With
    ``positive`` each image gets a frame: green for a positive (face), red for a distractor."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig = figure((cols * 1.35, rows * 1.55 + 0.9), dpi)
    fig.suptitle(title, fontsize=10)
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        img = np.asarray(images[k], np.float64)
        a = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        ax.imshow(a, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if positive is not None:
            for sp in ax.spines.values():
                sp.set_edgecolor(POSITIVE if positive[k] else NEGATIVE)
                sp.set_linewidth(3)
        else:
            for sp in ax.spines.values():
                sp.set_visible(False)
        if labels:
            ax.set_xlabel(labels[k], fontsize=8, labelpad=2)
    if positive is not None:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=POSITIVE, label=f"face ({int(np.sum(positive))})"),
                            Patch(color=NEGATIVE, label=f"distractor ({int(n - np.sum(positive))})")],
                   loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if positive is not None else 0, 1, 0.95))
    return save_figure(fig, path)


def stimulus_png(x: np.ndarray, path: Path, title: str, dpi: int = 150) -> Path:
    """The optimal stimulus, large, in the network's standardised units with a colour scale."""
    a = np.asarray(x[0] if x.ndim == 4 else x, np.float64)
    fig = figure((5.6, 5.0), dpi)
    ax = fig.add_subplot(1, 1, 1)
    if a.shape[0] == 1:
        lim = float(np.abs(a).max()) or 1.0
        im = ax.imshow(a[0], cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("input value (standardised image, ||x|| = 1)", fontsize=9)
        cb.ax.tick_params(labelsize=8)
    else:
        ax.imshow(to_display(a), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def stimuli_png(panels: list[tuple[np.ndarray, str]], path: Path, title: str, dpi: int = 150) -> Path:
    """Stimuli side by side, each (C, H, W) or (1, C, H, W) on its own symmetric grey scale
    (mid grey = 0), each with its caption: the paper's stimulus beside the smooth ones."""
    fig = figure((3.4 * len(panels), 4.6), dpi)
    fig.suptitle(title, fontsize=10)
    for k, (x, caption) in enumerate(panels):
        a = np.asarray(x[0] if x.ndim == 4 else x, np.float64)
        ax = fig.add_subplot(1, len(panels), k + 1)
        if a.shape[0] == 1:
            lim = float(np.abs(a).max()) or 1.0
            ax.imshow(a[0], cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            ax.imshow(to_display(a), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.14, top=0.84, wspace=0.08)
    return save_figure(fig, path)


# ------------------------------------------------------------------ the step
def best_neuron(session: Any, net: Network, ts: Any, neuron: Neuron, iters: int = 200, seed: int = 0,
                k: int = 48, tol: float = 1e-6, dpi: int = 150, formats: tuple[str, ...] = ("png",),
                prior: str = "none", sigma: tuple[float, float] = SMOOTH_SIGMA) -> dict[str, Any]:
    """Top-k test images and optimal stimulus of one neuron; rank 0 writes the PNGs, .npy and JSON.

    ``ts`` is a :class:`repro.experiments.evaluate.TestSet` (labels ``ts.y``, ``ts.images(idx)``
    float32 (B, C, H, W) in [0, 1]); it is checked against the network first. ``prior="smooth"``
    also finds the stimulus under the blur prior (:func:`smooth_stimulus`, blur ``sigma`` = start,
    end pixels) and writes it beside the paper's: ``best-neuron-stimulus-smooth.{png,npy}``.
    """
    if prior not in PRIORS:
        raise ReproError(f"prior {prior!r} is not one of {', '.join(PRIORS)}")
    ts.check(net.cfg)
    n = len(ts)
    images = ts.images(np.arange(n))
    acts = neuron_responses(net, images, neuron)
    top = top_k(acts, k)
    best_img = images[top[0]]
    # Yardstick: the best test image, standardised as the network does, at unit norm.
    best_unit = unit_norm(np.asarray(standardize(best_img[None].astype(np.float32))))
    f_best_unit, _ = activation(net, best_unit, neuron)
    stim = optimal_stimulus(net, neuron, best_img, seed=seed, iters=iters, tol=tol)
    x = stim["x"]
    run = session.run
    y = np.asarray(ts.y, dtype=np.int64)
    labels = y[top]
    faces = np.flatnonzero(y == 1)
    top_face = None
    if len(faces):  # the most exciting positive, raw and at unit norm (the stimuli's scale)
        i = int(faces[top_k(acts[faces], 1)[0]])
        f_face, _ = activation(net, unit_norm(np.asarray(standardize(images[i][None].astype(np.float32)))), neuron)
        top_face = {"index": i, "activation": float(acts[i]), "activation_unit_norm": f_face}
    smooth = smooth_stimulus(net, neuron, best_img, seed=seed, iters=iters, sigma=sigma) if prior == "smooth" else None
    summary = {
        "neuron": neuron_dict(neuron),
        "test_set": test_set_name(ts), "test_images": n,
        "top": {"k": len(top), "indices": top.tolist(), "activations": acts[top].tolist(),
                "labels": labels.tolist(), "positives": int((labels == 1).sum())},
        "stimulus": {"activation": stim["activation"], "norm": float(np.linalg.norm(x)),
                     "start": stim["start"], "iterations": stim["iterations"], "evaluations": stim["evaluations"],
                     "stopped": stim["stopped"], "runs": stim["runs"], "iters_max": iters, "tol": tol,
                     "seed": seed},
        "best_test_image": {"index": int(top[0]), "activation": float(acts[top[0]]),
                            "activation_unit_norm": f_best_unit},
        "stimulus_over_best_image": stim["activation"] / f_best_unit if f_best_unit else None,
        "top_face": top_face,
        "prior": prior,
        "ranks": session.w.size, "device": session.backend.name,
        "files": [f"best-neuron-{what}.{fmt}" for fmt in formats for what in ("top48", "stimulus")]
        + ["best-neuron-stimulus.npy"],
    }
    summary["stimulus"]["high_frequency_share"] = high_frequency_share(x)
    if smooth is not None:
        xs = smooth["x"]
        summary["stimulus_smooth"] = {
            "scheme": "gaussian-blur (Yosinski et al. 2015)", "sigma_start": float(sigma[0]),
            "sigma_end": float(sigma[1]), "activation": smooth["activation"], "norm": float(np.linalg.norm(xs)),
            "high_frequency_share": high_frequency_share(xs), "start": smooth["start"],
            "iterations": smooth["iterations"], "evaluations": smooth["evaluations"], "stopped": smooth["stopped"],
            "runs": smooth["runs"], "iters_max": iters, "seed": seed}
        summary["responses_unit_norm"] = {
            "stimulus": stim["activation"], "stimulus_smooth": smooth["activation"],
            "best_test_image": f_best_unit, "top_face": top_face["activation_unit_norm"] if top_face else None}
        summary["files"] += [f"best-neuron-stimulus-smooth.{fmt}" for fmt in formats] + ["best-neuron-stimulus-smooth.npy"]
    if session.w.is_root:
        share = 100.0 * float(np.mean(ts.y))
        for fmt in formats:
            image_grid_png(images[top], run / f"best-neuron-top48.{fmt}",
                           f"The {len(top)} test images that excite {neuron.label()} most\n"
                           f"{summary['top']['positives']} of {len(top)} are faces "
                           f"(faces are {share:.0f}% of the {n} test images); numbers: its activation",
                           labels=[f"{a:.3g}" for a in acts[top]], positive=labels == 1, dpi=dpi)
            stimulus_png(x, run / f"best-neuron-stimulus.{fmt}",
                         f"Optimal stimulus of {neuron.label()}", dpi=dpi)
        with atomic.target(run / "best-neuron-stimulus.npy") as tmp:
            np.save(tmp, x[0], allow_pickle=False)
        if smooth is not None:
            sr = summary["stimulus_smooth"]["runs"]
            panels = [(x, f"no prior (Le et al.): f = {stim['activation']:.4g}\n"
                          f"high-frequency share {summary['stimulus']['high_frequency_share']:.2f}")]
            for name, what in (("random", "random start"), ("best_image", "start: best test image")):
                if name in smooth["ends"]:
                    panels.append((smooth["ends"][name], f"blur prior, {what}: f = {sr[name]['activation']:.4g}\n"
                                   f"high-frequency share {sr[name]['high_frequency_share']:.2f}, "
                                   f"cos to start {sr[name]['cosine_to_start']:.2f}"))
            face = (f"; top face at unit norm f = {top_face['activation_unit_norm']:.4g}" if top_face else "")
            for fmt in formats:
                stimuli_png(panels, run / f"best-neuron-stimulus-smooth.{fmt}",
                            f"Optimal stimuli of {neuron.label()}, ||x|| = 1\n"
                            f"blur prior: Gaussian, sigma {sigma[0]:g} -> {sigma[1]:g} px over {iters} steps{face}",
                            dpi=dpi)
            with atomic.target(run / "best-neuron-stimulus-smooth.npy") as tmp:
                np.save(tmp, smooth["x"][0], allow_pickle=False)
    session.write_json("visualize-best-neuron.json", summary)
    return summary


def test_set_name(ts: Any) -> str:
    return " + ".join(str(s.path) for s in ts.stores)


def check_images(cfg: Any, store: Any) -> None:
    """The test images must have the network's input size and channels (else: another config's data)."""
    cfg.check_image_shape(tuple(store.shape), str(store.path))


def neuron_dict(neuron: Neuron) -> dict[str, Any]:
    return {"layer": neuron.layer, "sublayer": neuron.sublayer, "index": neuron.index, "unit": list(neuron.unit)}
