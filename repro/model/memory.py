"""Bytes per rank of a training run, from the layout alone: plan a cluster run before launching it.

Counted for the joint fine-tuning update (the largest of the training steps), in the run's dtype:
    parameters      W1 and W2 tiles of every stage
    gradients       one array per parameter (tied decoders: plus the decoder gradient of one stage,
                    held until it is added into the encoder's)
    optimizer       one state array per parameter (momentum velocity or AdaGrad sum of squares)
    activations     what the backward pass keeps per stage: input tile and window, filter output
                    and its pooling window, pooling output and its LCN window, LCN output
    halos           the parts of those windows received from other ranks (inside activations too,
                    listed apart because they are what crosses the network)
    workspace       the largest temporaries of one kernel call beyond its inputs and outputs, as
                    the kernels themselves state it (``repro.engine.kernels.lc_workspace_bytes``):
                    on GPUs one chunk of gathered columns (at most 256 MiB); on CPUs per-thread
                    chunks plus the batch-last copy of the input window and per-thread
                    backward-data accumulators
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rich.filesize import pick_unit_and_suffix

from repro.engine.distarray import HaloPlan
from repro.engine.kernels import lc_workspace_bytes
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


def _area(box: tuple[int, int, int, int]) -> int:
    h, w = box_shape(box)
    return h * w


def _recv_area(plan: HaloPlan) -> int:
    return sum(_area(p.box) for p in plan.recvs)


def estimate(cfg: NetworkConfig, ranks: int, batch: int, itemsize: int = 4, gpu: bool = False) -> list[RankMemory]:
    """Per-rank memory of one fine-tuning update on ``ranks`` ranks with minibatch ``batch``.

    ``gpu`` picks the kernels' GPU workspace rule (chunks of columns bounded in bytes) instead of
    the CPU one (per-thread chunks and accumulators); see ``lc_workspace_bytes``.
    """
    return [estimate_rank(cfg, r, ranks, batch, itemsize, gpu) for r in range(ranks)]


def estimate_rank(cfg: NetworkConfig, r: int, ranks: int, batch: int, itemsize: int = 4,
                  gpu: bool = False) -> RankMemory:
    """:func:`estimate` for rank ``r`` alone (what a starting rank checks against its memory)."""
    lay = Layout.build(cfg, r, ranks)
    params = acts = halos = work = stage_w = 0
    for i, (s, L) in enumerate(zip(cfg.stages, lay.stages)):
        C, F = cfg.stage_channels(i), s.maps
        locs = _area(L.part_f.tile(r))
        K = C * s.filter * s.filter
        params += (1 if cfg.rica.tied else 2) * locs * F * K
        stage_w = max(stage_w, locs * F * K)
        acts += batch * (C * (_area(L.part_in.tile(r)) + _area(L.plan_in.window))
                         + F * (_area(L.part_f.tile(r)) + _area(L.plan_f.window) + _area(L.part_p.tile(r))
                                + _area(L.plan_p.window) + _area(L.part_n.tile(r))))
        halos += batch * (C * _recv_area(L.plan_in) + F * (_recv_area(L.plan_f) + _recv_area(L.plan_p)))
        fy, fx = box_shape(L.part_f.tile(r))
        if fy and fx:
            shape = (fy, fx, F, C, s.filter, s.filter)
            work = max(work, lc_workspace_bytes(batch, shape, itemsize, gpu, s.stride) // itemsize)
    # tied decoders: the decoder's gradient of the stage in hand exists until it is added to W1's
    grads = params + (stage_w if cfg.rica.tied else 0)
    return RankMemory(r, lay.stages[0].part_f.tile(r), params * itemsize, grads * itemsize,
                      params * itemsize, acts * itemsize, halos * itemsize, work * itemsize)


_BINARY = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


def binary_unit(n: float) -> tuple[int, str]:
    """(bytes per unit, its name) in which ``n`` bytes reads as 1 to 1023 (rich's unit picker, with
    binary units: memory is planned in powers of two)."""
    return pick_unit_and_suffix(int(abs(n)), _BINARY, 1024)


def human(n: float) -> str:
    unit, suffix = binary_unit(n)
    return f"{n:.0f} B" if unit == 1 else f"{n / unit:.1f} {suffix}"


def flops_per_update(cfg: NetworkConfig, batch: int) -> float:
    """LC FLOPs of one fine-tuning update: per stage, forward, decoder, and their backward passes
    (encode, decode, 2 backward-weights, 2 backward-data for the encoder/decoder = 6 GEMM passes)."""
    return sum(6 * 2.0 * batch * math.prod(cfg.weight_shape(i)) for i in range(len(cfg.stages)))
