"""Where prepared stores live: one store per data set, split and image size, side by side.

Why: one data set is needed at several sizes (the paper's 200x200 frames, the default network's
32x32), and preparing it at one size must not replace the other. The manifest's own size and
colour keep the plain folder ``ROOT/prepared/NAME/<split>``, so stores and runs made before this
layout stay valid; any other size goes beside it in ``ROOT/prepared/NAME@HxW/<split>`` (grey) or
``NAME@HxWx3`` (colour). A reader that knows the shape it needs (a network config's input) picks
the store of that shape, and when there is none the error names the command that makes it.

``NAME@HxW`` is also accepted wherever a data set name is (``--data lfw@32x32``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from repro.data.fetch import raw_dir, recorded_source
from repro.data.manifest import Manifest, load
from repro.data.store import is_complete
from repro.errors import ReproError

_TAG = re.compile(r"^(?P<h>[0-9]+)x(?P<w>[0-9]+)(?:x(?P<c>[0-9]+))?$")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the shipped network configs


def shape_of(size: tuple[int, int], grey: bool) -> tuple[int, ...]:
    """A store's image shape: (H, W) grey, (H, W, 3) colour (as ``index.json`` writes it)."""
    return (int(size[0]), int(size[1])) if grey else (int(size[0]), int(size[1]), 3)


