"""The paper's cluster, predicted: its 1..64-GPU configurations timed by a model, not measured.

Coates et al. 2013 grow the network from 185M parameters on 1 GPU to 11.2B on 64. We have no such
cluster, so ``repro scaling-sweep --project`` grows a family to those sizes (``paper_configs``), counts
each rank's LC work and halo traffic exactly as the engine would do them (``comm_volume``), and
times them with a per-rank compute rate and a link (``Link``): given, or taken from a measured sweep
(``link_from_sweep``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from repro.errors import ReproError
from repro.experiments.scaling.growth import base_config, busiest_rank_params, config_with_params, grid_shape, sized_config
from repro.model.config import NetworkConfig
from repro.model.layout import Layout
from repro.model.memory import flops_per_update

# The paper's points (Coates et al. 2013, as recalled in PAPER.md part 2).
PAPER = {"params_1gpu": 185e6, "params_64gpu": 11.2e9, "max_throughput_x": 47.0,
         "note": "on 64 GPUs one update of the 11.2B network takes about as long as the 185M network's on 1 GPU"}
PAPER_RANKS = (1, 4, 9, 16, 36, 64)


@dataclass(frozen=True)
class Link:
    gflops: float = 1000.0  # per rank, effective on the LC GEMMs (GTX 680: ~1 TFLOP/s on ideal work)
    bandwidth_gbps: float = 56.0  # FDR InfiniBand
    latency_us: float = 1.0
    ranks_per_link: int = 1  # ranks sharing one adapter's bandwidth (the paper's servers: 4 GPUs, 1 HCA)

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gbps * 1e9 / 8 / self.ranks_per_link


def exchanges(cfg: NetworkConfig, layout: Any) -> list[tuple[Any, int, str]]:
    """The halo exchanges of one fine-tuning update, as network.py does them: (plan, channels, direction)."""
    out = []
    n = len(cfg.stages)
    for i, (s, L) in enumerate(zip(cfg.stages, layout.stages)):
        C, F = cfg.stage_channels(i), s.maps
        if i > 0:  # stage 0 reads the replicated images: a local slice
            out.append((L.plan_in, C, "fetch"))
        out += [(L.plan_f, F, "fetch"), (L.plan_p, F, "fetch"),  # forward
                (L.plan_in, C, "scatter"), (L.plan_in, C, "fetch")]  # reconstruction, its gradient's window
        if i < n - 1:
            out.append((L.plan_p, F, "scatter"))  # LCN backward of the later stages' gradient
        out.append((L.plan_f, F, "scatter"))  # pooling backward
        if i > 0:
            out.append((L.plan_in, C, "scatter"))  # gradient to the stage below
    return out


def comm_volume(cfg: NetworkConfig, ranks: int, batch: int, itemsize: int = 4) -> list[dict[str, int]]:
    """Per rank: messages and bytes of one update's halo exchanges (each exchange: the larger of what
    the rank sends and receives, links being full duplex), and the loss all-reduces (one per stage)."""
    per = []
    for r in range(ranks):
        lay = Layout.build(cfg, r, ranks)
        msgs = nbytes = 0
        for plan_, ch, kind in exchanges(cfg, lay):
            recvs, sends = (plan_.recvs, plan_.sends) if kind == "fetch" else (plan_.sends, plan_.recvs)
            area = lambda ps: sum((p.box[1] - p.box[0]) * (p.box[3] - p.box[2]) for p in ps)  # noqa: E731
            msgs += max(len(recvs), len(sends))
            nbytes += batch * ch * itemsize * max(area(recvs), area(sends))
        reduces = len(cfg.stages) * (math.ceil(math.log2(ranks)) if ranks > 1 else 0)
        per.append({"rank": r, "messages": msgs + reduces, "bytes": nbytes})
    return per


def project_point(cfg: NetworkConfig, ranks: int, batch: int, link: Link) -> dict[str, Any]:
    """compute = the busiest rank's share of flops_per_update / rate (its share of the W1 weights,
    ``busiest_rank_params``); comm = messages * latency + bytes / bandwidth (the busiest rank's);
    update = compute + comm (no overlap assumed, though the engine overlaps halos between nodes:
    a bound from above on that count)."""
    flops = flops_per_update(cfg, batch)
    compute = flops * busiest_rank_params(cfg, ranks) / sum(cfg.parameter_counts()) / (link.gflops * 1e9)
    vol = comm_volume(cfg, ranks, batch)
    worst = max(vol, key=lambda v: v["messages"] * link.latency_us * 1e-6 + v["bytes"] / link.bytes_per_s)
    comm = worst["messages"] * link.latency_us * 1e-6 + worst["bytes"] / link.bytes_per_s
    t = compute + comm
    return {"ranks": ranks, "config": cfg.name, "input_size": list(cfg.input_size),
            "parameters_W1": int(sum(cfg.parameter_counts())), "batch": batch, "flops_per_update": flops,
            "compute_s": compute, "comm_s": comm, "update_s": t, "messages": worst["messages"],
            "halo_bytes": worst["bytes"], "images_per_s": batch / t, "comm_share": comm / t,
            "tflops_total": flops / t / 1e12}


def paper_configs(family: str = "le2012", ranks: tuple[int, ...] = PAPER_RANKS, batch: int = 100
                  ) -> list[NetworkConfig]:
    """A family grown from 185M W1 on 1 rank to 11.2B on 64 (geometric in between), each input
    with the aspect ratio of its rank grid. The paper's exact layer shapes are not given in
    PAPER.md: we use the family's stage shapes (le2012: 3 x [LC 18x18, 8 maps, pool 5, LCN 5])."""
    base = base_config(family).with_train(batch=batch)
    expo = math.log(PAPER["params_64gpu"] / PAPER["params_1gpu"]) / math.log(64)
    return [config_with_params(base, PAPER["params_1gpu"] * n ** expo, grid_shape(n), f"{base.name}-p{n}", ranks=n)
            for n in ranks]


def project(link: Link, family: str = "le2012", ranks: tuple[int, ...] = PAPER_RANKS, batch: int = 100
            ) -> list[dict[str, Any]]:
    pts = [project_point(c, n, batch, link) for c, n in zip(paper_configs(family, ranks, batch), ranks)]
    t1 = pts[0]
    for p in pts:
        p["time_vs_1"] = p["update_s"] / t1["update_s"]
        p["throughput_x"] = (p["flops_per_update"] / p["update_s"]) / (t1["flops_per_update"] / t1["update_s"])
    return pts


def link_from_sweep(doc: dict[str, Any]) -> dict[str, float]:
    """Per-rank compute rate (1-rank weak point) and an effective bandwidth (halo bytes of the
    multi-rank points over their measured communication time) from a previous sweep's JSON."""
    pts = doc["points"]
    one = [p for p in pts if p["ranks"] == 1]
    if not one:
        raise ReproError("the sweep JSON has no 1-rank point to take a compute rate from")
    out = {"gflops": max(p["gflops_per_rank"] for p in one)}
    bws = []
    for p in pts:
        if p["ranks"] > 1 and p["comm_share"] > 0:
            cfg = sized_config(doc["family"], p["size"], p["batch"])
            vol = max(v["bytes"] for v in comm_volume(cfg, p["ranks"], p["batch"]))
            bws.append(vol * 8 / (p["comm_share"] * p["update_s"]) / 1e9)
    if bws:
        out["bandwidth_gbps"] = min(bws)  # the slowest seen: copies and waits included
    return out
