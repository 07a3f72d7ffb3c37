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

Reference: the *best* neuron of a network with random weights (same config and sublayer, seed
``--seed``, chosen on the same test set by the same protocol), not an arbitrary index: Le et al.
contrast their neuron with random filters, and a fair reference is the random net's best shot.

Each plot has two panels. Left: the absolute mean response with the spread over the faces (the
middle half, 25th to 75th percentile) and each neuron's threshold as a dashed line, so one sees
whether the transformed faces would still be called faces. Right: each curve relative to its
response to the untransformed faces (identity -> 1.0; 3-D rotation: relative to the curve's
maximum). The JSON keeps every raw mean, per-face response and the fraction of faces at or above
the threshold per parameter value.
"""
from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np

from repro.data.loader import to_float
from repro.errors import ReproError
from repro.experiments.evaluate import distributed_best, rank_features, unit_of
from repro.experiments.scoring import best_neuron
from repro.experiments.visualize import (Neuron, check_images, figure, neuron_dict, neuron_responses, save_figure,
                                         test_set_name)
from repro.model.network import Network

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


def curves(nets: dict[str, Any], faces: np.ndarray, neurons: dict[str, Neuron], ranges: dict[str, np.ndarray],
           thresholds: dict[str, float | None]) -> dict[str, Any]:
    """Per transform and network: per-face responses (values x faces), their mean, quartiles, and the
    fraction of faces at or above that network's threshold, per parameter value."""
    batches, spans, lo = [], {}, 0
    for kind, vals in ranges.items():
        for v in vals:
            batches.append(transform(faces, kind, float(v)))
        spans[kind] = (lo, lo + len(vals) * len(faces))
        lo = spans[kind][1]
    allx = np.concatenate(batches)
    resp = {name: neuron_responses(net, allx, neurons[name]) for name, net in nets.items()}
    out: dict[str, Any] = {}
    for kind, vals in ranges.items():
        a, b = spans[kind]
        entry: dict[str, Any] = {"values": [float(v) for v in vals]}
        ident = int(np.argmin(np.abs(vals - IDENTITY[kind])))
        for name in nets:
            per = resp[name][a:b].reshape(len(vals), len(faces))
            mean = per.mean(axis=1)
            entry[name] = {"mean": mean.tolist(), "per_face": per.tolist(),
                           "q25": np.percentile(per, 25, axis=1).tolist(), "q75": np.percentile(per, 75, axis=1).tolist(),
                           "relative": relative(mean, mean[ident]).tolist()}
            t = thresholds.get(name)
            if t is not None:
                entry[name]["above_threshold"] = (per >= t).mean(axis=1).tolist()
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


def rotation_3d(nets: dict[str, Any], store: Any, neurons: dict[str, Neuron], cfg: Any, pattern: str = ANGLE_RE
                ) -> dict[str, Any]:
    """Mean response per yaw angle over every image of the rotating-face set at that angle."""

    check_images(cfg, store)
    ang = angles_of(store, pattern)
    x = to_float(store.images(np.arange(len(store))))
    vals = np.unique(ang)
    entry: dict[str, Any] = {"values": vals.tolist(), "images": len(store), "set": str(store.path),
                             "count": [int((ang == v).sum()) for v in vals]}
    for name, net in nets.items():
        r = neuron_responses(net, x, neurons[name])
        mean = np.array([r[ang == v].mean() for v in vals])
        entry[name] = {"mean": mean.tolist(), "relative": relative(mean, float(mean.max())).tolist(),
                       "q25": [float(np.percentile(r[ang == v], 25)) for v in vals],
                       "q75": [float(np.percentile(r[ang == v], 75)) for v in vals]}
    return entry


# ------------------------------------------------------------------ plots
TITLES = {"scale": ("Scale invariance", "scale factor"),
          "translation": ("Translation invariance", "shift (pixels)"),
          "rotation": ("In-plane rotation invariance", "rotation (degrees)"),
          "3d-rotation": ("Out-of-plane (3-D) rotation invariance", "yaw (degrees)")}


LABELS = {"trained": "best neuron", "random": "random network's best neuron"}
STYLES = {"trained": ("tab:red", "o-"), "random": ("tab:blue", "s--")}