def norm_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W, 1) and (H, W) are the same grey shape."""
    return tuple(shape[:2]) if len(shape) == 2 or shape[2] == 1 else tuple(shape[:3])


def tag(shape: tuple[int, ...]) -> str:
    """``32x32`` for grey, ``32x32x3`` for colour."""
    s = norm_shape(shape)
    return "x".join(str(v) for v in s)


def split_name(name: str) -> tuple[str, tuple[int, ...] | None]:
    """``lfw@32x32`` -> ("lfw", (32, 32)); ``lfw`` -> ("lfw", None)."""
    base, at, t = name.partition("@")
    if not at:
        return name, None
    m = _TAG.match(t)
    if not m or not base:
        raise ReproError(f"{name!r}: a sized data set name is NAME@HxW or NAME@HxWx3, e.g. lfw@32x32")
    return base, norm_shape((int(m["h"]), int(m["w"])) + ((int(m["c"]),) if m["c"] else ()))


def manifest_of(name: str, root: str | os.PathLike | None = None) -> Manifest | None:
    """The manifest named ``name`` (its base name), or None (an imported store has none)."""
    try:
        return load(split_name(name)[0], root)
    except ReproError:
        return None


def default_shape(m: Manifest) -> tuple[int, ...]:
    return shape_of(m.prepare.size, m.prepare.grey)


def store_folder(root: str | os.PathLike, name: str, shape: tuple[int, ...],
                 default: tuple[int, ...] | None) -> Path:
    """``ROOT/prepared/NAME`` for the default shape (or when there is no default), else ``NAME@TAG``."""
    base = Path(root) / "prepared"
    if default is None or norm_shape(shape) == norm_shape(default):
        return base / name
    return base / f"{name}@{tag(shape)}"


def derived_name(store_name: str, suffix: str) -> str:
    """The data set name of a copy made from a store (``-noface``): the suffix goes on the base
    name and the size tag stays, so copies of one data set at two sizes sit side by side as their
    sources do (``frames@48x48`` -> ``frames-noface@48x48``)."""
    base, at, t = store_name.partition("@")
    return f"{base}{suffix}{at}{t}"


def copy_name(store_path: str | os.PathLike, fallback: str, suffix: str) -> str:
    """:func:`derived_name` of the data set a store belongs to (its folder under ``prepared/``), or
    of ``fallback`` for a store elsewhere."""
    p = Path(store_path)
    return derived_name(p.parent.name if p.parent.parent.name == "prepared" else fallback, suffix)


def store_shape(path: Path) -> tuple[int, ...] | None:
    """The image shape a complete store's index records (None if unreadable)."""
    try:
        idx = json.loads((path / "index.json").read_text(encoding="utf-8"))
        return norm_shape(tuple(int(v) for v in idx["shape"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def folders_of(root: str | os.PathLike, name: str) -> list[Path]:
    """``ROOT/prepared/NAME`` and every ``NAME@TAG`` beside it that exist, plain first."""
    base = Path(root) / "prepared"
    out = [base / name] if (base / name).is_dir() else []
    if base.is_dir():
        sized = [p for p in base.glob(f"{glob_escape(name)}@*") if p.is_dir() and _TAG.match(p.name.split("@", 1)[1])]
        out += sorted(sized, key=lambda p: split_name(p.name)[1] or ())  # by size, smallest first
    return out


def glob_escape(s: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", s)


def stores_of(root: str | os.PathLike, name: str, split: str) -> list[tuple[Path, tuple[int, ...]]]:
    """Every complete store of ``split`` of data set ``name``, at any size: (path, shape)."""
    out = []
    for f in folders_of(root, name):
        p = f / split
        if is_complete(p):
            s = store_shape(p)
            if s is not None:
                out.append((p, s))
    return out


def splits_of(root: str | os.PathLike, name: str) -> dict[str, list[tuple[Path, tuple[int, ...]]]]:
    """split -> its complete stores at every size (for ``repro data list``)."""
    out: dict[str, list[tuple[Path, tuple[int, ...]]]] = {}
    for f in folders_of(root, name):
        for p in sorted(q for q in f.iterdir() if is_complete(q)):
            s = store_shape(p)
            if s is not None:
                out.setdefault(p.name, []).append((p, s))
    return out


def resolve(name: str, split: str, root: str | os.PathLike, shape: tuple[int, ...] | None = None) -> Path:
    """Where the store ``name``/``split`` is (or would be) for images of ``shape``.

    Without a shape: the plain folder, or the one sized store when only one exists. With a shape:
    the store of that shape, wherever it sits (a store imported at that size sits in the plain
    folder), else the folder that ``prepare`` would write it to."""
    base, fixed = split_name(name)
    if fixed is not None:
        return Path(root) / "prepared" / name / split
    have = stores_of(root, base, split)
    plain = Path(root) / "prepared" / base / split
    if shape is None:
        if is_complete(plain) or len(have) != 1:
            return plain
        return have[0][0]
    want = norm_shape(shape)
    for p, s in have:
        if s == want:
            return p
    m = manifest_of(base, root)
    return store_folder(root, base, want, default_shape(m) if m is not None else (None if not have else have[0][1])) / split


def _root_opt(root: str | os.PathLike) -> str:
    return "" if Path(root) == Path("data") else f" --root {root}"


def fix_command(name: str, split: str, root: str | os.PathLike, shape: tuple[int, ...] | None = None,
                config: str | None = None) -> str:
    """The command that makes store ``name``/``split`` at ``shape`` (the manifest's size when None)."""
    base, fixed = split_name(name)
    shape = fixed if shape is None else shape
    m = manifest_of(base, root)
    if m is not None:
        ro, src = _root_opt(root), _source_step(m, root)
        if shape is None or norm_shape(shape) == default_shape(m):
            return f"{src[0]}repro data prepare {base}{src[1]}{ro}"
        if m.kind == "builtin":  # made at its manifest's size only: name one that can be prepared
            how = f"--for-config {config}" if _shipped_config(config) else f"--size {shape[0]} {shape[1]}"
            return f"repro data prepare youtube-frames --from FOLDER {how}{ro}"
        if _shipped_config(config):
            return f"{src[0]}repro data prepare {base}{src[1]} --for-config {config}{ro}"
        colour = " --colour" if len(norm_shape(shape)) == 3 else (" --grey" if not m.prepare.grey else "")
        return f"{src[0]}repro data prepare {base}{src[1]} --size {shape[0]} {shape[1]}{colour}{ro}"
    info = import_info(root, base)
    if info is not None and shape is not None:
        pos = f" --positive {info['positive']}" if info.get("positive") else ""
        colour = " --colour" if len(norm_shape(shape)) == 3 else ""
        sp = "" if split == "test" else f" --split {split}"
        return (f"repro data import {info['imported_from']} --name {base} --size {shape[0]} {shape[1]}"
                f"{colour}{pos}{sp}{_root_opt(root)}")
    return f"repro data prepare {base}{_root_opt(root)}"


def _shipped_config(config: str | None) -> bool:
    return bool(config) and (CONFIG_DIR / f"{config}.toml").is_file()


def _source_step(m: Manifest, root: str | os.PathLike) -> tuple[str, str]:
    """What must come with ``prepare`` when the inputs are not there yet: (a fetch before it, a
    ``--from`` in it); nothing when they are."""
    if m.kind == "builtin":
        return "", ""
    try:
        recorded = recorded_source(Path(root), m.name)
    except ReproError:
        recorded = None
    if recorded is not None:
        return "", ""
    if m.kind == "local":
        return "", " --from FOLDER"
    raw = raw_dir(Path(root), m.name)
    if raw.is_dir() and any(p.name != "source.json" for p in raw.iterdir()):
        return "", ""
    return f"repro data fetch {m.name}{_root_opt(root)} && ", ""


def import_info(root: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """What ``repro data import`` recorded in any store of ``name`` (its folder, positive class)."""
    for f in folders_of(root, name):
        for p in sorted(f.iterdir()):
            try:
                info = json.loads((p / "index.json").read_text(encoding="utf-8")).get("info", {})
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(info, dict) and info.get("imported_from"):
                return info
    return None


def missing_store_error(name: str, split: str, root: str | os.PathLike, path: Path,
                        shape: tuple[int, ...] | None = None, config: str | None = None) -> ReproError:
    """One line: what is missing, what exists at other sizes, and the command that fixes it."""
    base, fixed = split_name(name)
    cmd = fix_command(name, split, root, shape, config)
    want = fixed if shape is None else norm_shape(shape)
    others = [(p, s) for p, s in stores_of(root, base, split) if want is None or s != want]
    if others and want is not None:
        p, s = others[0]
        who = f"config {config!r} wants" if config else "wanted:"
        m = manifest_of(base, root)
        note = (f" (the built-in '{base}' is made at {tag(s)} only: train on your own frames, README 'Bring "
                f"your own data')") if m is not None and m.kind == "builtin" else ""
        return ReproError(f"{p}: images are {_hwc(s)}, {who} {_hwc(want)}; run `{cmd}`{note}")
    if others:
        names = ", ".join(f"{base}@{tag(s)}" for _, s in others)
        return ReproError(f"{path}: not prepared at the manifest's size; prepared: {names} (name one, e.g. "
                          f"`--data {base}@{tag(others[0][1])}`, or run `{cmd}`)")
    return ReproError(f"{path}: dataset not prepared; run `{cmd}`")


def _hwc(s: tuple[int, ...]) -> str:
    return f"{s[0]}x{s[1]}x{s[2] if len(s) == 3 else 1}"
