"""``repro data fetch NAME --pin``: write the sha256 (and size) of the files seen into your copy of
the manifest, so that every later fetch and verify checks them.

Why a copy: the shipped manifests leave ``sha256 = ""`` where the data set's publishers give no
sha256 that we could check against the file; the first file you fetch is then the reference for
your later runs. The copy goes to ``$REPRO_MANIFESTS/NAME.toml`` when that is set, else to
``ROOT/manifests/NAME.toml`` (``repro data`` commands look there after ``$REPRO_MANIFESTS``). Only
the ``sha256`` and ``size`` lines of the files concerned change; comments and the rest stay.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from repro import atomic
from repro.data.manifest import Manifest, parse
from repro.errors import ReproError


def pin_target(m: Manifest, root: Path) -> Path:
    env = os.environ.get("REPRO_MANIFESTS")
    return (Path(env) if env else Path(root) / "manifests") / f"{m.name}.toml"


def _set(block: list[str], key: str, value: str, note: str) -> bool:
    """Replace ``key = ...`` in one ``[[files]]`` block (its first line of that key)."""
    pat = re.compile(rf"^\s*{key}\s*=")
    for i, line in enumerate(block):
        if pat.match(line):
            block[i] = f"{key} = {value}" + (f"   # {note}" if note else "")
            return True
    block.append(f"{key} = {value}" + (f"   # {note}" if note else ""))
    return False


def pin(m: Manifest, root: Path, seen: dict[str, tuple[str, int]]) -> tuple[Path | None, list[str]]:
    """Pin every unpinned file of ``m`` whose (sha256, size) is in ``seen``; returns the manifest
    written (None when nothing needed pinning) and one line per file pinned."""
    todo = {f.name: seen[f.name] for f in m.files if not f.sha256 and f.name in seen}
    if not todo:
        return None, []
    if m.path is None:
        raise ReproError(f"{m.name}: no manifest file to copy")
    try:
        text = m.path.read_text(encoding="utf-8")
    except OSError as e:
        raise ReproError(f"{m.path}: cannot read ({e.strerror or e})") from None
    lines = text.splitlines()
    blocks: list[tuple[int, int]] = []  # [start, end) of each [[files]] table
    for i, line in enumerate(lines):
        if line.strip().startswith("["):
            if blocks and blocks[-1][1] == -1:
                blocks[-1] = (blocks[-1][0], i)
            if line.strip().startswith("[[files]]"):
                blocks.append((i, -1))
    if blocks and blocks[-1][1] == -1:
        blocks[-1] = (blocks[-1][0], len(lines))
    day = time.strftime("%Y-%m-%d")
    done: list[str] = []
    out: list[str] = []
    pos = 0
    for a, b in blocks:
        block = lines[a:b]
        name = next((re.match(r'^\s*name\s*=\s*"([^"]*)"', ln)[1] for ln in block
                     if re.match(r'^\s*name\s*=\s*"([^"]*)"', ln)), None)
        if name in todo:
            sha, size = todo[name]
            _set(block, "sha256", f'"{sha}"', f"pinned by `repro data fetch {m.name} --pin` on {day}")
            _set(block, "size", str(size), "")
            done.append(f"{name}: pinned sha256 {sha} ({size} bytes)")
        out += lines[pos:a] + block
        pos = b
    out += lines[pos:]
    dest = pin_target(m, root)
    head = [] if m.path.resolve() == dest.resolve() else \
        [f"# Your copy of {m.path}, with the sha256 of the files you fetched pinned by `repro data fetch --pin`."]
    new = "\n".join(head + out) + "\n"
    check = parse(tomllib.loads(new), dest, dest.stem)  # never write a manifest that does not load
    if any(f.sha256 != todo[f.name][0] for f in check.files if f.name in todo):
        raise ReproError(f"{m.path}: could not pin the sha256 lines (is each [[files]] entry's name a plain string?)")
    atomic.write_text(dest, new)
    return dest, done
