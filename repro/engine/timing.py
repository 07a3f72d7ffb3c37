"""Where the time of one update goes: a process-wide timer registry, off by default.

Two ways in:

* ``timed(name)``: a context manager any engine or model code may put around a region. While the
  registry is disabled (the default) it costs one flag check, so it can stay in hot code.
* :func:`profile_network`: times an unmodified :class:`~repro.model.network.Network` by wrapping,
  for the duration of a ``with`` block, the names its code calls through: the kernels
  (``repro.engine.kernels.<name>``, which network.py reaches as ``K.<name>``), ``DistArray.fetch``,
  the ``scatter_add`` imported into network.py, the MPI waits of the halo exchange
  (``_Exchanger.wait``) and the loss all-reduce. The stage and the phase (forward / backward) of
  each call come from wrapping ``Network.stage_forward`` and ``Network.stage_loss_and_grads``.
  Everything is restored on exit, also after an error.

On GPUs the kernels only enqueue work, so every timed region synchronises the current CuPy
stream before it reads the clock (at its start and its end): the times are device times, at the
price of serialising host and device (a profile, not a production run).

Why wrapping rather than edits in network.py / distarray.py: the timing stays out of the maths,
and the numbers come from the same code that trains. The price: a fetch is timed as a whole
(window assembly copies included); its pure MPI wait is recorded apart as ``halo wait``.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["Timer", "TIMER", "timed", "profile_network", "Breakdown", "synchronize"]


def synchronize(arr: Any = None) -> None:
    """Wait for the GPU stream when ``arr`` (or nothing: any initialised CuPy) lives on a GPU."""
    mod = type(arr).__module__ if arr is not None else ""
    if arr is not None and not mod.startswith("cupy"):
        return
    import sys

    cp = sys.modules.get("cupy")
    if cp is not None:
        try:
            cp.cuda.get_current_stream().synchronize()
        except Exception:  # no device initialised: nothing to wait for
            pass


@dataclass
class Timer:
    """Accumulated seconds and call counts per name; ``enabled`` gates everything."""

    enabled: bool = False
    gpu: bool = False  # synchronise the CuPy stream around every timed region
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def reset(self) -> None:
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] += dt
        self.calls[name] += 1

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        if self.gpu:
            synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.gpu:
                synchronize()
            self.add(name, time.perf_counter() - t0)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"seconds": self.seconds[k], "calls": self.calls[k]} for k in self.seconds}


TIMER = Timer()


def timed(name: str) -> contextlib.AbstractContextManager:
    """``with timed("stage0/fwd/lc_forward"): ...`` records into :data:`TIMER` when it is enabled."""
    if not TIMER.enabled:
        return contextlib.nullcontext()
    return TIMER.region(name)


# ---- wrapping an unmodified network -------------------------------------------------------------
# What each kernel call is. The LC kernels that take weights are told apart by which weight they
# get (W1: encoder, W2: decoder; a sub-box view of it counts as it); the two backward-weights
# calls of a stage by their order (network.stage_loss_and_grads: dW2 first, then dW1).
KERNEL_LABELS: dict[tuple[str, str, str], str] = {
    ("fwd", "lc_forward", "W1"): "LC forward (encoder W1ᵀx)",
    ("fwd", "l2pool_forward", ""): "L2 pooling forward",
    ("fwd", "lcn_forward", ""): "LCN forward",
    ("bwd", "lc_backward_data", "W2"): "decoder W2·y (reconstruction)",
    ("bwd", "lc_forward", "W2"): "decoder backward (W2ᵀ g)",
    ("bwd", "lc_backward_weights", "0"): "decoder grad dW2",
    ("bwd", "lcn_backward", ""): "LCN backward",
    ("bwd", "l2pool_backward", ""): "L2 pooling backward",
    ("bwd", "lc_backward_weights", "1"): "encoder grad dW1",
    ("bwd", "lc_backward_data", "W1"): "encoder backward-data (dx)",
}
KERNELS = ("lc_forward", "lc_backward_data", "lc_backward_weights", "l2pool_forward", "l2pool_backward",
           "lcn_forward", "lcn_backward")
COMM = ("halo fetch", "halo scatter-add", "loss all-reduce")  # names counted as communication
# (with the overlapped exchange of distarray.windowed_apply, "halo fetch" is the posting of the
# messages plus the wait for them and the window assembly: the part *not* hidden behind compute)


@dataclass
class _Ctx:
    stage: str = "-"
    phase: str = "other"
    net: Any = None
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def which(self, name: str, args: tuple) -> str:
        """``W1``/``W2`` for a kernel given one of this stage's weights, else the call's index."""
        if name in ("lc_forward", "lc_backward_data") and self.net is not None and len(args) > 1:
            W = args[1]
            for k in ("W1", "W2"):
                p = self.net.params.get(f"{self.stage}.{k}")
                if p is not None and (W is p or getattr(W, "base", None) is p):
                    return k
        if name == "lc_backward_weights":
            n = self.counts[(self.stage + self.phase, name)]
            self.counts[(self.stage + self.phase, name)] = n + 1
            return str(n)
        return ""


@contextlib.contextmanager
def profile_network(gpu: bool = False) -> Iterator[Timer]:
    """Enable :data:`TIMER` and wrap the names an unmodified Network calls; restore them on exit.

    Recorded names are ``"stage{i}/{fwd|bwd}/{label}"``; label is one of :data:`KERNEL_LABELS`'s
    values, ``halo fetch``, ``halo scatter-add``, ``halo wait`` (the MPI Waitall inside those two,
    counted in them too) or ``loss all-reduce``.
    """
    from repro.engine import comm as comm_mod
    from repro.engine import distarray as da
    from repro.engine import kernels as kmod
    from repro.model import network as net_mod

    ctx = _Ctx()
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        orig = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        saved.append((owner, name, orig))
        setattr(owner, name, make(orig))

    def kernel(name: str) -> Callable[[Any], Any]:
        def make(fn: Any) -> Any:
            def wrapper(*a: Any, **kw: Any) -> Any:
                which = ctx.which(name, a)
                label = KERNEL_LABELS.get((ctx.phase, name, which), f"{name} {which}".strip())
                with TIMER.region(f"{ctx.stage}/{ctx.phase}/{label}"):
                    return fn(*a, **kw)
            wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
            return wrapper
        return make

    def region(label: str) -> Callable[[Any], Any]:
        def make(fn: Any) -> Any:
            def wrapper(*a: Any, **kw: Any) -> Any:
                with TIMER.region(f"{ctx.stage}/{ctx.phase}/{label}"):
                    return fn(*a, **kw)
            wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
            return wrapper
        return make

    def stage_scope(phase: str) -> Callable[[Any], Any]:
        def make(fn: Any) -> Any:
            def wrapper(self: Any, i: int, *a: Any, **kw: Any) -> Any:
                prev = (ctx.stage, ctx.phase, ctx.net)
                ctx.stage, ctx.phase, ctx.net = f"stage{i}", phase, self
                for k in [k for k in ctx.counts if k[0] == ctx.stage + phase]:
                    del ctx.counts[k]
                try:
                    return fn(self, i, *a, **kw)
                finally:
                    ctx.stage, ctx.phase, ctx.net = prev
            return wrapper
        return make

    was = (TIMER.enabled, TIMER.gpu)
    try:
        for name in KERNELS:
            patch(kmod, name, kernel(name))
        if hasattr(da, "PendingFetch"):  # fetch = fetch_start (post, copy own part) + wait (receive, assemble)
            patch(da.DistArray, "fetch_start", region("halo fetch"))
            patch(da.PendingFetch, "wait", region("halo fetch"))
        else:
            patch(da.DistArray, "fetch", region("halo fetch"))
        patch(net_mod, "scatter_add", region("halo scatter-add"))
        patch(da._Exchanger, "wait", region("halo wait"))
        patch(comm_mod.World, "allreduce_sum", region("loss all-reduce"))
        patch(net_mod.Network, "stage_forward", stage_scope("fwd"))
        patch(net_mod.Network, "stage_loss_and_grads", stage_scope("bwd"))
        TIMER.enabled, TIMER.gpu = True, gpu
        yield TIMER
    finally:
        TIMER.enabled, TIMER.gpu = was
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)


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
            stage, phase, label = name.split("/", 2)
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
    def accounted_s(self) -> float:  # "halo wait" is inside fetch / scatter-add: not added twice
        return sum(r[3] for r in self.rows if r[2] != "halo wait") + self.optimizer_s

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
            lab = f"  (of which MPI wait)" if l == "halo wait" else l
            t.add_row(s, p, lab, f"{sec * 1e3:.2f}", f"{100 * sec / u:.1f}%", str(c), style=style)
        t.add_row("all", "update", "optimizer step + W1 normalisation",
                  f"{self.optimizer_s * 1e3:.2f}", f"{100 * self.optimizer_s / u:.1f}%", "1")
        other = self.update_s - self.accounted_s
        t.add_row("all", "-", "other (elementwise, Python)", f"{other * 1e3:.2f}",
                  f"{100 * other / u:.1f}%", "")
        t.add_row("all", "-", "communication (all halo + all-reduce)", f"{self.comm_s * 1e3:.2f}",
                  f"{100 * self.comm_s / u:.1f}%", "", style="bold cyan")
        t.add_row("all", "-", "one update", f"{self.update_s * 1e3:.2f}", "100%", "", style="bold")
        return t


def profile_update(net: Any, opt: Any, images: Any, steps: int = 3, warmup: int = 1) -> Breakdown:
    """Time ``steps`` fine-tuning updates of ``net`` (after ``warmup``), broken down per stage and op."""
    from repro.model.network import apply_update

    gpu = net.xp is not __import__("numpy")

    def one() -> None:
        _, grads = net.finetune_loss_and_grads(images)
        with timed("optimizer"):
            apply_update(net, opt, grads)

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
