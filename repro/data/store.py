"""The packed dataset store: fixed-size uint8 images in memory-mappable shards plus a small index.

Long because reading, verifying and resumable writing of one on-disk format belong together.

Why this shape: training streams millions of small images; one ``.npy`` per few thousand images
opens with ``np.load(path, mmap_mode="r")`` (no decoding, no pickle, the OS page cache does the
rest). At the paper's scale (10 million frames) a per-image JSON index would be ~1.5 GB parsed by
every MPI rank at start-up, so opening a store reads only a small ``index.json`` and memory-maps
one ``labels.npy``; per-image provenance sits in one JSON-lines sidecar per shard, read only when
``Store.records`` (or ``verify``) asks for it.

Format (version 2), a directory::

    index.json                    written LAST: its presence means the store is complete
    labels.npy                    int64 (N,), every image's label, in store order
    shard-00000.npy               np.save'd uint8 array, shape (n, H, W) grey or (n, H, W, C) colour
    shard-00000.records.jsonl     one JSON object per line: the records of that shard's images
    shard-00001.npy ...           (n may differ per shard, e.g. when --skip-bad dropped images)

``index.json``::

    {"format": "repro-store", "version": 2,
     "manifest": "mini", "split": "train",
     "shape": [H, W] or [H, W, C], "dtype": "uint8", "count": N,
     "labels": "labels.npy",
     "shards": [{"file": "shard-00000.npy", "count": n, "records": "shard-00000.records.jsonl"}, ...],
     "params": {...prepare parameters...},
     "info": {...optional: e.g. the face filter's summary, skipped counts...}}

Images are numbered in shard order: shard 0's images are 0..n0-1, shard 1's follow, and so on, so the
shard and offset of image ``g`` follow from the shard counts alone (no per-image table in memory).
A record is ``{"shard": 0, "offset": 0, "label": -1, "source": "...", "sha256": "..."}``: ``label``
is an int (-1 unlabeled, 0/1 negative/positive of a test concept; ``labels.npy`` holds the same
values and is what ``Store.labels`` returns), ``sha256`` the hash of the stored (prepared) pixels, so
duplicates and train/test leaks can be checked. A record may carry extra keys (e.g. ``"face": true``
in ``mini`` training frames); readers must ignore unknown keys.

Version 1 (still read): the same shards, no ``labels.npy`` or sidecars, and every record inline in
``index.json`` under ``"records"`` (the whole list is parsed at open). Re-run
``repro data prepare NAME --force`` to rewrite such a store as version 2.

Writing: each shard's pixels, labels and records go to temp names then are renamed as soon as the
shard is finished (memory holds one shard, whatever the store's size); at the end ``labels.npy`` is
assembled from the per-shard labels, the sidecars renamed into place and ``index.json`` written last
(also via a temp name). A writer pointed at a
directory that already holds complete shards with the same parameters reuses them: that is what
makes ``prepare`` resumable.
"""
from __future__ import annotations

import hashlib
import json
import operator
import os
import shutil
from collections import OrderedDict
from collections.abc import Sequence as _SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from repro import atomic
from repro.errors import ReproError

FORMAT = "repro-store"
VERSION = 2
READS = (1, 2)
INDEX = "index.json"
LABELS = "labels.npy"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def records_name(i: int) -> str:
    return f"shard-{i:05d}.records.jsonl"


