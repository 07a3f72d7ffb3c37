"""Where the time of one fine-tuning update goes: per stage, phase and operation.

The engine only measures (:mod:`repro.engine.timing`: timing regions, off by default); this module
runs updates of a model under them and turns the totals into a table and JSON for
`repro scaling-sweep`. Rows hold exclusive times, so they add up to the update.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from repro.engine.backend import is_gpu, synchronize
from repro.engine.timing import COMM, Timer, profile_network, timed
from repro.model.network import apply_update


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
    gpu = is_gpu(net.xp)

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
