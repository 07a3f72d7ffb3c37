"""Scenarios run both serially (in the pytest process) and under ``mpiexec -n N``.

``python tests/support/scenarios.py NAME OUT.npz`` (tests/ on PYTHONPATH, as ``support.mpi.run_mpi``
sets) runs scenario NAME on every rank; rank 0 writes what it computed. The tests compare that to the same scenario run on one rank.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from repro.engine.comm import abort_on_error, world
from repro.engine.distarray import DistArray, HaloPlan, scatter_add
from repro.engine.partition import Partition, ProcGrid
from repro.model.config import from_dict
from support import fakecupy
from repro.model.network import (Network, apply_update, compute_features, gather_activation, gather_tiles,
                                 load_checkpoint, local_features, neuron_features, save_checkpoint, standardize,
                                 unit_gradient)
from repro.model.optim import Optimizer

SMALL = {
    "name": "small-test", "input": {"size": [14, 13], "channels": 2},
    "stages": [
        {"maps": 3, "filter": 4, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 3, "lcn_eps": 0.01},
        {"maps": 2, "filter": 3, "stride": 1, "pool": 2, "pool_stride": 1, "lcn": 3, "lcn_eps": 0.01},
    ],
    # untied decoders with unit-norm encoders: the most general gradient (W2 its own tensor)
    "rica": {"lambda": 0.1, "eps": 0.01, "tied": False, "normalize_encoder": True},
    "train": {"optimizer": "adagrad", "lr": 0.05, "batch": 4},
}


# the same network with input contrast normalisation and every window reconstructing itself
WINDOW = {**SMALL, "name": "small-window", "input": {**SMALL["input"], "lcn": 3, "lcn_sigma": 1.0, "lcn_eps": 0.5},
          "rica": {**SMALL["rica"], "reconstruct": "window"}}


def images(b: int = 4, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 2, 14, 13)).astype(np.float32)


def scenario_distarray() -> dict[str, np.ndarray]:
    """fetch equals slicing the global array; scatter_add equals adding windows into it."""
    w = world()
    rng = np.random.default_rng(0)
    G = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    V = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    grid = ProcGrid.for_ranks(w.size, (13, 11))
    src = Partition((13, 11), grid)
    out = Partition((5, 4), grid)
    plan = HaloPlan(src, out.windows(4, 2), w.rank)
    y0, y1, x0, x1 = src.tile(w.rank)
    a = DistArray(G[:, :, y0:y1, x0:x1].copy(), src, w)
    win = plan.window
    got = a.fetch(plan)
    ok_fetch = np.array_equal(got, G[:, :, win[0]:win[1], win[2]:win[3]])
    back = scatter_add(V[:, :, win[0]:win[1], win[2]:win[3]].copy(), plan, w)
    cover = np.zeros((13, 11), np.float32)
    for b in out.windows(4, 2):
        cover[b[0]:b[1], b[2]:b[3]] += 1
    expect = (V * cover)[:, :, y0:y1, x0:x1]
    ok_adj = np.allclose(back, expect, rtol=1e-6, atol=1e-6)
    flags = w.comm.allgather((ok_fetch, ok_adj))
    return {"fetch_ok": np.array([f for f, _ in flags]), "adjoint_ok": np.array([a for _, a in flags])}


def scenario_distarray_gpu() -> dict[str, np.ndarray]:
    """fetch and scatter_add with CuPy tiles (device buffers to MPI, or staged through the host)."""
    import cupy as cp

    w = world()
    rng = np.random.default_rng(0)
    G = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    grid = ProcGrid.for_ranks(w.size, (13, 11))
    src, out = Partition((13, 11), grid), Partition((5, 4), grid)
    plan = HaloPlan(src, out.windows(4, 2), w.rank)
    y0, y1, x0, x1 = src.tile(w.rank)
    got = DistArray(cp.asarray(G[:, :, y0:y1, x0:x1]), src, w).fetch(plan)
    win = plan.window
    ok_fetch = np.array_equal(got.get(), G[:, :, win[0]:win[1], win[2]:win[3]])
    back = scatter_add(cp.asarray(G[:, :, win[0]:win[1], win[2]:win[3]]), plan, w).get()
    cover = np.zeros((13, 11), np.float32)
    for b in out.windows(4, 2):
        cover[b[0]:b[1], b[2]:b[3]] += 1
    ok_adj = np.allclose(back, (G * cover)[:, :, y0:y1, x0:x1], rtol=1e-6, atol=1e-6)
    flags = w.comm.allgather((ok_fetch, ok_adj))
    return {"fetch_ok": np.array([f for f, _ in flags]), "adjoint_ok": np.array([a for _, a in flags])}


def scenario_network(variant: str = "image") -> dict[str, np.ndarray]:
    """Forward, layer-wise and joint losses/gradients, and a few training steps."""
    cfg = from_dict(WINDOW if variant == "window" else SMALL)
    net = Network.create(cfg, seed=3, xp=np, w=world())
    x = images()
    out: dict[str, np.ndarray] = {}
    caches = net.forward(x)
    for i, c in enumerate(caches):
        L = net.layout.stages[i]
        for name, tile, part in (("y", c.y, L.part_f), ("p", c.p, L.part_p), ("z", c.z, L.part_n)):
            out[f"act{i}.{name}"] = gather_activation(net, tile, part, root=None)
    for i in range(len(cfg.stages)):
        loss, grads = net.layer_loss_and_grads(x, i)
        out[f"layer{i}.loss"] = np.array(loss)
        for n, g in gather_tiles(net, grads, root=None).items():
            out[f"layer{i}.grad.{n}"] = g
    loss, grads = net.finetune_loss_and_grads(x)
    out["finetune.loss"] = np.array(loss)
    for n, g in gather_tiles(net, grads, root=None).items():
        out[f"finetune.grad.{n}"] = g
    out["features"] = compute_features(net, x, 1, "lcn", batch=3)
    for sub in ("filter", "pool", "lcn"):
        v, g = unit_gradient(net, standardize(x[:1]), 1, sub, (1, 1, 0))
        out[f"unitgrad.{sub}"], out[f"unitval.{sub}"] = g, np.array(v)
    # SGD: its update is linear in the gradient, so float32 round-off stays round-off. (AdaGrad's
    # first step is lr * g / |g|: a gradient that is zero up to round-off moves by +-lr.)
    opt = Optimizer("sgd", 0.05, 0.9)
    for step in range(3):
        _, grads = net.finetune_loss_and_grads(images(seed=100 + step))
        apply_update(net, opt, grads)
    for n, p in gather_tiles(net, net.params, root=None).items():
        out[f"trained.{n}"] = p
    return out


# A network whose top layers are tiny (2x2 pooling grid): on 3 or 6 ranks some tiles are empty.
TINY_TOP = {
    "name": "tiny-top", "input": {"size": [11, 11], "channels": 1},
    "stages": [
        {"maps": 2, "filter": 3, "stride": 1, "pool": 2, "pool_stride": 1, "lcn": 3, "lcn_eps": 0.01},
        {"maps": 3, "filter": 3, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 1, "lcn_eps": 0.01},
    ],
    "rica": SMALL["rica"],
    "train": {"optimizer": "adagrad", "lr": 0.05, "batch": 4},
}


def scenario_local_features() -> dict[str, np.ndarray]:
    """Rank-local features and one neuron's column, against the gathered matrix; the best neuron
    (and held-out split) chosen across ranks, against the serial protocol on that matrix."""
    from repro.experiments import evaluate as ev

    w = world()
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(11)
    for name, d in (("small", SMALL), ("tiny", TINY_TOP)):
        cfg = from_dict(d)
        net = Network.create(cfg, seed=3, xp=np, w=world())
        C, (H, W) = cfg.channels, cfg.input_size
        x = rng.standard_normal((9, C, H, W)).astype(np.float32)
        y = np.arange(9) % 3 == 0
        for stage in range(len(cfg.stages)):
            for sub in ("filter", "pool", "lcn"):
                key = f"{name}.{stage}.{sub}"
                full = compute_features(net, x, stage, sub, batch=4)
                F, idx = local_features(net, x, stage, sub, batch=4)
                ok = F.shape == (9, len(idx)) and np.array_equal(F, full[:, idx])
                flags = w.comm.allgather((bool(ok), idx))
                allidx = np.concatenate([i for _, i in flags])
                out[f"{key}.local_ok"] = np.array([f for f, _ in flags])
                out[f"{key}.cover_ok"] = np.array(np.array_equal(np.sort(allidx), np.arange(full.shape[1])))
                out[f"{key}.empty_tiles"] = np.array(sum(len(i) == 0 for _, i in flags))
                for j in (0, full.shape[1] // 2, full.shape[1] - 1):
                    col = neuron_features(net, x, stage, sub, j, batch=4)
                    out[f"{key}.col{j}_ok"] = np.array(np.array_equal(col, full[:, j]))
                best, owner, k = ev.distributed_best(w, F, idx, y)
                out[f"{key}.best_ok"] = np.array(best == ev.best_neuron(full, y))
                out[f"{key}.held_out_ok"] = np.array(ev.distributed_held_out(w, F, idx, y, seed=2)
                                                     == ev.held_out(full, y, seed=2))
                col = ev.column_to_root(w, F, owner, k)
                if w.is_root:
                    out[f"{key}.column_ok"] = np.array(np.array_equal(col, full[:, best["index"]]))
    return out


def scenario_checkpoint_write(path: str) -> dict[str, np.ndarray]:
    """Train two steps with SGD and write a checkpoint from this many ranks."""
    cfg = from_dict(SMALL)
    net = Network.create(cfg, seed=5, xp=np, w=world())
    opt = Optimizer("sgd", 0.01, 0.9)
    for step in range(2):
        _, grads = net.finetune_loss_and_grads(images(seed=200 + step))
        apply_update(net, opt, grads)
    save_checkpoint(net, opt, path, step=2)
    out = {f"param.{n}": a for n, a in gather_tiles(net, net.params, root=None).items()}
    out.update({f"state.{n}": a for n, a in gather_tiles(net, opt.state, root=None).items()})
    return out


def scenario_checkpoint_read(path: str) -> dict[str, np.ndarray]:
    """Load a checkpoint written on another rank count and take one more step."""
    opt = Optimizer("sgd", 0.01, 0.9)
    net, manifest = load_checkpoint(path, None, np, world(), opt=opt)
    out = {f"param.{n}": a for n, a in gather_tiles(net, net.params, root=None).items()}
    out.update({f"state.{n}": a for n, a in gather_tiles(net, opt.state, root=None).items()})
    _, grads = net.finetune_loss_and_grads(images(seed=300))
    apply_update(net, opt, grads)
    out.update({f"next.{n}": a for n, a in gather_tiles(net, net.params, root=None).items()})
    return out


def scenario_fail(which_rank: str) -> dict[str, np.ndarray]:
    """One rank raises while the others wait in a collective: the job must end, not hang."""
    w = world()
    if w.rank == int(which_rank) % w.size:
        time.sleep(0.2)
        raise RuntimeError(f"deliberate failure on rank {w.rank}")
    w.comm.allreduce(1)  # the others block here until the abort ends them
    time.sleep(60)
    return {}


SCENARIOS = {"distarray": scenario_distarray, "distarray-gpu": scenario_distarray_gpu, "network": scenario_network,
             "local-features": scenario_local_features,
             "checkpoint-write": scenario_checkpoint_write, "checkpoint-read": scenario_checkpoint_read,
             "fail": scenario_fail}


def main() -> None:
    fakecupy.install_if_asked()
    name, out_path, *rest = sys.argv[1:]
    with abort_on_error():
        result = SCENARIOS[name](*rest)
        if world().is_root and out_path != "-":
            np.savez(out_path, **result)


if __name__ == "__main__":
    main()
