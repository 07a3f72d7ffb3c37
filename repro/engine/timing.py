"""Where the time of one update goes: a process-wide timer registry, off by default.

The engine and the model mark their regions themselves: ``with timed("LC forward"): ...``
inside a sublayer, ``with TIMER.scope("stage0/fwd"): ...`` around a stage, ``timed("halo fetch")``
around the halo exchange. While the registry is disabled (the default) a region costs one flag
check. When enabled, regions nest and each records its *own* time (its children's subtracted), so
the rows of a breakdown add up to the update without double counting; the MPI waits of the halo
exchange appear as their own row (``halo wait``).

On GPUs the kernels only enqueue work, so with ``gpu=True`` every region synchronises the current
CuPy stream at its start and end: device times, at the price of serialising host and device (a
profile, not a production run).
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from repro.engine.backend import synchronize

__all__ = ["Timer", "TIMER", "timed", "profile_network", "COMM"]


@dataclass
class Timer:
    """Own (exclusive) seconds and call counts per ``scope/name``; ``enabled`` gates everything."""

    enabled: bool = False
    gpu: bool = False  # synchronise the CuPy stream around every timed region
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _scope: list[str] = field(default_factory=list)
    _children: list[float] = field(default_factory=list)  # time spent in nested regions, per open region

    def reset(self) -> None:
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    @contextlib.contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Names recorded inside get ``prefix/`` in front (e.g. ``stage1/bwd``)."""
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        key = "/".join([*self._scope, name]) if self._scope else name
        if self.gpu:
            synchronize()
        self._children.append(0.0)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.gpu:
                synchronize()
            dt = time.perf_counter() - t0
            child = self._children.pop()
            self.seconds[key] += dt - child
            self.calls[key] += 1
            if self._children:
                self._children[-1] += dt


TIMER = Timer()


def timed(name: str) -> contextlib.AbstractContextManager:
    """``with timed("LC forward"): ...`` records into :data:`TIMER` when it is enabled."""
    if not TIMER.enabled:
        return contextlib.nullcontext()
    return TIMER.region(name)


COMM = ("halo fetch", "halo scatter-add", "halo wait", "loss all-reduce")  # communication rows


@contextlib.contextmanager
def profile_network(gpu: bool = False) -> Iterator[Timer]:
    """Enable :data:`TIMER` (with stream synchronisation on GPUs) for the duration of the block."""
    was = (TIMER.enabled, TIMER.gpu)
    TIMER.enabled, TIMER.gpu = True, gpu
    try:
        yield TIMER
    finally:
        TIMER.enabled, TIMER.gpu = was
