"""Writing files so that a reader, or a crash, never sees half of one: write a temporary file in
the same folder, then rename it over the target (``os.replace`` is atomic within a file system).

Every file a command writes goes through here: JSON, Markdown, ``.npy``/``.npz``, PNG.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def target(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that look at it still work);
    on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    with target(path, fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _jsonable(o: Any) -> Any:
    """NumPy scalars and arrays, and paths, as JSON."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str | os.PathLike, obj: Any, compact: bool = False, fsync: bool = False) -> Path:
    text = json.dumps(obj, separators=(",", ":"), default=_jsonable) if compact else \
        json.dumps(obj, indent=1, sort_keys=True, default=_jsonable)
    return write_text(path, text, fsync)


def save_figure(fig: Any, path: str | os.PathLike, **kw: Any) -> Path:
    """A matplotlib figure as PNG (or whatever the suffix says); the figure is closed afterwards."""
    import matplotlib.pyplot as plt  # here: pyplot takes most of a second to import, only figures need it

    with target(path) as tmp:
        fig.savefig(tmp, **kw)
    plt.close(fig)
    return Path(path)
