"""Scaling of the joint fine-tuning update over model sizes and rank counts (Coates et al. 2013, Fig. 3-4).

Long because it holds several jobs of one command (growing a config, measuring, launching each
point under mpiexec, projecting the paper's configurations); they could live in modules of their own.

    repro scaling-sweep                                   # weak + strong, 1 and 2 ranks, small CPU family
    repro scaling-sweep --ranks 1,2,4 --mode weak --steps 5 --out results/scaling
    repro scaling-sweep --project                         # paper's 1..64 GPUs, 185M..11.2B parameters
    repro scaling-sweep --project --from results/scaling/sweep.json
    repro --device gpu scaling-sweep --largest --family le2012 --batch 100   # the largest network 1 GPU holds

Every configuration runs in its own ``mpiexec -n N python -m repro.cli scaling-sweep --worker``
launch, one BLAS / kernel thread per rank unless ``--threads`` says otherwise, so a run never
inherits another's memory pool or thread pool.

Model sizes. A *family* is a base network (``cpu``: a small two-stage net that times in a
fraction of a second; ``le2012``/``mini``/a .toml: that config's stage shapes) and a size ``m``
means "the input area grown until the encoding weights W1 number about m x the base's": the
input keeps the aspect ratio of the m-rank process grid (1x2 for m=2, 2x2 for 4, 2x4 for 8, ...),
so with m ranks (weak scaling) every rank gets a tile like the base's, as in the paper, where
the network grows from 185M parameters on 1 GPU to 11.2B on 64. Valid filtering, pooling and LCN
shrink each layer by a constant, and tiles split by whole columns, so among the inputs near that
aspect ratio the one whose busiest rank (on m ranks) holds closest to the base's weights is taken:
per-rank work then stays within 1% of the base's (``busiest_rank_params``). The exact counts are
reported.

What is measured, per configuration (rank 0 reports, after one warm-up update):
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

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from repro import atomic
from repro.engine.backend import device_name
from repro.errors import ReproError
from repro.model.config import NetworkConfig, from_dict, load_config
from repro.model.memory import _FakeWorld, flops_per_update

# The default family: cheap on CPUs, the stage shape of the paper's networks (LC -> L2 pool -> LCN,
# several maps per location), 3-channel input, per-rank tile of 24x24 first-layer locations.
CPU_BASE = {
    "name": "scaling-cpu", "input": {"size": 31, "channels": 3},
    "stages": [{"maps": 16, "filter": 8, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 3},
               {"maps": 16, "filter": 4, "stride": 1, "pool": 3, "pool_stride": 1, "lcn": 3}],
    "train": {"optimizer": "adagrad", "lr": 0.05, "batch": 16},
    "notes": "scaling family base: 2 stages, 16 maps/location, 3x31x31 input",
}

# The paper's points (Coates et al. 2013, as recalled in PAPER.md part 2).
PAPER = {"params_1gpu": 185e6, "params_64gpu": 11.2e9, "max_throughput_x": 47.0,
         "note": "on 64 GPUs one update of the 11.2B network takes about as long as the 185M network's on 1 GPU"}
PAPER_RANKS = (1, 4, 9, 16, 36, 64)


def grid_shape(m: int) -> tuple[int, int]:
    """The most square (gy <= gx) factorisation of m: the aspect ratio size m's input keeps."""
    gy = max(d for d in range(1, int(math.isqrt(m)) + 1) if m % d == 0)
    return gy, m // gy


def base_config(family: str) -> NetworkConfig:
    if family == "cpu":
        return from_dict(CPU_BASE, "scaling-cpu")
    return load_config(family)


def _resized(cfg: NetworkConfig, h: int, w: int, name: str) -> NetworkConfig | None:
    try:
        from repro.model.config import validate

        return validate(replace(cfg, input_size=(h, w), name=name), name)
    except ReproError:
        return None


def _on_aspect(base: NetworkConfig, h: int, aspect: tuple[int, int], name: str, w: int | None = None
               ) -> NetworkConfig | None:
    """The base's stages on an input h rows high and, unless ``w`` is given, round(h*gx/gy) wide."""
    gy, gx = aspect
    return _resized(base, h, max(1, round(h * gx / gy)) if w is None else w, name)