def plot(path: Any, kind: str, entries: list[tuple[str, dict[str, Any]]], neurons: dict[str, Neuron],
         thresholds: dict[str, float | None], dpi: int = 150) -> Any:
    """One invariance figure: absolute responses with the faces' spread and the thresholds (left),
    the same relative to the untransformed faces (right). ``entries``: (label suffix, curve entry)."""
    title, xlabel = TITLES[kind]
    fig = figure((10.0, 4.0), dpi)
    ax_abs, ax_rel = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for suffix, e in entries:
        xs = e["values"]
        for name in ("trained", "random"):
            if name not in e:
                continue
            colour, style = STYLES[name]
            if suffix:
                style = style[0] + (":" if "vertical" in suffix else style[1:])
            label = LABELS[name] + (f", {suffix}" if suffix else "")
            ax_abs.plot(xs, e[name]["mean"], style, color=colour, label=label, markersize=3)
            if "q25" in e[name]:
                ax_abs.fill_between(xs, e[name]["q25"], e[name]["q75"], color=colour, alpha=0.12, linewidth=0)
            ax_rel.plot(xs, e[name]["relative"], style, color=colour, label=label, markersize=3)
    for name, t in thresholds.items():
        if t is not None:
            ax_abs.axhline(t, color=STYLES[name][0], linestyle="--", linewidth=0.8, alpha=0.8)
    ax_abs.set_title("mean response (band: middle half of the faces; dashed: threshold)", fontsize=9)
    ax_rel.set_title("relative to the untransformed faces" if kind != "3d-rotation" else "relative to the maximum",
                     fontsize=9)
    for ax in (ax_abs, ax_rel):
        ax.set_xlabel(xlabel, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    ax_abs.set_ylabel("activation", fontsize=10)
    ax_rel.set_ylabel("relative response", fontsize=10)
    ax_rel.legend(fontsize=8)
    fig.suptitle(f"{title}: {neurons['trained'].label()}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(run: Any, result: dict[str, Any], neurons: dict[str, Neuron], thresholds: dict[str, float | None],
                dpi: int = 150, formats: tuple[str, ...] = ("png",)) -> list[str]:
    c = result["curves"]
    files = []
    for fmt in formats:
        for kind in ("scale", "rotation"):
            plot(run / f"invariance-{kind}.{fmt}", kind, [("", c[kind])], neurons, thresholds, dpi)
            files.append(f"invariance-{kind}.{fmt}")
        plot(run / f"invariance-translation.{fmt}", "translation",
             [("horizontal", c["translation_x"]), ("vertical", c["translation_y"])], neurons, thresholds, dpi)
        files.append(f"invariance-translation.{fmt}")
        if "rotation_3d" in c:
            plot(run / f"invariance-3d-rotation.{fmt}", "3d-rotation", [("", c["rotation_3d"])], neurons, thresholds, dpi)
            files.append(f"invariance-3d-rotation.{fmt}")
    return files


def best_of(net: Any, ts: Any, neuron: Neuron) -> tuple[Neuron, float]:
    """The protocol's best neuron of ``net`` in the neuron's stage and sublayer on ``ts``, and its threshold."""

    F = rank_features(net, ts, neuron.layer, neuron.sublayer)
    b = distributed_best(net.w, F.F, F.index, ts.y)[0]
    unit = tuple(unit_of(net.cfg, neuron.layer, neuron.sublayer, b["index"]))
    return Neuron(neuron.layer, neuron.sublayer, b["index"], unit), float(b["threshold"])  # type: ignore[arg-type]


def threshold_of(net: Any, ts: Any, neuron: Neuron) -> float:
    """The protocol's threshold of one neuron on ``ts`` (its best of 20)."""

    acts = neuron_responses(net, ts.images(np.arange(len(ts))), neuron)
    return float(best_neuron(acts[:, None], ts.y)["threshold"])


# ------------------------------------------------------------------ the step
def invariance(session: Any, net: Any, ts: Any, neuron: Neuron, seed: int = 0, faces: int = 10,
               rotating: Any = None, angle_pattern: str = ANGLE_RE, threshold: float | None = None,
               dpi: int = 150, formats: tuple[str, ...] = ("png",)) -> dict[str, Any]:
    """Curves of the trained neuron and of the random network's best neuron; rank 0 writes JSON and figures.

    ``ts`` is a :class:`repro.experiments.evaluate.TestSet`; ``rotating`` an optional store of
    rotating faces (angle in each source file name); ``threshold`` the trained neuron's (from its
    evaluation; else found on ``ts`` by the protocol).
    """

    ts.check(net.cfg)
    idx = pick_faces(ts.y, faces, seed, test_set_name(ts))
    x = ts.images(idx)
    random_net = Network.create(net.cfg, seed=seed, xp=net.xp, w=net.w)
    nets = {"trained": net, "random": random_net}
    rneuron, rthreshold = best_of(random_net, ts, neuron)
    neurons = {"trained": neuron, "random": rneuron}
    thresholds = {"trained": threshold if threshold is not None else threshold_of(net, ts, neuron),
                  "random": rthreshold}
    ranges = parameter_ranges(tuple(net.cfg.input_size))
    result: dict[str, Any] = {
        "neuron": neuron_dict(neuron), "threshold": thresholds["trained"],
        "random_neuron": neuron_dict(rneuron), "random_threshold": rthreshold,
        "test_set": test_set_name(ts), "faces": idx.tolist(), "seed": seed,
        "reference": f"the best neuron (same stage and sublayer, chosen on the same test set) of a random-weights "
                     f"network of config {net.cfg.name!r} (seed {seed})",
        "normalisation": "relative = mean response / mean response to the untransformed faces "
                         "(3-D rotation: / the curve's maximum); mean, q25, q75 and per_face are raw activations",
        "border": "BORDER_REPLICATE, bilinear (cv2.warpAffine)",
        "curves": curves(nets, x, neurons, ranges, thresholds),
        "ranks": session.w.size, "device": session.backend.name,
    }
    if rotating is not None:
        result["curves"]["rotation_3d"] = rotation_3d(nets, rotating, neurons, net.cfg, angle_pattern)
    files = write_plots(session.run, result, neurons, thresholds, dpi, formats) if session.w.is_root else []
    result["files"] = files or None
    session.write_json("invariance.json", result)
    return result
