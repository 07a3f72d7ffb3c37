"""Raw files -> packed store (see ``repro.data.store`` for the format).

Why: training must stream fixed-size uint8 pixels, not decode JPEGs; decoding happens once, here,
in parallel threads (OpenCV's decoders release the GIL). The order of the store is a deterministic
shuffle of the sorted file list for the manifest's seed, so two machines preparing the same files
get byte-identical stores. Work is done shard by shard under ``<store>.partial/``: an interrupted
prepare picks up at the first unfinished shard; the store appears (by rename) only when complete.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from repro.data import builtin, locate, video
from repro.data.fetch import SOURCE, raw_dir, record_source, recorded_source
from repro.data.manifest import Manifest, PrepareSpec, load
from repro.data.store import StoreWriter, is_complete, open_store
from repro.errors import ReproError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif"}


class BadImage(ValueError):
    """An input file that cannot be decoded (or is too small for the crop)."""


@dataclass(frozen=True, slots=True)
class Item:
    path: str
    label: int


def prepared_dir(root: Path, name: str) -> Path:
    return Path(root) / "prepared" / name


def resolve_dataset(name_or_path: str | os.PathLike, split: str = "train", root: str | os.PathLike = "data",
                    shape: tuple[int, ...] | None = None) -> Path:
    """Where a prepared store lives: a store folder given directly, or the store of data set NAME
    (``NAME@HxW`` names one size) under ``<root>/prepared/``: with ``shape``, the one of that image
    shape (see ``repro.data.locate``).

    NAME may also be a path to a manifest file (its ``name`` field is used).
    """
    p = Path(name_or_path)
    if (p / "index.json").is_file():
        return p
    if (p / split / "index.json").is_file():
        return p / split
    s = str(name_or_path)
    if s.endswith(".toml"):
        s = load(s).name
    elif os.sep in s or "/" in s:
        return p / split
    return locate.resolve(s, split, root, shape)


def require_store(name_or_path: str | os.PathLike, split: str = "train", root: str | os.PathLike = "data",
                  shape: tuple[int, ...] | None = None, config: str | None = None):
    """Open a prepared store (of ``shape``, when given: a network config's input) or raise a
    ``ReproError`` naming the exact command that makes it (``config``: the config to name there)."""

    path = resolve_dataset(name_or_path, split, root, shape)
    if not is_complete(path):
        name = str(name_or_path)
        if name.endswith(".toml"):
            name = load(name).name
        if os.sep in name or "/" in name:  # a folder that is no store
            root_opt = "" if Path(root) == Path("data") else f" --root {root}"
            raise ReproError(f"{path}: dataset not prepared; run `repro data prepare {name}{root_opt}`")
        raise locate.missing_store_error(name, split, root, path, shape, config)
    return open_store(path)


# ------------------------------------------------------------------ decoding
def decode_file(path: str, grey: bool) -> np.ndarray:
    """Decode an image file to uint8 (H, W) grey or (H, W, 3) RGB; raises BadImage."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImage(f"unreadable ({e.strerror or e})") from None
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) if buf.size else None
    if img is None:  # formats OpenCV lacks (e.g. GIF): try Pillow
        try:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                img = np.asarray(im.convert("L" if grey else "RGB"))
        except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt image
            raise BadImage(f"corrupt or unsupported image ({e.__class__.__name__})") from None
        return img
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def cat_head_box(path: str, h: int, w: int) -> tuple[int, int, int, int]:
    """Square box (top, left, side, side) around the 9 landmarks in ``<path>.cat``, enlarged 1.3x."""
    try:
        vals = [int(float(v)) for v in Path(path + ".cat").read_text().split()]
    except (OSError, ValueError) as e:
        raise BadImage(f"no readable landmark file {path}.cat ({e.__class__.__name__})") from None
    if len(vals) < 3 or vals[0] * 2 + 1 > len(vals):
        raise BadImage(f"malformed landmark file {path}.cat")
    pts = np.asarray(vals[1:1 + 2 * vals[0]], dtype=np.float64).reshape(-1, 2)
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    side = 1.3 * max(x1 - x0, y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = min(side, h, w)
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    return top, left, int(side), int(side)


def transform(img: np.ndarray, spec: PrepareSpec, path: str = "") -> np.ndarray:
    """Crop then resize to the manifest's size (INTER_AREA down, INTER_LINEAR up)."""
    h, w = img.shape[:2]
    crop = spec.crop
    if crop == "cat-head":
        crop = cat_head_box(path, h, w)
    if crop == "center":
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        img = img[y0:y0 + s, x0:x0 + s]
    elif isinstance(crop, tuple):
        t, l, ch, cw = crop
        if t + ch > h or l + cw > w:
            raise BadImage(f"image is {h}x{w}, smaller than the crop box {list(crop)}")
        img = img[t:t + ch, l:l + cw]
    H, W = spec.size
    interp = cv2.INTER_AREA if img.shape[0] >= H and img.shape[1] >= W else cv2.INTER_LINEAR
    out = cv2.resize(img, (W, H), interpolation=interp)
    return np.ascontiguousarray(out, dtype=np.uint8)


def load_item(item: Item, spec: PrepareSpec) -> list[np.ndarray]:
    """Decoded, transformed images of one input (a video may give several)."""
    if video.is_video(item.path):
        try:
            frames = video.read_frames(item.path, spec.video_every)
        except video.BadVideo as e:
            raise BadImage(f"corrupt video ({e})") from None
        out = []
        for fr in frames:
            fr = cv2.cvtColor(fr, cv2.COLOR_BGR2GRAY) if spec.grey else cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
            out.append(transform(fr, spec))
        return out
    img = decode_file(item.path, spec.grey)
    if img.ndim == 3 and spec.grey:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return [transform(img, spec, item.path)]


# ------------------------------------------------------------------ input listing
def source_base(m: Manifest, root: Path, from_path: Path | None) -> Path:
    """Where the manifest's globs are rooted: ``--from``, else the recorded source (a ``local``
    manifest's folder; a download's ``prepare --from``, while nothing was fetched), else ``raw/<name>/``."""
    if from_path is not None:
        if not from_path.exists():
            raise ReproError(f"{from_path}: no such file or folder")
        return from_path
    raw = raw_dir(root, m.name)
    if m.kind == "local":
        recorded = recorded_source(root, m.name)
        if recorded is None:
            raise ReproError(f"{m.path}: no source recorded for '{m.name}'; run "
                             f"`repro data fetch {m.name} --from FOLDER_OR_LIST` or `prepare --from`")
        return recorded
    fetched = raw.is_dir() and any(p.name != SOURCE for p in raw.iterdir())
    if not fetched:
        recorded = recorded_source(root, m.name)
        if recorded is not None:
            return recorded
    if not raw.is_dir():
        raise ReproError(f"{raw}: raw files missing; run `repro data fetch {m.name}`")
    return raw


def _is_input(p: str) -> bool:
    ext = os.path.splitext(p)[1].lower()
    return ext in IMAGE_EXTS or ext in video.VIDEO_EXTS


def list_items(m: Manifest, base: Path, split: str) -> list[Item]:
    """Sorted inputs of one split; the base may be a folder or a text file listing paths."""
    items: list[Item] = []
    listing: list[str] | None = None
    if base.is_file():
        listing = _read_list(base)
    for src in m.prepare.sources:
        if src.split != split:
            continue
        if src.list:
            lp = base / src.list if base.is_dir() else base.parent / src.list
            paths = sorted(_read_list(lp))
        elif listing is not None:
            paths = sorted(p for p in listing if fnmatch.fnmatch(os.path.relpath(p, base.parent), src.glob)
                           or fnmatch.fnmatch(p, src.glob))
        else:
            paths = sorted(str(p) for p in base.glob(src.glob) if p.is_file())
        items.extend(Item(p, src.label) for p in paths if _is_input(p))
    return items


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReproError(f"{path}: cannot read list ({e.__class__.__name__})") from None
    out = []
    for ln in lines:
        ln = ln.strip()
        if ln and not ln.startswith("#"):
            q = Path(ln)
            out.append(str(q if q.is_absolute() else path.parent / q))
    return out


# ------------------------------------------------------------------ prepare
def spec_params(spec: PrepareSpec) -> dict[str, Any]:
    return {"size": list(spec.size), "grey": spec.grey,
            "crop": list(spec.crop) if isinstance(spec.crop, tuple) else spec.crop,
            "shard_size": spec.shard_size, "seed": spec.seed, "video_every": spec.video_every}


def inputs_digest(items: list[Item]) -> str:
    """sha256 of the JSON list of (path, label) pairs, fed one pair at a time (the same value as
    hashing ``json.dumps`` of the whole list, without building that string: 1 GB at 10M files)."""
    h = hashlib.sha256(b"[")
    for i, it in enumerate(items):
        h.update(((", " if i else "") + json.dumps((it.path, it.label))).encode())
    h.update(b"]")
    return h.hexdigest()


def prepare_split(m: Manifest, items: list[Item], out: Path, spec: PrepareSpec, split: str,
                  skip_bad: bool = False, workers: int | None = None, console: Console | None = None,
                  base: Path | None = None, extra_info: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Decode ``items`` into the store ``out``; returns the path and a summary dict."""
    console = console or Console(stderr=True)
    if not items:
        raise ReproError(f"{m.path or m.name}: split '{split}' matches no image or video files"
                         + (f" under {base}" if base else ""))
    order = np.random.default_rng(spec.seed).permutation(len(items))
    items = [items[i] for i in order]
    params = spec_params(spec)
    digest = inputs_digest(items)
    plan = {"manifest": m.name, "split": split, "params": params, "inputs": digest, "skip_bad": skip_bad}
    writer = StoreWriter(out, plan)
    per = spec.shard_size
    if spec.video_every > 0 and any(video.is_video(it.path) for it in items):
        per = max(1, spec.shard_size // 64)  # every-k videos give many frames per input
    chunks = [items[i:i + per] for i in range(0, len(items), per)]
    shape = tuple(spec.size) if spec.grey else (*spec.size, 3)
    workers = workers or max(1, os.cpu_count() or 1)
    # only per-shard counts are kept here: records and labels go to disk with each shard (bounded memory)
    counts: list[int] = []
    skipped, skipped_files, reused = 0, [], 0
    t0, n_img = time.perf_counter(), 0
    with Progress(TextColumn(f"[bold]{m.name}/{split}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=True) as prog, \
            ThreadPoolExecutor(workers) as pool:
        task = prog.add_task("prepare", total=len(items), rate="")
        for k, chunk in enumerate(chunks):
            res = writer.done(k)
            if res is not None:
                counts.append(res.count)
                reused += 1
                if spec.video_every == 0:
                    skipped += len(chunk) - res.count
                prog.update(task, advance=len(chunk))
                continue

            def work(it: Item) -> tuple[Item, list[np.ndarray] | str]:
                try:
                    return it, load_item(it, spec)
                except BadImage as e:
                    return it, str(e)

            imgs, recs = [], []
            for it, got in pool.map(work, chunk):
                if isinstance(got, str):
                    if not skip_bad:
                        raise ReproError(f"{it.path}: {got} (use --skip-bad to skip such files)")
                    skipped += 1
                    if len(skipped_files) < 20:
                        skipped_files.append(it.path)
                    continue
                for j, img in enumerate(got):
                    imgs.append(img)
                    src = it.path if base is None else os.path.relpath(it.path, base if base.is_dir() else base.parent)
                    recs.append({"label": it.label, "source": src if len(got) == 1 else f"{src}#{j}"})
            arr = np.stack(imgs) if imgs else np.zeros((0, *shape), np.uint8)
            counts.append(writer.write_shard(k, arr, recs).count)
            del imgs, recs, arr
            n_img += counts[-1]
            dt = time.perf_counter() - t0
            prog.update(task, advance=len(chunk), rate=f"{n_img / max(dt, 1e-9):.0f} img/s")
    count = sum(counts)
    if count == 0:
        raise ReproError(f"{m.path or m.name}: split '{split}': no image could be decoded")
    info = {"skipped": skipped, "skipped_files": skipped_files, "reused_shards": reused,
            "seconds": round(time.perf_counter() - t0, 3)}
    writer.finish(shape, counts, m.name, split, params, {**info, **(extra_info or {})})
    return out, {"split": split, "count": count, **info}


def prepare(m: Manifest, root: Path, from_path: Path | None = None, skip_bad: bool = False,
            workers: int | None = None, force: bool = False, seed: int | None = None,
            console: Console | None = None, size: tuple[int, int] | None = None, grey: bool | None = None,
            video_every: int | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Prepare every split of a manifest into ``<root>/prepared/<name>/<split>/`` (the manifest's
    size) or ``<root>/prepared/<name>@HxW/<split>/`` (``size`` / ``grey`` overriding it), so stores of
    several sizes live side by side. ``--from`` is recorded for the next prepare. Counts that miss
    the manifest's ``[expected]`` are a warning on ``console``, or with ``strict`` an error (before
    decoding when the listed files already miss them)."""
    if m.kind == "builtin":
        if (size is not None and tuple(size) != tuple(m.prepare.size)) or (grey is not None and grey != m.prepare.grey) \
                or video_every is not None:
            raise ReproError(f"{m.path or m.name}: the built-in set '{m.name}' is made at its manifest's "
                             f"{m.prepare.size[0]}x{m.prepare.size[1]} only; --size, --for-config, --colour "
                             "and --video-every are for your own or downloaded data sets")
        return builtin.prepare_builtin(m, root, force=force, seed=seed, console=console, from_dir=from_path)
    console = console or Console(stderr=True)
    over: dict[str, Any] = {}
    for k, v in (("seed", seed), ("size", size), ("grey", grey), ("video_every", video_every)):
        if v is not None:
            over[k] = tuple(v) if k == "size" else v
    if "size" in over and min(over["size"]) <= 0:
        raise ReproError(f"--size: must be two positive integers, got {over['size'][0]} {over['size'][1]}")
    if over.get("video_every", 0) < 0:
        raise ReproError(f"--video-every: must be >= 0, got {over['video_every']}")
    spec = PrepareSpec(**{**m.prepare.__dict__, **over})
    base = source_base(m, root, from_path)
    if from_path is not None:
        record_source(root, m.name, from_path, "prepare --from")
    out_dir = locate.store_folder(root, m.name, locate.shape_of(spec.size, spec.grey),
                                  locate.shape_of(m.prepare.size, m.prepare.grey))
    todo: dict[str, list[Item]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for split in m.splits:
        out = out_dir / split
        if is_complete(out) and not force:
            st = open_store(out)
            if st.index.get("params") == spec_params(spec):
                summaries[split] = {"split": split, "count": len(st), "skipped": st.index["info"].get("skipped", 0),
                                    "note": "already prepared", "labels": _label_counts(st.labels)}
                continue
        todo[split] = list_items(m, base, split)
    # the listed files already tell a shortfall (unless every-k videos make the frame count unknown)
    if not (spec.video_every > 0 and any(video.is_video(it.path) for v in todo.values() for it in v)):
        listed = {sp: {"count": len(v), "labels": _label_counts([it.label for it in v])} for sp, v in todo.items()}
        bad = expected_mismatches(m, {**summaries, **listed}, "found")
        if bad and strict:
            raise ReproError(f"{m.path or m.name}: {bad[0]} (--strict; nothing prepared)")
    for split, items in todo.items():
        _, sm = prepare_split(m, items, out_dir / split, spec, split, skip_bad=skip_bad, workers=workers,
                              console=console, base=base)
        st = open_store(out_dir / split)
        summaries[split] = {**sm, "labels": _label_counts(st.labels)}
    result = [summaries[sp] for sp in m.splits]
    bad = expected_mismatches(m, summaries)
    if bad and strict:
        raise ReproError(f"{m.path or m.name}: {bad[0]} (--strict; the stores in {out_dir} are complete)")
    for line in bad:
        console.print(f"[yellow]warning: {m.name}: {line}[/yellow]")
    for r in result:
        r["store"] = str(out_dir / r["split"])
    return result


def _label_counts(labels: Any) -> dict[int, int]:
    vals, counts = np.unique(np.asarray(labels, np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts)}


def expected_mismatches(m: Manifest, per_split: dict[str, dict[str, Any]], verb: str = "prepared") -> list[str]:
    """One line per ``[expected]`` count (0 = unknown, skipped) that the splits do not reach or exceed:
    ``images``, ``positives`` (label 1), ``negatives`` (label 0), or a split's name."""
    got: dict[str, int] = {sp: int(v["count"]) for sp, v in per_split.items()}
    if set(per_split) >= set(m.splits):
        got["images"] = sum(int(v["count"]) for v in per_split.values())
        got["positives"] = sum(int(v["labels"].get(1, 0)) for v in per_split.values())
        got["negatives"] = sum(int(v["labels"].get(0, 0)) for v in per_split.values())
    out = []
    for k, want in m.expected.items():
        if not want or k not in got or got[k] == want:
            continue
        have = got[k]
        how = f"{want - have:,} short" if have < want else f"{have - want:,} more"
        out.append(f"{have:,} {k} {verb}, the manifest expects {want:,} ({how}; `[expected]` in {m.path or m.name})")
    return out
