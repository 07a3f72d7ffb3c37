"""The parallel plan: how every activation of a network is tiled over ranks, and its halo plans.

The network's maths (``network.py``) never slices a halo itself; it asks a :class:`StageLayout`
for the plan of each exchange. One process grid cuts every layer, so a rank owns roughly the same
part of the visual field at every depth and most of each receptive field is local.
"""
from __future__ import annotations

from dataclasses import dataclass

from repro.engine.distarray import HaloPlan
from repro.engine.partition import Partition, ProcGrid
from repro.model.config import NetworkConfig


@dataclass
class StageLayout:
    part_in: Partition  # the stage's input (images or the previous stage's LCN output)
    part_f: Partition  # filter (LC) outputs
    part_p: Partition  # L2 pooling outputs
    part_n: Partition  # LCN outputs = the next stage's input
    plan_in: HaloPlan  # input window each filter tile reads
    plan_f: HaloPlan  # filter-output window each pooling tile reads
    plan_p: HaloPlan  # pooling-output window each LCN tile reads


@dataclass
class Layout:
    grid: ProcGrid
    stages: list[StageLayout]
    rank: int

    @classmethod
    def build(cls, cfg: NetworkConfig, rank: int, size: int, grid: ProcGrid | None = None) -> "Layout":
        """Rank ``rank``'s plan among ``size`` ranks: only numbers, so the memory planner can build
        any rank's layout without launching it."""
        grid = grid or ProcGrid.for_ranks(size, cfg.input_size)
        if grid.size != size:
            raise ValueError(f"process grid {grid.py}x{grid.px} does not match {size} ranks")
        stages = []
        for s, shp in zip(cfg.stages, cfg.stage_shapes()):
            p_in, p_f = Partition(shp["input"], grid), Partition(shp["filter"], grid)
            p_p, p_n = Partition(shp["pool"], grid), Partition(shp["lcn"], grid)
            stages.append(StageLayout(
                p_in, p_f, p_p, p_n,
                HaloPlan(p_in, p_f.windows(s.filter, s.stride), rank),
                HaloPlan(p_f, p_p.windows(s.pool, s.pool_stride), rank),
                HaloPlan(p_p, p_n.windows(s.lcn_window, 1), rank),
            ))
        return cls(grid, stages, rank)
