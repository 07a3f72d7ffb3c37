"""The packed dataset store: fixed-size uint8 images in memory-mappable shards plus a JSON index.

Why this shape: training streams millions of small images; one ``.npy`` per few thousand images
opens with ``np.load(path, mmap_mode="r")`` (no decoding, no pickle, the OS page cache does the
rest), and a JSON index keeps labels and provenance readable by anyone.

Format (version 1), a directory::

    index.json          written LAST: its presence means the store is complete
    shard-00000.npy     np.save'd uint8 array, shape (n, H, W) grey or (n, H, W, C) colour
    shard-00001.npy     ... (n may differ per shard, e.g. when --skip-bad dropped images)

``index.json``::

    {"format": "repro-store", "version": 1,
     "manifest": "mini", "split": "train",
     "shape": [H, W] or [H, W, C], "dtype": "uint8", "count": N,
     "shards": [{"file": "shard-00000.npy", "count": n}, ...],
     "records": [{"shard": 0, "offset": 0, "label": -1, "source": "...", "sha256": "..."}, ...],
     "params": {...prepare parameters...},
     "info": {...optional: e.g. the face filter's summary, skipped counts...}}

``label`` is an int: -1 for unlabeled, 0/1 for negative/positive of a test concept. ``sha256`` is the
hash of the stored (prepared) pixels, so duplicates and train/test leaks can be checked. A record may
carry extra keys (e.g. ``"face": true`` in ``mini`` training frames); readers must ignore unknown keys.

Writing: each shard goes to ``shard-XXXXX.npy.tmp`` then is renamed, and ``index.json`` is written
last (also via a temp name). A writer pointed at a directory that already holds complete shards with
the same parameters reuses them: that is what makes ``prepare`` resumable.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from repro import atomic
from repro.errors import ReproError

FORMAT = "repro-store"
VERSION = 1
INDEX = "index.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def pixel_sha256(img: np.ndarray) -> str:
    """Hash of prepared pixels (shape included), so equal images hash equal across stores."""
    h = hashlib.sha256(str(img.shape).encode())
    h.update(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Compact JSON, written under a temp name, synced, renamed: a reader never sees half a file."""
    atomic.write_json(path, obj, compact=True, fsync=True)


def save_shard(path: Path, images: np.ndarray) -> None:
    """``np.save`` to ``<path>.tmp`` then rename: a crash never leaves a truncated shard."""
    with atomic.target(path, fsync=True) as tmp:
        np.save(tmp, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)