def pixel_sha256(img: np.ndarray) -> str:
    """Hash of prepared pixels (shape included), so equal images hash equal across stores."""
    h = hashlib.sha256(str(img.shape).encode())
    h.update(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Compact JSON, written under a temp name, synced, renamed: a reader never sees half a file."""
    atomic.write_json(path, obj, compact=True, fsync=True)


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> None:
    """One compact JSON object per line, same temp + fsync + rename discipline."""
    text = "".join(json.dumps(r, separators=(",", ":"), default=atomic._jsonable) + "\n" for r in rows)
    atomic.write_text(path, text, fsync=True)


def save_shard(path: Path, images: np.ndarray) -> None:
    """``np.save`` to a temp name then rename: a crash never leaves a truncated shard."""
    save_npy(path, np.ascontiguousarray(images, dtype=np.uint8))


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic.target(path, fsync=True) as tmp:
        np.save(tmp, arr, allow_pickle=False)


class Records(_SequenceABC):
    """The per-image records of a version-2 store, loaded one shard sidecar at a time on access.

    Behaves like a read-only list of dicts (``len``, indexing, slicing, iteration); a few recently
    used shards are cached, so iterating over all records holds only one shard's worth at a time.
    """

    def __init__(self, store: "Store", cache_shards: int = 4):
        self._store = store
        self._cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._cache_shards = max(1, cache_shards)

    def __len__(self) -> int:
        return len(self._store)

    def shard(self, s: int) -> list[dict[str, Any]]:
        """The records of shard ``s`` (read from its sidecar, cached)."""
        got = self._cache.get(s)
        if got is not None:
            self._cache.move_to_end(s)
            return got
        got = self._store._read_sidecar(s)
        self._cache[s] = got
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return got

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index out of range 0..{n - 1}")
        s, off = self._store._locate(np.asarray([i]))
        return self.shard(int(s[0]))[int(off[0])]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for s in range(len(self._store.shards)):
            yield from self.shard(s)

    def __repr__(self) -> str:
        return f"Records({str(self._store.path)!r}, n={len(self)}, lazy)"


class Store:
    """A read-only view of a complete store; shards are memory-mapped lazily (never loaded whole).

    Opening reads ``index.json`` (small in version 2) and memory-maps ``labels.npy``; per-image
    records are read per shard, only when ``records`` is used.
    """

    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = path
        self.index = index
        self.version: int = int(index.get("version", VERSION))
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.shards: list[dict[str, Any]] = index["shards"]
        self._count = int(index["count"])
        counts = np.asarray([int(s["count"]) for s in self.shards], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self._starts = self._ends - counts
        self._maps: dict[int, np.ndarray] = {}
        self._shard_of: np.ndarray | None = None
        self._offset_of: np.ndarray | None = None
        if self.version == 1:
            self.records: Sequence[dict[str, Any]] = index["records"]
            self.labels: np.ndarray = np.asarray([r["label"] for r in self.records], dtype=np.int64)
            self._shard_of = np.asarray([r["shard"] for r in self.records], dtype=np.int64)
            self._offset_of = np.asarray([r["offset"] for r in self.records], dtype=np.int64)
        else:
            self.labels = _load_labels(path / index.get("labels", LABELS), self._count)
            self.records = Records(self)

    def __len__(self) -> int:
        return self._count

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

    def fingerprint(self) -> str:
        """An identity of the store's content, cheap at any size: its index (without build timings)
        and the pixel hash of each shard's first image. Runs record it; caches built from a store
        (a baseline trained on it) are reused only while it matches."""
        h = hashlib.sha256()
        ident = {k: v for k, v in self.index.items() if k not in ("info", "records")}
        h.update(json.dumps(ident, sort_keys=True, default=str).encode())
        for s, meta in enumerate(self.shards):
            if self.version == 1 or int(meta["count"]) == 0:
                first = self.records[int(self._starts[s])]["sha256"] if int(meta["count"]) else ""
            else:
                p = self.path / meta.get("records", records_name(s))
                try:
                    with open(p, encoding="utf-8") as fh:
                        first = json.loads(fh.readline()).get("sha256", "")
                except (OSError, ValueError) as e:
                    raise ReproError(f"{p}: unreadable record sidecar ({e.__class__.__name__})") from None
            h.update(str(first).encode())
        return h.hexdigest()

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

    def _locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) of each global index (already range-checked)."""
        if self._shard_of is not None:
            return self._shard_of[idx], self._offset_of[idx]  # type: ignore[index]
        sh = np.searchsorted(self._ends, idx, side="right")
        return sh, idx - self._starts[sh]

    def shard_indices(self, i: int) -> np.ndarray:
        """Global image indices stored in shard ``i`` (data-parallel replicas split by shard)."""
        if self._shard_of is not None:
            return np.nonzero(self._shard_of == i)[0]
        return np.arange(self._starts[i], self._ends[i], dtype=np.int64)

    def shard_records(self, i: int) -> list[dict[str, Any]]:
        """The records of shard ``i``, in offset order (reads only that shard's sidecar)."""
        if isinstance(self.records, Records):
            return self.records.shard(i)
        return [self.records[int(g)] for g in self.shard_indices(i)]

    def _read_sidecar(self, s: int) -> list[dict[str, Any]]:
        meta = self.shards[s]
        p = self.path / meta.get("records", records_name(s))
        try:
            with open(p, encoding="utf-8") as fh:
                recs = [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            raise ReproError(f"{p}: record sidecar missing; re-run `repro data prepare NAME --force`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReproError(f"{p}: unreadable record sidecar ({e.__class__.__name__}: {e})") from None
        if len(recs) != int(meta["count"]):
            raise ReproError(f"{p}: {len(recs)} records, index says shard {s} has {meta['count']}")
        return recs

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 array (len(indices), *shape) for any indices, in the order given."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx),) + self.shape, dtype=np.uint8)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        sh, off = self._locate(idx)
        for s in np.unique(sh):
            sel = np.nonzero(sh == s)[0]
            out[sel] = self.shard(int(s))[off[sel]]
        return out

    def image(self, i: int) -> np.ndarray:
        return self.images([i])[0]

    def verify(self) -> list[str]:
        """Re-hash every image against its record (and labels against ``labels.npy``);
        returns one line per problem (empty = fine)."""
        problems = []
        for s in range(len(self.shards)):
            try:
                arr = self.shard(s)
                recs = self.shard_records(s)
            except ReproError as e:
                problems.append(str(e.message))
                continue
            side = self.shards[s].get("records", INDEX) if self.version >= 2 else INDEX
            gidx = self.shard_indices(s)
            for g, r in zip(gidx, recs):
                if pixel_sha256(arr[r["offset"]]) != r["sha256"]:
                    problems.append(f"{self.path / self.shards[s]['file']}: image {r['offset']} "
                                    f"({r['source']}) does not match its sha256 in {side}")
                if int(r["label"]) != int(self.labels[g]):
                    problems.append(f"{self.path / side}: image {r['offset']} ({r['source']}) has label "
                                    f"{r['label']}, {LABELS} says {int(self.labels[g])}")
        return problems


def _load_labels(p: Path, count: int) -> np.ndarray:
    """``labels.npy`` memory-mapped (read-only int64, shape (count,))."""
    try:
        if count == 0:
            arr = np.load(p, allow_pickle=False)
        else:
            arr = np.asarray(np.load(p, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ReproError(f"{p}: cannot open labels ({e}); re-run `repro data prepare NAME --force`") from None
    if arr.dtype != np.int64 or arr.shape != (count,):
        raise ReproError(f"{p}: labels have shape {arr.shape} {arr.dtype}, index says ({count},) int64")
    return arr


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
    version = index.get("version")
    if version not in READS:
        raise ReproError(f"{ip}: store format version {version!r}, this repro reads "
                         f"{', '.join(map(str, READS))}; re-run `repro data prepare NAME --force`")
    for k in ("shape", "shards", "count") + (("records",) if version == 1 else ()):
        if k not in index:
            raise ReproError(f"{ip}: store index lacks field '{k}'")
    _check_index_types(index, ip)
    if version == 1 and index["count"] != len(index["records"]):
        raise ReproError(f"{ip}: count {index['count']} != {len(index['records'])} records")
    total = sum(s["count"] for s in index["shards"])
    if total != index["count"]:
        raise ReproError(f"{ip}: count {index['count']} != {total}, the sum of its shard counts")
    return Store(p, index)


def _check_index_types(index: dict[str, Any], ip: Path) -> None:
    """The fields a reader uses have the types the writer gives them (one line naming the field, not
    a traceback in the loader, for a hand-edited or foreign index)."""
    def is_int(v: Any, lo: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    def bad(field: str, want: str) -> ReproError:
        return ReproError(f"{ip}: store index field {field!r} must be {want}, got {json.dumps(index[field])[:60]}")

    shape = index["shape"]
    if not (isinstance(shape, list) and len(shape) in (2, 3) and all(is_int(d, 1) for d in shape)):
        raise bad("shape", "[height, width] or [height, width, channels] positive integers")
    if not is_int(index["count"], 0):
        raise bad("count", "an integer >= 0")
    def is_name(v: Any) -> bool:  # a file beside the index, nothing outside the store
        return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v

    shards = index["shards"]
    if not (isinstance(shards, list) and all(
            isinstance(e, dict) and is_name(e.get("file")) and is_int(e.get("count"), 0)
            and ("records" not in e or is_name(e["records"])) for e in shards)):
        raise bad("shards", "a list of {file: NAME, count: N, records: NAME}")
    if "records" in index and not (isinstance(index["records"], list)
                                   and all(isinstance(r, dict) for r in index["records"])):
        raise bad("records", "a list of objects")


@dataclass
class ShardResult:
    """What one finished shard holds: only its image count (its records and labels are on disk, in
    the work-in-progress files of ``StoreWriter``, never kept in memory)."""

    count: int


def wip_records_name(i: int) -> str:
    """Work-in-progress sidecar of shard ``i`` in ``<store>.partial/`` (its presence marks the shard done)."""
    return f"shard-{i:05d}.wip.jsonl"


def wip_labels_name(i: int) -> str:
    return f"shard-{i:05d}.labels.npy"


def _npy_rows(p: Path) -> int | None:
    """Leading dimension of a ``.npy`` file from its header (no data read), None if unreadable."""
    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(fh)
        return int(shape[0]) if shape else None
    except (OSError, ValueError):
        return None


class StoreWriter:
    """Builds a store in ``<final>.partial/`` and renames it to ``<final>`` when complete.

    Memory stays bounded by one shard: ``write_shard`` puts the shard's pixels (``shard-K.npy``), its
    labels (``shard-K.labels.npy``) and, last, its records (``shard-K.wip.jsonl``, already carrying
    ``shard``/``offset``) on disk and returns only the count; ``finish`` assembles ``labels.npy``
    from the per-shard label files through a memory map and renames the sidecars into place
    (re-writing one line at a time only where empty shards were dropped), never holding records.

    Resumable: ``plan`` (a JSON-able description of the inputs and parameters) is saved in the
    partial directory; a rerun with the same plan reuses every shard whose three files are present
    and agree on the count; with a different plan the partial directory is discarded. A ``finish``
    that must renumber shards first removes ``plan.json``, so if it is interrupted the next run
    starts afresh instead of reusing half-renamed files.
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
        """``ShardResult`` of shard ``i`` if it is already complete (resume), else None.

        Reads only the two ``.npy`` headers, not the records."""
        side = self.tmp / wip_records_name(i)
        if not side.is_file():
            side = self.tmp / records_name(i)  # renamed by a finish interrupted later (plan kept: no renumbering)
            if not side.is_file():
                return None
        n = _npy_rows(self.tmp / shard_name(i))
        if n is None or n != _npy_rows(self.tmp / wip_labels_name(i)):
            return None
        return ShardResult(count=n)

    def write_shard(self, i: int, images: np.ndarray, records: list[dict[str, Any]]) -> ShardResult:
        """Write shard ``i``: pixels, labels, then its records (the sidecar marks it complete).

        ``records`` get ``sha256`` set; nothing of them is kept once this returns."""
        assert len(images) == len(records)
        rows = []
        for off, (img, r) in enumerate(zip(images, records)):
            r["sha256"] = pixel_sha256(img)
            rows.append({"shard": i, "offset": off, **{k: v for k, v in r.items() if k not in ("shard", "offset")}})
        save_shard(self.tmp / shard_name(i), images)
        save_npy(self.tmp / wip_labels_name(i), np.asarray([int(r["label"]) for r in rows], dtype=np.int64))
        write_jsonl_atomic(self.tmp / wip_records_name(i), rows)
        return ShardResult(count=len(rows))

    def finish(self, shape: Sequence[int], results: Iterable[ShardResult | int], manifest: str, split: str,
               params: dict[str, Any], info: dict[str, Any] | None = None) -> Path:
        """Write ``labels.npy``, move the record sidecars into place and write (last) ``index.json``,
        then rename the partial directory into place (replacing an old store). Empty shards are
        dropped and the rest renumbered, so shard files are contiguous and images are numbered in
        shard order. Holds one shard's labels at a time and no records."""
        counts = [int(r.count if isinstance(r, ShardResult) else r) for r in results]
        keep = [i for i, c in enumerate(counts) if c > 0]
        remap = {old: new for new, old in enumerate(keep)}
        for old in keep:  # every kept shard must be on disk, its files agreeing with its count
            n = self.done(old)
            if n is None or n.count != counts[old]:
                raise ReproError(f"{self.tmp}: shard {old} should hold {counts[old]} images but its files are "
                                 f"missing or disagree; re-run with --force")
        if any(remap[old] != old for old in keep):
            (self.tmp / "plan.json").unlink(missing_ok=True)  # an interrupted renumbering is not resumable
        total = sum(counts)
        with atomic.target(self.tmp / LABELS, fsync=True) as tmp:
            if total == 0:
                np.save(tmp, np.zeros(0, np.int64), allow_pickle=False)
            else:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(total,))
                pos = 0
                for old in keep:
                    lab = np.load(self.tmp / wip_labels_name(old), allow_pickle=False)
                    out[pos:pos + len(lab)] = lab
                    pos += len(lab)
                out.flush()
                del out
        shards = []
        for old in range(len(counts)):
            src = self.tmp / shard_name(old)
            if old in remap:
                new = remap[old]
                if new != old:
                    os.replace(src, self.tmp / shard_name(new))
                side = self.tmp / wip_records_name(old)
                if not side.is_file():
                    side = self.tmp / records_name(old)
                if new == old:
                    if side.name != records_name(new):
                        os.replace(side, self.tmp / records_name(new))
                else:
                    _renumber_sidecar(side, self.tmp / records_name(new), new)
                    side.unlink()
                shards.append({"file": shard_name(new), "count": counts[old], "records": records_name(new)})
            else:
                for f in (src, self.tmp / wip_records_name(old), self.tmp / records_name(old)):
                    f.unlink(missing_ok=True)
        wanted = {s["records"] for s in shards}
        for f in self.tmp.glob("*.records.jsonl"):  # left by an interrupted earlier finish
            if f.name not in wanted:
                f.unlink()
        for pattern in ("*.json", "*.wip.jsonl", "*.labels.npy"):
            for f in self.tmp.glob(pattern):
                f.unlink()
        index = {"format": FORMAT, "version": VERSION, "manifest": manifest, "split": split,
                 "shape": list(shape), "dtype": "uint8", "count": total, "labels": LABELS,
                 "shards": shards, "params": params, "info": info or {}}
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


def _renumber_sidecar(src: Path, dst: Path, shard: int) -> None:
    """Copy a sidecar setting every record's ``shard`` (one line at a time; temp name + rename)."""
    with atomic.target(dst, fsync=True) as tmp, open(src, encoding="utf-8") as fin, \
            open(tmp, "w", encoding="utf-8") as fout:
        for line in fin:
            if line.strip():
                r = json.loads(line)
                r["shard"] = shard
                fout.write(json.dumps(r, separators=(",", ":"), default=atomic._jsonable) + "\n")


def _rmtree(p: Path) -> None:

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
