"""Sharded checkpoints: each rank writes its tiles, rank 0 one manifest; any rank count reads them.

Layout of ``DIR/step-00000300/``::

    manifest.json     format, config, step, extra state, and per file the tile (y0, y1, x0, x1)
                      of every tensor it holds (tensors are tiled over their first two axes,
                      the output locations)
    rank-00000.npz    one rank's tiles: weights and optimiser state, keyed by tensor name

A checkpoint is written under a temporary name and renamed when every rank has finished, so a
crash never leaves a half-written one; ``DIR/latest.json`` names the newest complete one.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from repro import atomic
from repro.engine.backend import to_numpy
from repro.engine.comm import World
from repro.engine.partition import box_intersect
from repro.errors import ReproError
from repro.model.config import NetworkConfig, from_saved

FORMAT = 1
_DTYPES = ("float32", "float64", "float16", "int64", "int32")


def _shape_signature(cfg: NetworkConfig) -> dict[str, Any]:
    """What must agree for a checkpoint to load into a network: its shapes, not its training knobs."""
    return {"input_size": list(cfg.input_size), "channels": cfg.channels,
            "weights": [list(cfg.weight_shape(i)) for i in range(len(cfg.stages))],
            "stages": [dict(vars(s)) for s in cfg.stages]}


def save(directory: str | os.PathLike, step: int, cfg: NetworkConfig, tensors: dict[str, Any],
         tiles: dict[str, tuple[int, int, int, int]], w: World, extra: dict[str, Any] | None = None,
         keep: int | None = None) -> Path:
    """Collective: every rank passes its tiles; returns the final checkpoint folder.

    ``keep``: how many checkpoints to keep in ``directory`` (the newest; None keeps all).
    """
    root = Path(directory)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.partial"
    if w.is_root:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    w.barrier()
    fname = f"rank-{w.rank:05d}.npz"
    host = {name: to_numpy(t) for name, t in tensors.items()}
    with open(tmp / fname, "wb") as fh:
        np.savez(fh, **host)
    entries = w.comm.gather({"file": fname, "tiles": {n: list(tiles[n]) for n in tensors}}, root=0)
    if w.is_root:
        full_shapes = {}
        for n, t in host.items():
            full_shapes[n] = None  # filled below from the tiles of all ranks
        for n in host:
            ys = [e["tiles"][n] for e in entries]
            full_shapes[n] = [max(b[1] for b in ys), max(b[3] for b in ys)] + list(host[n].shape[2:])
        manifest = {"format": FORMAT, "step": step, "ranks": w.size, "config": cfg.to_dict(),
                    "signature": _shape_signature(cfg), "shapes": full_shapes,
                    "dtypes": {n: str(t.dtype) for n, t in host.items()}, "files": entries, "extra": extra or {}}
        atomic.write_json(tmp / "manifest.json", manifest)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic.write_json(root / "latest.json", {"step": step, "path": final.name})
        if keep is not None:
            old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
            for p in old[:max(0, len(old) - (keep - 1))]:
                shutil.rmtree(p, ignore_errors=True)
    w.barrier()
    return final


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder, a folder of checkpoints (its latest), or a run folder (its checkpoints' latest)."""
    p = Path(path)
    if (p / "manifest.json").exists():
        return p
    for cand in (p, p / "checkpoints"):
        latest = cand / "latest.json"
        if latest.exists():
            try:
                name = json.loads(latest.read_text(encoding="utf-8"))["path"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ReproError(f"{latest}: unreadable ({exc.__class__.__name__}: {exc})") from None
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                raise ReproError(f"{latest}: 'path' must name a checkpoint folder beside it, got {name!r}")
            if not (cand / name / "manifest.json").exists():
                raise ReproError(f"{cand / name}: checkpoint named by {latest} is missing its manifest.json")
            return cand / name
    if not p.exists():
        raise ReproError(f"{p}: no such checkpoint or run folder")
    raise ReproError(f"{p}: not a checkpoint (no manifest.json, no latest.json)")


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    ckpt = resolve(path)
    mpath = ckpt / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReproError(f"{mpath}: unreadable or truncated manifest ({exc})") from None
    _check_manifest(manifest, mpath)
    return ckpt, manifest


def _check_manifest(m: Any, mpath: Path) -> None:
    """Every field a reader uses has the type ``save`` writes, so a hand-edited or foreign manifest is
    one line naming the field rather than a traceback deep in the loader."""
    def bad(field: str, want: str) -> ReproError:
        got = m.get(field) if isinstance(m, dict) else m
        return ReproError(f"{mpath}: manifest field {field!r} must be {want}, got {json.dumps(got)[:60]}")

    if not isinstance(m, dict):
        raise bad("(top level)", "an object")
    for key in ("format", "step", "config", "signature", "shapes", "files"):
        if key not in m:
            raise ReproError(f"{mpath}: manifest has no {key!r} field")
    if m["format"] != FORMAT:
        raise ReproError(f"{mpath}: checkpoint format {m['format']} is not {FORMAT}")
    if not isinstance(m["step"], int) or isinstance(m["step"], bool) or m["step"] < 0:
        raise bad("step", "an integer >= 0")
    for key in ("config", "signature"):
        if not isinstance(m[key], dict):
            raise bad(key, "an object")
    shapes = m["shapes"]
    if not (isinstance(shapes, dict) and all(isinstance(v, list) and len(v) >= 2 and all(
            isinstance(d, int) and d >= 0 for d in v) for v in shapes.values())):
        raise bad("shapes", "an object of tensor name -> list of sizes")
    dtypes = m.get("dtypes", {})
    if not (isinstance(dtypes, dict) and set(dtypes) >= set(shapes)
            and all(isinstance(v, str) and v in _DTYPES for v in dtypes.values())):
        raise bad("dtypes", "an object of tensor name -> dtype name, for every tensor")
    files = m["files"]
    if not (isinstance(files, list) and files and all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and "/" not in e["file"]
            and isinstance(e.get("tiles"), dict) and all(
                isinstance(b, list) and len(b) == 4 and all(isinstance(x, int) for x in b)
                for b in e["tiles"].values()) for e in files)):
        raise bad("files", "a list of {file: NAME, tiles: {tensor: [y0, y1, x0, x1]}}")


