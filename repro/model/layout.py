"""The parallel plan: how every activation of a network is tiled over ranks, and its halo plans.

The network's maths (``network.py``) never slices a halo itself; it asks a :class:`StageLayout`
for the plan of each exchange. One process grid cuts every layer, so a rank owns roughly the same
part of the visual field at every depth and most of each receptive field is local.
"""
from __future__ import annotations

from dataclasses import dataclass

from repro.engine.comm import World, world
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
    def build(cls, cfg: NetworkConfig, w: World | None = None, grid: ProcGrid | None = None) -> "Layout":
        w = w or world()
        grid = grid or ProcGrid.for_ranks(w.size, cfg.input_size)
        if grid.size != w.size:
            raise ValueError(f"process grid {grid.py}x{grid.px} does not match {w.size} ranks")
        stages = []
        for s, shp in zip(cfg.stages, cfg.stage_shapes()):
            p_in, p_f = Partition(shp["input"], grid), Partition(shp["filter"], grid)
            p_p, p_n = Partition(shp["pool"], grid), Partition(shp["lcn"], grid)
            stages.append(StageLayout(
                p_in, p_f, p_p, p_n,
                HaloPlan(p_in, p_f.windows(s.filter, s.stride), w.rank),
                HaloPlan(p_f, p_p.windows(s.pool, s.pool_stride), w.rank),
                HaloPlan(p_p, p_n.windows(s.lcn_window, 1), w.rank),
            ))
        return cls(grid, stages, w.rank)
