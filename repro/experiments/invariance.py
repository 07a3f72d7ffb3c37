"""How the best neuron's response changes under transformations (Le et al. 2012, Figures 4 and 5).

    repro visualize invariance --checkpoint RUN            # neuron from RUN/evaluate-faces.json

Ten test faces (the test set's positives, a seeded choice) are transformed with one parameter at a
time, and the neuron's mean response over the ten is recorded per parameter value:

* scaling by 0.5..1.5 about the image centre (OpenCV ``warpAffine``, bilinear; pixels that come
  from outside the image repeat the border: ``BORDER_REPLICATE``, so no black frame appears);
* translation by -S..+S pixels, horizontally and vertically (S = a quarter of the image side:
  8 px at 32x32, 50 px at 200x200);
* in-plane rotation by -90..+90 degrees about the centre;
* out-of-plane (3-D) rotation, only when a rotating-face set is prepared (manifest
  ``rotating-faces``: each image's yaw angle is read from its file name, see that manifest).

Reference curve: the same neuron index of a network with random weights (same config, seed
``--seed``): Le et al. contrast their neuron with random filters, and Coates et al. report that a
random net scores no better than guessing. Plots show each curve *relative to its response to the
untransformed faces* (parameter = identity -> 1.0), so the trained and random networks share one
axis; the 3-D plot is relative to the curve's maximum (no identity pose there). The JSON keeps
every raw mean and per-face response.
"""
from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np

from repro.errors import ReproError
from repro.experiments.visualize import (Neuron, check_images, figure, neuron_dict, neuron_responses, save_figure,
                                         test_set_name)

IDENTITY = {"scale": 1.0, "translation_x": 0.0, "translation_y": 0.0, "rotation": 0.0}