def config_of(path: str | os.PathLike) -> NetworkConfig:
    ckpt, manifest = read_manifest(path)
    return from_saved(manifest["config"], str(ckpt / "manifest.json"))


def check_compatible(path: str | os.PathLike, cfg: NetworkConfig) -> None:
    ckpt, manifest = read_manifest(path)
    if manifest["signature"] != _shape_signature(cfg):
        raise ReproError(f"{ckpt / 'manifest.json'}: checkpoint of config {manifest['config'].get('name')!r} "
                         f"does not match config {cfg.name!r} (different layer shapes)")


def load_tiles(path: str | os.PathLike, wanted: dict[str, tuple[int, int, int, int]]
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Assemble the requested tiles (global boxes over each tensor's first two axes) from any sharding."""
    ckpt, manifest = read_manifest(path)
    out: dict[str, np.ndarray] = {}
    for name, box in wanted.items():
        if name not in manifest["shapes"]:
            raise ReproError(f"{ckpt / 'manifest.json'}: checkpoint has no tensor {name!r}")
        rest = manifest["shapes"][name][2:]
        out[name] = np.zeros((box[1] - box[0], box[3] - box[2], *rest), dtype=manifest["dtypes"][name])
    for entry in manifest["files"]:
        needed = {}
        for name, box in wanted.items():
            tb = entry["tiles"].get(name)
            inter = box_intersect(tuple(tb), box) if tb is not None else None
            if inter is not None:
                needed[name] = (tuple(tb), inter)
        if not needed:
            continue
        fpath = ckpt / entry["file"]
        try:
            with np.load(fpath, allow_pickle=False) as z:
                for name, (tb, inter) in needed.items():
                    arr = z[name]
                    want_shape = (tb[1] - tb[0], tb[3] - tb[2], *out[name].shape[2:])
                    if arr.shape != want_shape:
                        raise ReproError(f"{fpath}: tensor {name} has shape {arr.shape}, manifest says {want_shape}")
                    src = arr[inter[0] - tb[0]:inter[1] - tb[0], inter[2] - tb[2]:inter[3] - tb[2]]
                    box = wanted[name]
                    out[name][inter[0] - box[0]:inter[1] - box[0], inter[2] - box[2]:inter[3] - box[2]] = src
        except ReproError:
            raise
        except FileNotFoundError:
            raise ReproError(f"{fpath}: checkpoint file is missing") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise ReproError(f"{fpath}: truncated or corrupt checkpoint file ({exc})") from None
    return out, manifest
