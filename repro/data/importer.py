"""``repro data import``: a labeled store from the folder layout everyone uses (one sub-folder per class).

    photos/faces/*.jpg, photos/cars/*.png, photos/other/...   ->   repro data import photos --name mine
        --size 32 32 --positive faces                          ->   data/prepared/mine/test (faces 1, the rest 0)

Without ``--positive`` every class gets its index in sorted order (0, 1, 2, ...) and the store's
index lists the classes: a multi-class store. ``repro evaluate`` needs a positive class and says so.
Images are decoded, cropped (centre square by default) and resized as ``repro data prepare`` does,
written shard by shard and renamed into place only when complete; on any error nothing is left.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from repro.data.locate import norm_shape, shape_of, store_shape, tag
from repro.data.manifest import Manifest, PrepareSpec
from repro.data.prepare import IMAGE_EXTS, Item, prepare_split, prepared_dir
from repro.data.store import is_complete
from repro.errors import ReproError


def classes_of(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (any depth below the class folder), sorted; hidden entries ignored."""
    if not folder.is_dir():
        raise ReproError(f"{folder}: no such folder")
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in f.relative_to(d).parts))
        if files:
            out[d.name] = files
    return out


def _folder(root: Path, name: str, split: str, shape: tuple[int, ...]) -> Path:
    """``prepared/NAME/SPLIT``, unless a store of another size is there: then ``NAME@HxW/SPLIT``
    beside it (an import at a second size keeps the first, as ``prepare`` does)."""
    plain = prepared_dir(root, name) / split
    have = store_shape(plain) if is_complete(plain) else None
    return plain if have is None or have == norm_shape(shape) else prepared_dir(root, f"{name}@{tag(shape)}") / split


def import_folder(folder: Path, name: str, root: Path, size: tuple[int, int], positive: str | None = None,
                  grey: bool = True, crop: str = "center", split: str = "test", skip_bad: bool = False,
                  workers: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Write ``<root>/prepared/<name>/<split>`` from ``folder``; returns a summary."""
    if not name or "/" in name or "@" in name or name.startswith("."):
        raise ReproError(f"--name: a plain data set name, got {name!r}")
    if min(size) <= 0:
        raise ReproError(f"--size: must be two positive integers, got {size[0]} {size[1]}")
    classes = classes_of(folder)
    if not classes:
        raise ReproError(f"{folder}: no image found (expected one sub-folder per class holding "
                         f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTS))} files)")
    if len(classes) < 2:
        raise ReproError(f"{folder}: only one class ({next(iter(classes))}); a labeled set needs at least two "
                         "sub-folders")
    names = sorted(classes)
    if positive is not None and positive not in classes:
        raise ReproError(f"--positive {positive!r}: not a class of {folder} (classes: {', '.join(names)})")
    label = {c: (int(c == positive) if positive is not None else k) for k, c in enumerate(names)}
    items = [Item(str(f), label[c]) for c in names for f in classes[c]]
    m = Manifest(name=name, role="test", kind="local", description=f"imported from {folder}", licence="",
                 citation="", path=None, concept=positive or "")
    spec = PrepareSpec(size=(size[0], size[1]), grey=grey, crop=crop, shard_size=4096, seed=0)
    out = _folder(root, name, split, shape_of(size, grey))
    info = {"imported_from": str(folder.resolve()), "classes": names, "labels": label, "positive": positive}
    try:
        _, s = prepare_split(m, items, out, spec, split, skip_bad=skip_bad, workers=workers, console=console,
                             base=folder, extra_info=info)
    except BaseException:
        shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
        raise
    s.update({"store": str(out), "classes": {c: len(classes[c]) for c in names}, "labels": label})
    return s
