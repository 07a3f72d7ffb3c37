"""Model sizes for the scaling sweep: growing a family's base network, and how much memory a rank has.

A *family* is a base network (``cpu``: a small two-stage net that times in a fraction of a second;
``le2012``/``mini``/a .toml: that config's stage shapes) and a size ``m`` means "the input area
grown until the encoding weights W1 number about m x the base's". The input keeps the aspect ratio
of the m-rank process grid (1x2 for m=2, 2x2 for 4, 2x4 for 8, ...), so with m ranks (weak
scaling) every rank gets a tile like the base's, as in the paper, where the network grows from
185M parameters on 1 GPU to 11.2B on 64. Valid filtering, pooling and LCN shrink each layer by a
constant, and tiles split by whole columns, so among the inputs near that aspect ratio the one
whose busiest rank (on m ranks) holds closest to the base's weights is taken: per-rank work then
stays within 1% of the base's (:func:`busiest_rank_params`). The exact counts are reported.

``--largest`` instead grows the input until repro's memory estimate for the busiest rank fills the
memory a rank has (:func:`largest_config`, :func:`rank_memory_bytes`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any


from repro.engine.backend import rank_memory
from repro.engine.partition import Partition, ProcGrid, box_shape
from repro.errors import ReproError
from repro.model.config import NetworkConfig, from_dict, load_config, validate
from repro.model.memory import estimate, human

# The default family: cheap on CPUs, the stage shape of the paper's networks (LC -> L2 pool -> LCN,
# several maps per location), 3-channel input, per-rank tile of 24x24 first-layer locations.
CPU_BASE = {
    "name": "scaling-cpu", "input": {"size": 31, "channels": 3},
    "stages": [{"maps": 16, "filter": 8, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 3},
               {"maps": 16, "filter": 4, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 3}],
    "train": {"optimizer": "adagrad", "lr": 0.05, "batch": 16},
    "notes": "scaling family base: 2 stages, 16 maps/location, 3x31x31 input",
}


def grid_shape(m: int) -> tuple[int, int]:
    """The most square (gy <= gx) factorisation of m: the aspect ratio size m's input keeps."""
    gy = max(d for d in range(1, int(math.isqrt(m)) + 1) if m % d == 0)
    return gy, m // gy


def base_config(family: str) -> NetworkConfig:
    if family == "cpu":
        return from_dict(CPU_BASE, "scaling-cpu")
    return load_config(family)


def resized(cfg: NetworkConfig, h: int, w: int, name: str) -> NetworkConfig | None:
    """``cfg``'s stages on an h x w input, or None when some layer would be empty."""
    try:
        return validate(replace(cfg, input_size=(h, w), name=name), name)
    except ReproError:
        return None


def _on_aspect(base: NetworkConfig, h: int, aspect: tuple[int, int], name: str, w: int | None = None
               ) -> NetworkConfig | None:
    """The base's stages on an input h rows high and, unless ``w`` is given, round(h*gx/gy) wide."""
    gy, gx = aspect
    return resized(base, h, max(1, round(h * gx / gy)) if w is None else w, name)


