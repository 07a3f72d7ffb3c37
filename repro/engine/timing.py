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
from typing import Any, Iterator

__all__ = ["Timer", "TIMER", "timed", "profile_network", "profile_update", "Breakdown", "synchronize"]


def synchronize(arr: Any = None) -> None:
    """Wait for the GPU stream when ``arr`` (or nothing: any initialised CuPy) lives on a GPU."""
    if arr is not None and not type(arr).__module__.startswith("cupy"):
        return
    import sys

    cp = sys.modules.get("cupy")
    if cp is not None:
        try:
            cp.cuda.get_current_stream().synchronize()
        except Exception:  # no device initialised: nothing to wait for
            return


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

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"seconds": self.seconds[k], "calls": self.calls[k]} for k in self.seconds}


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


@dataclass
class Breakdown:
    """Per-update seconds by stage/phase/label, from a :class:`Timer` after ``steps`` updates."""

    rows: list[tuple[str, str, str, float, int]]  # stage, phase, label, seconds per update, calls per update
    update_s: float  # wall time of one update (forward, backward, optimiser)
    optimizer_s: float

    @classmethod
    def from_timer(cls, timer: Timer, steps: int, update_s: float) -> "Breakdown":
        rows, opt = [], 0.0
        for name, sec in timer.seconds.items():
            if name == "optimizer":
                opt = sec / steps
                continue
            parts = name.split("/", 2)
            stage, phase, label = parts if len(parts) == 3 else ("all", "-", name)
            rows.append((stage, phase, label, sec / steps, timer.calls[name] // steps))
        order = {"fwd": 0, "bwd": 1}
        stage_no = lambda s: int(s[5:]) if s.startswith("stage") and s[5:].isdigit() else 1 << 30  # noqa: E731
        # stable: call order within a phase, the MPI-wait row (part of the exchanges) last
        rows.sort(key=lambda r: (stage_no(r[0]), order.get(r[1], 2), r[2] == "halo wait"))
        return cls(rows, update_s, opt)

    @property
    def comm_s(self) -> float:
        return sum(r[3] for r in self.rows if r[2] in COMM)

    @property
    def wait_s(self) -> float:
        return sum(r[3] for r in self.rows if r[2] == "halo wait")

    @property
    def accounted_s(self) -> float:  # rows hold exclusive times: they add up
        return sum(r[3] for r in self.rows) + self.optimizer_s

    def as_dict(self) -> dict[str, Any]:
        return {"update_s": self.update_s, "optimizer_s": self.optimizer_s, "comm_s": self.comm_s,
                "halo_wait_s": self.wait_s, "other_s": self.update_s - self.accounted_s,
                "rows": [{"stage": s, "phase": p, "op": l, "seconds": t, "calls": c} for s, p, l, t, c in self.rows]}

    def table(self, title: str) -> Any:
        from rich.table import Table

        t = Table(title=title)
        for col, j in (("stage", "left"), ("phase", "left"), ("op", "left"), ("ms / update", "right"),
                       ("share", "right"), ("calls", "right")):
            t.add_column(col, justify=j)
        u = max(self.update_s, 1e-12)
        for s, p, l, sec, c in self.rows:
            style = "cyan" if l in COMM or l == "halo wait" else None
            lab = "halo wait (MPI)" if l == "halo wait" else l
            t.add_row(s, p, lab, f"{sec * 1e3:.2f}", f"{100 * sec / u:.1f}%", str(c), style=style)
        t.add_row("all", "update", "optimizer step + W1 normalisation",
                  f"{self.optimizer_s * 1e3:.2f}", f"{100 * self.optimizer_s / u:.1f}%", "1")
        other = self.update_s - self.accounted_s
        t.add_row("all", "-", "other (elementwise, Python)", f"{other * 1e3:.2f}",
                  f"{100 * other / u:.1f}%", "")
        t.add_row("all", "-", "communication (halo exchange, waits, all-reduce)", f"{self.comm_s * 1e3:.2f}",
                  f"{100 * self.comm_s / u:.1f}%", "", style="bold cyan")
        t.add_row("all", "-", "one update", f"{self.update_s * 1e3:.2f}", "100%", "", style="bold")
        return t


def profile_update(net: Any, opt: Any, images: Any, steps: int = 3, warmup: int = 1) -> Breakdown:
    """Time ``steps`` fine-tuning updates of ``net`` (after ``warmup``), broken down per stage and op."""
    from repro.model.network import apply_update

    gpu = net.xp is not __import__("numpy")

    grads: dict = {}

    def one() -> None:
        _, g = net.finetune_loss_and_grads(images, out=grads)  # as the trainer: written over the last
        grads.update(g)
        with timed("optimizer"):
            apply_update(net, opt, g)

    for _ in range(warmup):
        one()
    with profile_network(gpu=gpu) as timer:
        timer.reset()
        net.w.barrier()
        synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        synchronize()
        dt = (time.perf_counter() - t0) / steps
        snap = Breakdown.from_timer(timer, steps, dt)
        timer.reset()
    return snap