def parameter_ranges(size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Parameter values of each transform for an image of ``size`` = (H, W)."""
    shift = max(1, int(round(min(size) / 4)))
    shifts = np.unique(np.round(np.linspace(-shift, shift, min(2 * shift + 1, 17))))
    return {
        "scale": np.round(np.linspace(0.5, 1.5, 11), 6),
        "translation_x": shifts.astype(np.float64),
        "translation_y": shifts.astype(np.float64),
        "rotation": np.linspace(-90.0, 90.0, 13),
    }


def affine(kind: str, value: float, size: tuple[int, int]) -> np.ndarray:
    """The 2x3 matrix of one transform of an (H, W) image (centre = ((W-1)/2, (H-1)/2))."""
    h, w = size
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    if kind == "scale":
        return cv2.getRotationMatrix2D(centre, 0.0, float(value))
    if kind == "rotation":
        return cv2.getRotationMatrix2D(centre, float(value), 1.0)  # degrees, counter-clockwise
    if kind == "translation_x":
        return np.array([[1.0, 0.0, float(value)], [0.0, 1.0, 0.0]])
    if kind == "translation_y":
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, float(value)]])
    raise ValueError(f"unknown transform {kind!r}")


def transform(images: np.ndarray, kind: str, value: float) -> np.ndarray:
    """Transform float32 (B, C, H, W) images; the identity parameter returns them unchanged."""
    if float(value) == IDENTITY[kind]:
        return images.copy()
    B, C, H, W = images.shape
    M = affine(kind, value, (H, W))
    out = np.empty_like(images)
    for b in range(B):
        hwc = np.ascontiguousarray(images[b].transpose(1, 2, 0))
        r = cv2.warpAffine(hwc, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[b] = r.reshape(H, W, C).transpose(2, 0, 1)
    return out


def pick_faces(labels: np.ndarray, n: int, seed: int, where: str) -> np.ndarray:
    """``n`` positives of the test set, a seeded choice, in ascending index order."""
    pos = np.nonzero(np.asarray(labels).astype(np.int64) == 1)[0]
    if len(pos) == 0:
        raise ReproError(f"{where}: the test set has no positives (faces) to transform")
    rng = np.random.default_rng([seed, 4])
    return np.sort(rng.choice(pos, size=min(n, len(pos)), replace=False))


def curves(nets: dict[str, Any], faces: np.ndarray, neuron: Neuron, ranges: dict[str, np.ndarray]
           ) -> dict[str, Any]:
    """Per transform and network: per-face responses (values x faces) and their mean per value."""
    batches, spans, lo = [], {}, 0
    for kind, vals in ranges.items():
        for v in vals:
            batches.append(transform(faces, kind, float(v)))
        spans[kind] = (lo, lo + len(vals) * len(faces))
        lo = spans[kind][1]
    allx = np.concatenate(batches)
    resp = {name: neuron_responses(net, allx, neuron) for name, net in nets.items()}
    out: dict[str, Any] = {}
    for kind, vals in ranges.items():
        a, b = spans[kind]
        entry: dict[str, Any] = {"values": [float(v) for v in vals]}
        ident = int(np.argmin(np.abs(vals - IDENTITY[kind])))
        for name in nets:
            per = resp[name][a:b].reshape(len(vals), len(faces))
            mean = per.mean(axis=1)
            entry[name] = {"mean": mean.tolist(), "per_face": per.tolist(),
                           "relative": relative(mean, mean[ident]).tolist()}
        out[kind] = entry
    return out


def relative(mean: np.ndarray, ref: float) -> np.ndarray:
    """A curve divided by its reference response (left raw where that is ~0)."""
    return mean / ref if abs(ref) > 1e-12 else mean.copy()


# ------------------------------------------------------------------ rotating faces (3-D)
ANGLE_RE = r"(?P<angle>[-+]?[0-9]+(?:\.[0-9]+)?)[^/\\]*$"


def angles_of(store: Any, pattern: str = ANGLE_RE) -> np.ndarray:
    """Each image's yaw angle (degrees) parsed from its source file name."""
    rx = re.compile(pattern)
    out = []
    for r in store.records:
        m = rx.search(str(r.get("source", "")))
        if m is None:
            raise ReproError(f"{store.path}: cannot read an angle from source {r.get('source')!r} "
                             f"(pattern {pattern!r})")
        out.append(float(m.group("angle")))
    return np.asarray(out)


def rotation_3d(nets: dict[str, Any], store: Any, neuron: Neuron, cfg: Any, pattern: str = ANGLE_RE
                ) -> dict[str, Any]:
    """Mean response per yaw angle over every image of the rotating-face set at that angle."""
    from repro.data.loader import to_float

    check_images(cfg, store)
    ang = angles_of(store, pattern)
    x = to_float(store.images(np.arange(len(store))))
    vals = np.unique(ang)
    entry: dict[str, Any] = {"values": vals.tolist(), "images": len(store), "set": str(store.path),
                             "count": [int((ang == v).sum()) for v in vals]}
    for name, net in nets.items():
        r = neuron_responses(net, x, neuron)
        mean = np.array([r[ang == v].mean() for v in vals])
        entry[name] = {"mean": mean.tolist(), "relative": relative(mean, float(mean.max())).tolist()}
    return entry


# ------------------------------------------------------------------ plots
TITLES = {"scale": ("Scale invariance", "scale factor"),
          "translation": ("Translation invariance", "shift (pixels)"),
          "rotation": ("In-plane rotation invariance", "rotation (degrees)"),
          "3d-rotation": ("Out-of-plane (3-D) rotation invariance", "yaw (degrees)")}


def plot(path: Any, kind: str, series: list[tuple[str, list[float], list[float], str]], neuron: Neuron) -> Any:
    """One invariance plot: each series is (label, x, y, style)."""
    title, xlabel = TITLES[kind]
    fig = figure((5.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for label, xs, ys, style in series:
        ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean response (relative)" if kind != "3d-rotation" else "mean response / max")
    ax.set_title(f"{title}\n{neuron.label()}", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(run: Any, result: dict[str, Any], neuron: Neuron) -> list[str]:
    c = result["curves"]
    files = []
    for kind in ("scale", "rotation"):
        e = c[kind]
        plot(run / f"invariance-{kind}.png", kind,
             [("best neuron", e["values"], e["trained"]["relative"], "o-"),
              ("random network, same neuron", e["values"], e["random"]["relative"], "s--")], neuron)
        files.append(f"invariance-{kind}.png")
    ex, ey = c["translation_x"], c["translation_y"]
    plot(run / "invariance-translation.png", "translation",
         [("best neuron, horizontal", ex["values"], ex["trained"]["relative"], "o-"),
          ("best neuron, vertical", ey["values"], ey["trained"]["relative"], "^-"),
          ("random net, horizontal", ex["values"], ex["random"]["relative"], "s--"),
          ("random net, vertical", ey["values"], ey["random"]["relative"], "v--")], neuron)
    files.append("invariance-translation.png")
    if "rotation_3d" in c:
        e = c["rotation_3d"]
        plot(run / "invariance-3d-rotation.png", "3d-rotation",
             [("best neuron", e["values"], e["trained"]["relative"], "o-"),
              ("random network, same neuron", e["values"], e["random"]["relative"], "s--")], neuron)
        files.append("invariance-3d-rotation.png")
    return files


# ------------------------------------------------------------------ the step
def invariance(session: Any, net: Any, ts: Any, neuron: Neuron, seed: int = 0, faces: int = 10,
               rotating: Any = None, angle_pattern: str = ANGLE_RE) -> dict[str, Any]:
    """Curves of the trained neuron and a random-network reference; rank 0 writes JSON and PNGs.

    ``ts`` is a :class:`repro.experiments.evaluate.TestSet`; ``rotating`` an optional store of
    rotating faces (angle in each source file name).
    """
    from repro.model.network import Network

    ts.check(net.cfg)
    idx = pick_faces(ts.y, faces, seed, test_set_name(ts))
    x = ts.images(idx)
    random_net = Network.create(net.cfg, seed=seed, xp=net.xp, w=net.w)
    nets = {"trained": net, "random": random_net}
    ranges = parameter_ranges(tuple(net.cfg.input_size))
    result: dict[str, Any] = {
        "neuron": neuron_dict(neuron),
        "test_set": test_set_name(ts), "faces": idx.tolist(), "seed": seed,
        "reference": f"same neuron of a random-weights network of config {net.cfg.name!r} (seed {seed})",
        "normalisation": "relative = mean response / mean response to the untransformed faces "
                         "(3-D rotation: / the curve's maximum); mean and per_face are raw",
        "border": "BORDER_REPLICATE, bilinear (cv2.warpAffine)",
        "curves": curves(nets, x, neuron, ranges),
        "ranks": session.w.size, "device": session.backend.name,
    }
    if rotating is not None:
        result["curves"]["rotation_3d"] = rotation_3d(nets, rotating, neuron, net.cfg, angle_pattern)
    files = write_plots(session.run, result, neuron) if session.w.is_root else []
    result["files"] = files or None
    session.write_json("invariance.json", result)
    return result