class Store:
    """A read-only view of a complete store; shards are memory-mapped lazily (never loaded whole)."""

    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = path
        self.index = index
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.shards: list[dict[str, Any]] = index["shards"]
        self.records: list[dict[str, Any]] = index["records"]
        self.labels: np.ndarray = np.asarray([r["label"] for r in self.records], dtype=np.int64)
        self._shard_of = np.asarray([r["shard"] for r in self.records], dtype=np.int64)
        self._offset_of = np.asarray([r["offset"] for r in self.records], dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={len(self)}, shape={self.shape})"

    @property
    def channels(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1

    @property
    def name(self) -> str:
        return str(self.index.get("manifest", ""))

    @property
    def split(self) -> str:
        return str(self.index.get("split", ""))

    def shard(self, i: int) -> np.ndarray:
        """Memory-map shard ``i`` (cached); never unpickles."""
        m = self._maps.get(i)
        if m is None:
            p = self.path / self.shards[i]["file"]
            try:
                m = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ReproError(f"{p}: cannot open shard ({e})") from None
            if m.dtype != np.uint8 or tuple(m.shape[1:]) != self.shape or m.shape[0] != self.shards[i]["count"]:
                raise ReproError(f"{p}: shard has shape {m.shape} {m.dtype}, index says "
                                 f"({self.shards[i]['count']}, {', '.join(map(str, self.shape))}) uint8")
            self._maps[i] = m
        return m

    def shard_indices(self, i: int) -> np.ndarray:
        """Global image indices stored in shard ``i`` (data-parallel replicas split by shard)."""
        return np.nonzero(self._shard_of == i)[0]

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 array (len(indices), *shape) for any indices, in the order given."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx),) + self.shape, dtype=np.uint8)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        sh = self._shard_of[idx]
        off = self._offset_of[idx]
        for s in np.unique(sh):
            sel = np.nonzero(sh == s)[0]
            out[sel] = self.shard(int(s))[off[sel]]
        return out

    def image(self, i: int) -> np.ndarray:
        return self.images([i])[0]

    def verify(self) -> list[str]:
        """Re-hash every image against the index; returns one line per problem (empty = fine)."""
        problems = []
        for s in range(len(self.shards)):
            try:
                arr = self.shard(s)
            except ReproError as e:
                problems.append(str(e.message))
                continue
            for g in self.shard_indices(s):
                r = self.records[g]
                if pixel_sha256(arr[r["offset"]]) != r["sha256"]:
                    problems.append(f"{self.path / self.shards[s]['file']}: image {r['offset']} "
                                    f"({r['source']}) does not match its sha256 in {INDEX}")
        return problems


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def open_store(path: str | os.PathLike) -> Store:
    """Open a complete store; a missing or malformed one is a one-line ``ReproError``."""
    p = Path(path)
    ip = p / INDEX
    if not ip.is_file():
        raise ReproError(f"{p}: not a prepared store (no {INDEX}); run `repro data prepare NAME` first")
    try:
        index = json.loads(ip.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReproError(f"{ip}: unreadable store index ({e.__class__.__name__}: {e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ReproError(f"{ip}: not a repro store index (format field missing or wrong)")
    if index.get("version") != VERSION:
        raise ReproError(f"{ip}: store format version {index.get('version')!r}, this repro reads {VERSION}")
    for k in ("shape", "shards", "records", "count"):
        if k not in index:
            raise ReproError(f"{ip}: store index lacks field '{k}'")
    if index["count"] != len(index["records"]):
        raise ReproError(f"{ip}: count {index['count']} != {len(index['records'])} records")
    return Store(p, index)


@dataclass
class ShardResult:
    """What one finished shard holds: its pixels' records (without shard/offset yet)."""

    count: int
    records: list[dict[str, Any]]


class StoreWriter:
    """Builds a store in ``<final>.partial/`` and renames it to ``<final>`` when complete.

    Resumable: ``plan`` (a JSON-able description of the inputs and parameters) is saved in the
    partial directory; a rerun with the same plan reuses every shard that has both its ``.npy`` and
    its sidecar ``.json``; with a different plan the partial directory is discarded.
    """

    def __init__(self, final: str | os.PathLike, plan: dict[str, Any], resume: bool = True):
        self.final = Path(final)
        self.tmp = self.final.with_name(self.final.name + ".partial")
        self.plan = plan
        self.tmp.mkdir(parents=True, exist_ok=True)
        plan_path = self.tmp / "plan.json"
        old = None
        if plan_path.is_file():
            try:
                old = json.loads(plan_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
        if not resume or old != json.loads(json.dumps(plan)):
            for f in self.tmp.iterdir():
                if f.is_file():
                    f.unlink()
            write_json_atomic(plan_path, plan)

    def done(self, i: int) -> ShardResult | None:
        """The sidecar of shard ``i`` if that shard is already complete (resume), else None."""
        npy, side = self.tmp / shard_name(i), self.tmp / (shard_name(i) + ".json")
        if npy.is_file() and side.is_file():
            try:
                recs = json.loads(side.read_text())
                return ShardResult(count=len(recs), records=recs)
            except (OSError, json.JSONDecodeError):
                return None
        return None

    def write_shard(self, i: int, images: np.ndarray, records: list[dict[str, Any]]) -> ShardResult:
        """Write shard ``i`` (pixels first, then its sidecar: the sidecar marks it complete)."""
        assert len(images) == len(records)
        for img, r in zip(images, records):
            r["sha256"] = pixel_sha256(img)
        save_shard(self.tmp / shard_name(i), images)
        write_json_atomic(self.tmp / (shard_name(i) + ".json"), records)
        return ShardResult(count=len(records), records=records)

    def finish(self, shape: Sequence[int], results: Iterable[ShardResult], manifest: str, split: str,
               params: dict[str, Any], info: dict[str, Any] | None = None) -> Path:
        """Write ``index.json`` and rename the partial directory into place (replacing an old store)."""
        shards, records = [], []
        for i, res in enumerate(results):
            shards.append({"file": shard_name(i), "count": res.count})
            for off, r in enumerate(res.records):
                records.append({"shard": i, "offset": off, **{k: v for k, v in r.items() if k not in ("shard", "offset")}})
        # drop empty shards from the listing but keep numbering stable: renumber files
        keep = [i for i, s in enumerate(shards) if s["count"] > 0]
        remap = {old: new for new, old in enumerate(keep)}
        for old in range(len(shards)):
            src = self.tmp / shard_name(old)
            if old in remap and remap[old] != old:
                os.replace(src, self.tmp / shard_name(remap[old]))
            elif old not in remap and src.exists():
                src.unlink()
        shards = [{"file": shard_name(remap[i]), "count": shards[i]["count"]} for i in keep]
        for r in records:
            r["shard"] = remap[r["shard"]]
        for f in self.tmp.glob("*.json"):
            f.unlink()
        index = {"format": FORMAT, "version": VERSION, "manifest": manifest, "split": split,
                 "shape": list(shape), "dtype": "uint8", "count": len(records), "shards": shards,
                 "records": records, "params": params, "info": info or {}}
        write_json_atomic(self.tmp / INDEX, index)
        if self.final.exists():
            old = self.final.with_name(self.final.name + ".old")
            _rmtree(old)
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            _rmtree(old)
        else:
            os.replace(self.tmp, self.final)
        return self.final


def _rmtree(p: Path) -> None:
    import shutil

    if p.exists():
        shutil.rmtree(p)


def write_store(path: str | os.PathLike, images: np.ndarray, records: list[dict[str, Any]], manifest: str,
                split: str, params: dict[str, Any], shard_size: int = 4096,
                info: dict[str, Any] | None = None) -> Path:
    """Write an in-memory array as a complete store (used by generators and filters of small sets)."""
    images = np.asarray(images, dtype=np.uint8)
    w = StoreWriter(path, {"manifest": manifest, "split": split, "params": params, "n": len(images)},
                    resume=False)
    results = []
    for i, s in enumerate(range(0, max(len(images), 1), shard_size)):
        chunk = images[s:s + shard_size]
        if len(chunk) == 0 and s > 0:
            break
        results.append(w.write_shard(i, chunk, [dict(r) for r in records[s:s + shard_size]]))
    return w.finish(images.shape[1:], results, manifest, split, params, info)