def busiest_rank_params(cfg: NetworkConfig, ranks: int) -> int:
    """W1 weights of the rank with the most, on the process grid ``Layout`` builds for ``ranks``: its
    share of the LC work, which sets the update time (the slowest rank's)."""
    from repro.engine.partition import Partition, ProcGrid, box_shape

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
    from repro.model.memory import estimate, human

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


def _mem_available() -> int:
    """The node's available memory (MemAvailable: free plus reclaimable caches), in bytes."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:  # not Linux: free pages only
        lines = []
    for line in lines:
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) > 1 and fields[1].isdigit():
            return int(fields[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rank_memory_bytes(xp: Any, w: Any) -> int:
    """Bytes one rank may use: its GPU's free memory, or its node's available memory, shared evenly
    among the ranks on the same GPU or node; the smallest over ranks (collective)."""
    import platform

    if xp is not np:
        dev = xp.cuda.Device()
        free, key = int(dev.mem_info[0]), (platform.node(), int(dev.id))
    else:
        free, key = _mem_available(), (platform.node(), -1)
    keys = w.allgather(key)
    return int(min(w.allgather(free // keys.count(key))))


# ---- one configuration, on every rank of an mpiexec launch ------------------------------------------
def measure(cfg: NetworkConfig, batch: int, steps: int, xp: Any = np, seed: int = 0) -> dict[str, Any]:
    """Time ``steps`` fine-tuning updates on the current world; rank 0's dict has everyone's figures."""
    from repro.engine.comm import world
    from repro.engine.timing import synchronize
    from repro.experiments.breakdown import profile_update
    from repro.model.network import Network, apply_update
    from repro.model.optim import Optimizer

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
    from repro.model.memory import estimate

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


# ---- the sweep: one mpiexec launch per configuration ----------------------------------------------
@dataclass(frozen=True)
class Point:
    mode: str  # "weak", "strong" or "largest"
    ranks: int
    size: int


def plan(ranks: list[int], sizes: list[int], mode: str, weak_base: int = 1) -> list[Point]:
    pts: list[Point] = []
    if mode in ("weak", "both"):
        pts += [Point("weak", n, weak_base * n) for n in ranks]
    if mode in ("strong", "both"):
        pts += [Point("strong", n, m) for m in sizes for n in ranks]
    return pts


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    import shutil

    found = shutil.which("mpiexec")
    if not found:
        raise ReproError("no mpiexec found (pip install mpich, or put one on PATH)")
    return found


def launch(pt: Point, family: str, batch: int, steps: int, threads: int, device: str, timeout: float,
           extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run one configuration in its own mpiexec job and return rank 0's measurement (``extra``: more
    worker options, e.g. ``--largest``)."""
    with tempfile.TemporaryDirectory(prefix="repro-scaling-") as d:
        out = Path(d) / "point.json"
        cmd = [mpiexec(), "-n", str(pt.ranks), sys.executable, "-m", "repro.cli", "--device", device,
               "scaling-sweep", "--worker", "--family", family, "--size", str(pt.size), "--batch", str(batch),
               "--steps", str(steps), "--worker-json", str(out), *extra]
        env = dict(os.environ)
        t = str(threads)
        env.update({"OMP_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MKL_NUM_THREADS": t,
                    "REPRO_KERNEL_THREADS": t})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ReproError(f"{pt.mode} scaling, {pt.ranks} rank(s), size {pt.size}: no result in {timeout:.0f} s")
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            said = [ln[len("Error: "):] for ln in tail if ln.startswith("Error: ")]
            if said:  # the worker's own one-line error (bad input): say it once
                raise ReproError(f"{pt.mode}, {pt.ranks} rank(s): {said[-1]}")
            raise ReproError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))
        r = json.loads(out.read_text())
    r.update({"mode": pt.mode, "size": pt.size, "threads_per_rank": threads})
    return r


