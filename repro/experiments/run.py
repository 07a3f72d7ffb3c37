"""What every experiment shares: the run folder, the backend, the world, and writing results."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from repro import atomic
from repro.engine.backend import Backend, local_rank_from_env, select_backend
from repro.engine.comm import World, world
from repro.errors import ReproError


@dataclass
class Session:
    """One command's world, backend and run folder (the same on every rank)."""

    w: World
    backend: Backend
    run: Path

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def write_json(self, name: str, obj: Any) -> Path:
        """Rank 0 writes ``RUN/name`` atomically (temp file, then rename)."""
        path = self.run / name
        if self.w.is_root:
            atomic.write_json(path, obj)
        return path


def open_session(device: str, run: str | None, create: bool = True) -> Session:
    """Pick the backend, agree on the run folder across ranks, create it if asked."""
    w = world()
    try:
        backend = select_backend(device, local_rank_from_env())
    except (RuntimeError, ValueError) as exc:
        raise ReproError(str(exc)) from None
    if run is None:
        stamp = time.strftime("%Y%m%d-%H%M%S") if w.is_root else None
        run = str(Path("results") / w.bcast(stamp))
    path = Path(run)
    if create:
        if w.is_root:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReproError(f"{path}: cannot create run folder ({exc.strerror})") from None
        w.barrier()
    elif not path.exists():
        raise ReproError(f"{path}: no such run folder")
    return Session(w, backend, path)
