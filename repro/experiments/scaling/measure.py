"""One configuration's measurement, run on every rank of its own mpiexec launch (by ``worker.py``).

What is measured (rank 0 reports, after one warm-up update):
    update_s        wall time of one update (forward, backward and optimiser through all stages),
                    the slowest rank's, mean over ``steps`` updates between barriers
    images_per_s    batch / update_s
    gflops_per_rank flops_per_update(cfg, batch) / ranks / update_s  (LC GEMM work only)
    comm_share      time in halo fetch + scatter-add + loss all-reduce (window copies included)
                    over update_s, the largest over ranks (``wait_share``: the MPI waits alone)
    peak_bytes      per rank, the largest over ranks: CPU = bytes of parameters, optimiser state
                    and images held before the update + the tracemalloc peak of one update
                    (NumPy reports its allocations to tracemalloc); ``maxrss_bytes`` is the
                    process's resident set (Python, MPI and BLAS included). GPU = the CuPy
                    memory pool's total bytes after the updates (the pool keeps its peak).
"""
from __future__ import annotations

import resource
import tracemalloc
from typing import Any

import numpy as np

from repro.engine.backend import device_name
from repro.engine.comm import world
from repro.engine.backend import synchronize
from repro.experiments.breakdown import profile_update
from repro.model.config import NetworkConfig
from repro.model.memory import estimate, flops_per_update
from repro.model.network import Network, apply_update
from repro.model.optim import Optimizer


def measure_update(cfg: NetworkConfig, batch: int, steps: int, xp: Any = np, seed: int = 0) -> dict[str, Any]:
    """Time ``steps`` fine-tuning updates on the current world; rank 0's dict has everyone's figures
    (the other ranks get ``{}``)."""
    w = world()
    net = Network.create(cfg, seed, xp=xp, w=w)
    opt = Optimizer.from_config(cfg.train)
    rng = np.random.default_rng([seed, 1])
    images = xp.asarray(rng.standard_normal((batch, cfg.channels, *cfg.input_size)).astype(np.float32))
    bd = profile_update(net, opt, images, steps=steps, warmup=1)

    gpu = xp is not np
    if gpu:
        peak = int(xp.get_default_memory_pool().total_bytes())
    else:  # resident arrays (not traced: allocated before tracemalloc starts) + one update's peak
        held = sum(int(a.nbytes) for a in net.params.values()) + sum(int(a.nbytes) for a in opt.state.values())
        held += int(images.nbytes)
        tracemalloc.start()
        _, grads = net.finetune_loss_and_grads(images)
        apply_update(net, opt, grads)
        del grads
        synchronize()
        peak = held + tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    mine = {"rank": w.rank, "update_s": bd.update_s, "comm_s": bd.comm_s, "wait_s": bd.wait_s,
            "peak_bytes": peak, "maxrss_bytes": rss}
    every = w.allgather(mine)
    if not w.is_root:
        return {}
    update_s = max(r["update_s"] for r in every)
    flops = flops_per_update(cfg, batch)
    est = estimate(cfg, w.size, batch, gpu=gpu)
    return {
        "config": cfg.name, "input_size": list(cfg.input_size), "ranks": w.size, "batch": batch, "steps": steps,
        "parameters_W1": int(sum(cfg.parameter_counts())), "flops_per_update": flops,
        "device": "gpu" if gpu else "cpu", "device_name": device_name(xp),
        "update_s": update_s, "images_per_s": batch / update_s,
        "gflops_per_rank": flops / w.size / update_s / 1e9,
        "comm_share": max(r["comm_s"] / r["update_s"] for r in every),
        "wait_share": max(r["wait_s"] / r["update_s"] for r in every),
        "peak_bytes": max(r["peak_bytes"] for r in every),
        "maxrss_bytes": max(r["maxrss_bytes"] for r in every),
        "estimate_bytes": max(e.total for e in est),
        "peak_memory_kind": "cupy pool total" if gpu else "held arrays + tracemalloc peak of one update",
        "per_rank": every, "breakdown_rank0": bd.as_dict(),
    }