def sweep(points: list[Point], repeat: int, run_one: Any, progress: Any = None) -> list[dict[str, Any]]:
    """Launch every point ``repeat`` times, round-robin (round r launches each point once, back to
    back, so a slow spell of a shared machine hits the points of one round alike), and fold each
    point's launches into one result: the median launch's figures (breakdown, memory and shares
    come from that one launch), its range, and every launch in ``runs`` (round order)."""
    runs: dict[Point, list[dict[str, Any]]] = {pt: [] for pt in points}
    for r in range(repeat):
        for pt in points:
            if progress is not None:
                progress(r, pt)
            runs[pt].append(run_one(pt))
    return [median_run(runs[pt]) for pt in points]


def median_run(launches: list[dict[str, Any]]) -> dict[str, Any]:
    """The launch with the median update time (the faster middle one for an even count), with
    ``runs`` (each launch's time and shares, in launch order) and the range of update times."""
    order = sorted(range(len(launches)), key=lambda i: launches[i]["update_s"])
    out = dict(launches[order[(len(order) - 1) // 2]])
    out["runs"] = [{k: r[k] for k in ("update_s", "comm_share", "wait_share")} for r in launches]
    out["update_s_min"] = launches[order[0]]["update_s"]
    out["update_s_max"] = launches[order[-1]]["update_s"]
    return out


def add_efficiency(points: list[dict[str, Any]]) -> None:
    """Weak: t(fewest ranks) / t(n) with the model grown in proportion. Strong: speedup and speedup
    per added rank, per size. ``throughput_x``: LC work per second relative to the reference run.

    With repeated launches (``runs``), ``efficiency`` is the median over rounds of each round's
    ratio (the two launches of a round ran minutes apart at most), ``efficiency_rounds`` every
    round's; without, the ratio of the two update times."""
    for p in points:
        same = [q for q in points if q["mode"] == p["mode"] and (p["mode"] == "weak" or q["size"] == p["size"])]
        r0 = min(same, key=lambda q: q["ranks"])
        p["throughput_x"] = (p["flops_per_update"] / p["update_s"]) / (r0["flops_per_update"] / r0["update_s"])
        per_rank = r0["ranks"] / p["ranks"]
        t0s = [r["update_s"] for r in r0.get("runs", [{"update_s": r0["update_s"]}])]
        ts = [r["update_s"] for r in p.get("runs", [{"update_s": p["update_s"]}])]
        if len(t0s) != len(ts):  # not from one round-robin sweep: compare the medians only
            t0s, ts = [r0["update_s"]], [p["update_s"]]
        rounds = [a / b * (1.0 if p["mode"] == "weak" else per_rank) for a, b in zip(t0s, ts)]
        p["efficiency"] = float(np.median(rounds))
        if len(rounds) > 1 and p is not r0:
            p["efficiency_rounds"] = rounds
        if p["mode"] == "weak":
            # the grown model is only about n x the reference (valid layers shrink): per unit of work
            p["efficiency_work"] = p["efficiency"] * (p["flops_per_update"] / r0["flops_per_update"]) * per_rank
        else:
            p["speedup"] = p["efficiency"] / per_rank


def plot(points: list[dict[str, Any]], path: Path, title: str, dpi: int = 110) -> None:
    """Update time and efficiency against ranks, weak and strong (format from the suffix, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("weak", "o"), ("strong", "s")):
        sizes = sorted({p["size"] for p in points if p["mode"] == mode}) if mode == "strong" else [None]
        for m in sizes:
            pts = sorted((p for p in points if p["mode"] == mode and (m is None or p["size"] == m)),
                         key=lambda p: p["ranks"])
            if not pts:
                continue
            lab = "weak (model grows with ranks)" if mode == "weak" else f"strong (size x{m})"
            x = [p["ranks"] for p in pts]
            t = [p["update_s"] * 1e3 for p in pts]
            spread = [[ti - p.get("update_s_min", p["update_s"]) * 1e3 for ti, p in zip(t, pts)],
                      [p.get("update_s_max", p["update_s"]) * 1e3 - ti for ti, p in zip(t, pts)]]
            a.errorbar(x, t, yerr=spread, marker=marker, capsize=3, label=lab)  # range of repeated launches
            e = [p["efficiency"] for p in pts]
            rounds = [p.get("efficiency_rounds", [p["efficiency"]]) for p in pts]
            b.errorbar(x, e, yerr=[[ei - min(r) for ei, r in zip(e, rounds)], [max(r) - ei for ei, r in zip(e, rounds)]],
                       marker=marker, capsize=3, label=lab)
    a.set(xlabel="ranks", ylabel="ms per update", title="fine-tuning update time")
    b.set(xlabel="ranks", ylabel="efficiency", title="scaling efficiency", ylim=(0, 1.2))
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from repro.report import figure_format

    atomic.save_figure(fig, path, dpi=dpi, format=figure_format(path))


def fmt_ms(p: dict[str, Any]) -> str:
    """Update time in ms, with the range of repeated launches in brackets."""
    ms = f"{p['update_s'] * 1e3:.1f}"
    if len(p.get("runs", [])) > 1:
        ms += f" ({p['update_s_min'] * 1e3:.1f}-{p['update_s_max'] * 1e3:.1f})"
    return ms


def fmt_efficiency(p: dict[str, Any]) -> str:
    """Efficiency, with the range over rounds of repeated launches in brackets."""
    r = p.get("efficiency_rounds")
    return f"{p['efficiency']:.2f}" + (f" ({min(r):.2f}-{max(r):.2f})" if r else "")


def markdown(doc: dict[str, Any]) -> str:
    """The sweep as a Markdown table (results/scaling/README.md, results/reference/scaling-cpu.md)."""
    lines = [f"# Scaling sweep: {doc['family']} family, {doc['device']}", "",
             f"{doc['when']}; {doc['host']}; {doc['threads_per_rank']} thread(s) per rank; batch {doc['batch']}; "
             f"mean of {doc['steps']} updates after 1 warm-up.", "",
             "| mode | ranks | size | input | W1 params | ms/update | images/s | GFLOP/s/rank | comm % | "
             "MPI wait % | peak MiB/rank | est. MiB/rank | efficiency | weak eff. per work |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in doc["points"]:
        per_work = f"{p['efficiency_work']:.2f}" if "efficiency_work" in p else ""
        lines.append(
            f"| {p['mode']} | {p['ranks']} | x{p['size']} | {p['input_size'][0]}x{p['input_size'][1]} | "
            f"{p['parameters_W1'] / 1e6:.2f}M | {fmt_ms(p)} | {p['images_per_s']:.1f} | "
            f"{p['gflops_per_rank']:.2f} | {100 * p['comm_share']:.1f} | {100 * p['wait_share']:.1f} | "
            f"{p['peak_bytes'] / 2**20:.1f} | {p['estimate_bytes'] / 2**20:.1f} | {fmt_efficiency(p)} | {per_work} |")
    repeat = doc.get("repeat", 1)
    lines += ["", "efficiency: weak = t(1 rank) / t(n ranks, n x the model); strong = speedup / n. "
              "Weak, per work: LC FLOP/s per rank at n over the same at 1 rank (the grown model is only "
              "about n x the reference)."]
    if repeat > 1:
        lines += [f"{repeat} launches of every point, round-robin: each row is the median launch (range in "
                  "brackets); efficiency is the median over rounds of each round's ratio (range in brackets)."]
    lines += [
              "comm %: halo fetch + scatter-add + loss all-reduce (window copies included) over the update, "
              "largest rank; MPI wait %: the Waitall part alone.",
              "peak: held parameters/optimiser state/images + tracemalloc peak of one update (CPU); "
              "est.: repro.model.memory.estimate, largest rank.", ""]
    if doc.get("notes"):
        lines += [doc["notes"], ""]
    return "\n".join(lines)


# ---- projection to the paper's cluster ----------------------------------------------------------------
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
    from repro.model.layout import Layout

    per = []
    for r in range(ranks):
        lay = Layout.build(cfg, _FakeWorld(r, ranks))
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


def host_info() -> str:
    import platform

    return f"{platform.node() or 'host'} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
