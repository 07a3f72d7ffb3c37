"""Bytes per rank of a training run, from the layout alone: plan a cluster run before launching it.

Counted for the joint fine-tuning update (the largest of the training steps), in the run's dtype:
    parameters      W1 and W2 tiles of every stage
    gradients       one array per parameter
    optimizer       one state array per parameter (momentum velocity or AdaGrad sum of squares)
    activations     what the backward pass keeps per stage: input tile and window, filter output
                    and its pooling window, pooling output and its LCN window, LCN output
    halos           the parts of those windows received from other ranks (inside activations too,
                    listed apart because they are what crosses the network)
    workspace       the largest temporaries of one kernel call: the gathered columns of the
                    locally connected GEMMs (locations x C*k*k x batch), which the kernels cut
                    into chunks of at most 256 MiB (GPU; 3 MiB per thread on CPUs), plus the
                    batch-last copies of a kernel's input window and output (3 window-sized
                    arrays). Counting the whole column buffer, as a first version did, put
                    24 GiB of workspace on one rank of le2012 that no kernel ever allocates.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from repro.engine.comm import World
from repro.engine.distarray import HaloPlan
from repro.engine.partition import box_shape
from repro.model.config import NetworkConfig
from repro.model.layout import Layout


@dataclass
class RankMemory:
    rank: int
    tile: tuple[int, int, int, int]  # the rank's tile of the first filter layer
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    halos: int
    workspace: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.workspace

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


class _FakeWorld(World):
    """A world of a given size and rank, for planning without launching the ranks."""

    def __init__(self, rank: int, size: int) -> None:  # noqa: D401 - no communicator needed
        self._rank, self._size = rank, size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size


# The LC kernels' bound on one call's gathered columns (repro.engine.kernels.lc: _GPU_CHUNK_BYTES;
# the CPU bound, 3 MiB per thread, is smaller on any machine with fewer than 85 threads).
_CHUNK_BYTES = 1 << 28


def _area(box: tuple[int, int, int, int]) -> int:
    h, w = box_shape(box)
    return h * w


def _recv_area(plan: HaloPlan) -> int:
    return sum(_area(p.box) for p in plan.recvs)


def estimate(cfg: NetworkConfig, ranks: int, batch: int, itemsize: int = 4) -> list[RankMemory]:
    """Per-rank memory of one fine-tuning update on ``ranks`` ranks with minibatch ``batch``."""
    out = []
    for r in range(ranks):
        lay = Layout.build(cfg, _FakeWorld(r, ranks))
        params = acts = halos = work = 0
        for i, (s, L) in enumerate(zip(cfg.stages, lay.stages)):
            C, F = cfg.stage_channels(i), s.maps
            locs = _area(L.part_f.tile(r))
            K = C * s.filter * s.filter
            params += 2 * locs * F * K
            acts += batch * (C * (_area(L.part_in.tile(r)) + _area(L.plan_in.window))
                             + F * (_area(L.part_f.tile(r)) + _area(L.plan_f.window) + _area(L.part_p.tile(r))
                                    + _area(L.plan_p.window) + _area(L.part_n.tile(r))))
            halos += batch * (C * _recv_area(L.plan_in) + F * (_recv_area(L.plan_f) + _recv_area(L.plan_p)))
            win = max(C * _area(L.plan_in.window), F * _area(L.plan_f.window))
            work = max(work, min(locs * K * batch, _CHUNK_BYTES // itemsize) + 3 * batch * win)
        out.append(RankMemory(r, lay.stages[0].part_f.tile(r), params * itemsize, params * itemsize,
                              params * itemsize, acts * itemsize, halos * itemsize, work * itemsize))
    return out


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def flops_per_update(cfg: NetworkConfig, batch: int) -> float:
    """LC FLOPs of one fine-tuning update: per stage, forward, decoder, and their backward passes
    (encode, decode, 2 backward-weights, 2 backward-data for the encoder/decoder = 6 GEMM passes)."""
    return sum(6 * 2.0 * batch * math.prod(cfg.weight_shape(i)) for i in range(len(cfg.stages)))