def busiest_rank_params(cfg: NetworkConfig, ranks: int) -> int:
    """W1 weights of the rank with the most, on the process grid ``Layout`` builds for ``ranks``: its
    share of the LC work, which sets the update time (the slowest rank's)."""
    grid = ProcGrid.for_ranks(ranks, cfg.input_size)
    per_loc = [n // math.prod(shp["filter"]) for n, shp in zip(cfg.parameter_counts(), cfg.stage_shapes())]
    parts = [Partition(shp["filter"], grid) for shp in cfg.stage_shapes()]
    return max(sum(c * math.prod(box_shape(p.tile(r))) for c, p in zip(per_loc, parts)) for r in range(ranks))


def config_with_params(base: NetworkConfig, target: float, aspect: tuple[int, int], name: str,
                       ranks: int = 1) -> NetworkConfig:
    """The base's stages on the input (h, w), w near h*gx/gy, whose W1 count is closest to ``target``
    and, with ``ranks``, whose busiest rank holds closest to ``target / ranks`` of it.

    Weak scaling holds the work per rank constant, so size m on m ranks should give the busiest
    rank the base's work. The aspect ratio alone does not: valid layers shrink every layer by a
    constant, and an odd number of columns splits unevenly (the cpu family's x2 on 29x58 gave each
    rank 4.1% more than the base). So h is found for the target, then inputs within 2 rows and
    5% of the width of it are scored by how far the busiest rank's share and the total are off their
    targets (in steps of 0.5%), then by the aspect ratio.
    """
    gy, gx = aspect
    h0 = base.input_size[0]

    def make(h: int, w: int | None = None) -> NetworkConfig | None:
        return _on_aspect(base, h, aspect, name, w)

    def params(h: int) -> float:
        c = make(h)
        return -1.0 if c is None else float(sum(c.parameter_counts()))

    lo, hi = 1, max(h0, 2)
    while params(hi) < target:
        hi *= 2
    while hi - lo > 1:  # params grows with h: smallest h reaching the target
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)

    def score(c: NetworkConfig) -> tuple[float, float, float]:
        total = sum(c.parameter_counts())
        h, w = c.input_size
        busiest = busiest_rank_params(c, ranks) * ranks if ranks > 1 else total
        return (round(abs(busiest / target - 1) / 0.005), round(abs(total / target - 1) / 0.005), abs(w / h - gx / gy))

    cands = []
    for h in range(max(1, lo - 2), hi + 3):
        w0 = max(1, round(h * gx / gy))
        dw = max(1, round(0.05 * w0))
        cands += [c for c in (make(h, w) for w in range(max(1, w0 - dw), w0 + dw + 1)) if c is not None]
    if not cands:
        raise ReproError(f"{base.name}: no input size gives about {target:.3g} weights")
    return min(cands, key=score)


def sized_config(family: str, m: int, batch: int | None = None) -> NetworkConfig:
    """Size ``m`` of a family: about m x the base's encoding weights (m = 1: the base itself)."""
    base = base_config(family)
    if batch:
        base = base.with_train(batch=batch)
    if m == 1:
        return replace(base, name=f"{base.name}-x1")
    return config_with_params(base, m * sum(base.parameter_counts()), grid_shape(m), f"{base.name}-x{m}", ranks=m)


def largest_config(base: NetworkConfig, ranks: int, batch: int, budget: int, gpu: bool, name: str
                   ) -> tuple[NetworkConfig, int]:
    """The base's stages on the largest input (h, round(h*gx/gy), the aspect ratio of the rank grid)
    whose estimated bytes per rank (``repro.model.memory.estimate``, the busiest rank's) fit in
    ``budget``; returns it and that estimate. The estimate grows with h, so h is found by doubling,
    then bisection."""
    gy, gx = grid_shape(ranks)

    def make(h: int) -> NetworkConfig | None:
        return _on_aspect(base, h, (gy, gx), name)

    def need(h: int) -> int:
        c = make(h)
        return 1 << 62 if c is None else max(e.total for e in estimate(c, ranks, batch, gpu=gpu))

    h_cap = 1 << 16
    lo = next((h for h in range(1, 4097) if make(h) is not None), None)
    if lo is None or need(lo) > budget:
        smallest = "" if lo is None else f" (the smallest, {lo}x{round(lo * gx / gy)}, needs {human(need(lo))})"
        raise ReproError(f"{base.name}: no input size fits {human(budget)} per rank on {ranks} rank(s) with batch "
                         f"{batch}{smallest}")
    hi = lo * 2
    while need(hi) <= budget:  # valid for every h above lo: layers only grow
        lo, hi = hi, hi * 2
        if hi > h_cap:
            raise ReproError(f"{base.name}: still fits {human(budget)} per rank at input {lo}: budget too large")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid)
    cfg = make(lo)
    assert cfg is not None
    return cfg, need(lo)


def rank_memory_bytes(xp: Any, w: Any) -> int:
    """Bytes one rank may use: its GPU's free memory, or its node's available memory, shared evenly
    among the ranks on the same GPU or node; the smallest over ranks (collective)."""
    return int(min(w.allgather(rank_memory(xp, w)[0])))
