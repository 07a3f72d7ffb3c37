"""Benchmark the locally connected kernels against a dense GEMM and the per-location loop.

    python benchmarks/bench_kernels.py                       # auto device, JSON to results/bench/
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_kernels.py --device cpu --json out.json

Why these baselines (Coates et al. 2013): a locally connected layer does the FLOPs of a dense
GEMM in many small blocks; the question is how close to the dense-GEMM rate of the same device
the block-sparse batched kernels get, and how much they beat the naive peer scheme of one GEMM
per output location issued from a Python loop. Timings: best of 3 after one warm-up, with the
GPU stream synchronised before the clock is read. A benchmark, not a test: it asserts nothing.

Timings: after one warm-up of each, the kernels of a shape are timed round-robin (dense GEMM,
forward, ..., dense GEMM, forward, ...) and each keeps its best of --repeats, so a burst of load
from other processes hits the kernels and their dense-GEMM yardstick alike (on a shared machine
compare the ratios, not the milliseconds). Each timed call starts after a short pause, so the
dense GEMM's spinning OpenBLAS threads do not slow the kernel timed after it.

The "stage" rows time one stage's forward+backward as the model runs it (LC forward, L2 pool 5
stride 1, LCN 5 forward; LCN, pool backward; LC backward-data and backward-weights) and report
the share of pooling + LCN (the issue asks <= 25%).

Where the rest goes (CPU): "per-location GEMMs alone" runs the kernels' GEMMs on columns laid out
in advance, both operands streaming from memory; "columns in cache" gives every location the
first location's columns (a stride-0 view), as a gather-then-GEMM scheme leaves them in cache;
"both operands in cache" also the first location's weights: BLAS's own rate on the shape.

lc_backward_weights is timed as the trainer calls it, writing into the previous step's gradient
(``out=``); the "new output" row times it allocating a fresh weight-sized array, whose page faults
a CPU pays on every call when the array is above glibc's 32 MiB mmap threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from repro.engine.backend import device_name, select_backend
from repro.engine.kernels import (
    l2pool_backward,
    l2pool_forward,
    lc_backward_data,
    lc_backward_weights,
    lc_flops,
    lc_forward,
    lc_output_shape,
    lcn_backward,
    lcn_forward,
)
from repro.engine.kernels._parallel import map_chunks, n_threads

# name: (batch, input maps, image side, k, stride, F)
SHAPES = {
    "le-like": (32, 8, 48, 18, 1, 8),
    "coates-like": (100, 8, 48, 16, 4, 64),
}
POOL, POOL_STRIDE, LCN, LCN_SIGMA, EPS = 5, 1, 5, 1.0, 1e-2  # Le et al. 2012 (configs/le2012.toml)
# Pause before each timed call: after a multithreaded GEMM, OpenBLAS's worker threads busy-wait
# for a while (about 2^28 cycles by default) and would steal the cores of whatever runs next.
SETTLE_S = 0.2
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "REPRO_KERNEL_THREADS")


def best_times(fns: dict[str, Callable[[], Any]], sync: Callable[[], None], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` round-robin rounds, after one warm-up each."""
    for fn in fns.values():
        fn()
    sync()
    best = {key: float("inf") for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def bench_shape(name: str, shape: tuple[int, ...], xp: Any, sync: Callable[[], None], repeats: int,
                backend_is_gpu: bool) -> dict:
    B, C, H, k, s, F = shape
    OY, OX = lc_output_shape((H, H), k, s)
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = xp.asarray(rng.standard_normal((B, C, H, H), dtype=f32))
    W = xp.asarray(rng.standard_normal((OY, OX, F, C, k, k), dtype=f32))
    dy = xp.asarray(rng.standard_normal((B, F, OY, OX), dtype=f32))
    flops = lc_flops(B, W.shape)
    n = max(1, round((flops / 2) ** (1 / 3)))
    a = xp.asarray(rng.standard_normal((n, n), dtype=f32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=f32))

    def per_location_loop() -> None:
        # the peer scheme: one small GEMM per output location, issued from Python
        y = xp.empty((B, F, OY, OX), dtype=f32)
        for i in range(OY):
            for j in range(OX):
                win = x[:, :, i * s : i * s + k, j * s : j * s + k].reshape(B, -1)  # (B, K)
                y[:, :, i, j] = win @ W[i, j].reshape(F, -1).T  # (B, F)

    # the per-location GEMMs alone, on operands laid out in advance (no window gathering, no
    # layout moves): the ceiling of any scheme that does one dense GEMM per output location
    L, K = OY * OX, C * k * k
    Wm = W.reshape(L, F, K)
    cols = xp.asarray(rng.standard_normal((L, K, B), dtype=f32))
    yl = xp.empty((L, F, B), dtype=f32)

    def gemms(w: Any, c: Any) -> Callable[[], None]:
        if backend_is_gpu:
            return lambda: xp.matmul(w, c, out=yl)
        # as the CPU kernels run them: locations spread over the kernel thread pool
        return lambda: map_chunks(lambda lo, hi: xp.matmul(w[lo:hi], c[lo:hi], out=yl[lo:hi]), L, 1)

    # CPU: where the rest of the time goes. The same GEMMs with every location reading the first
    # location's columns (stride-0 view: the columns stay in cache, as a gather-then-GEMM scheme
    # leaves them; only the weights stream from memory), and with both operands the first
    # location's (everything in cache: BLAS's own rate on the (F, K) @ (K, B) shape)
    cols1 = xp.broadcast_to(cols[:1], cols.shape)
    cached = {} if backend_is_gpu else {
        "gemms_cols_cached": gemms(Wm, cols1),
        "gemms_all_cached": gemms(xp.broadcast_to(Wm[:1], Wm.shape), cols1),
    }

    # one stage as the model runs it: the LC output y feeds pooling, pooling feeds LCN
    y = lc_forward(x, W, s)
    p = l2pool_forward(y, POOL, POOL_STRIDE, EPS)
    dn = xp.asarray(rng.standard_normal((B, F, p.shape[2] - LCN + 1, p.shape[3] - LCN + 1), dtype=f32))
    dW = xp.zeros_like(W)  # the trainer writes each step's weight gradient over the last one's
    t = best_times({
        "dense_gemm": lambda: a @ b,
        "lc_forward": lambda: lc_forward(x, W, s),
        "lc_backward_data": lambda: lc_backward_data(dy, W, s, x.shape),
        "lc_backward_weights": lambda: lc_backward_weights(x, dy, s, k, out=dW),
        "lc_backward_weights_fresh": lambda: lc_backward_weights(x, dy, s, k),
        "per_location_loop": per_location_loop,
        "gemms_alone": gemms(Wm, cols),
        **cached,
        "l2pool_forward": lambda: l2pool_forward(y, POOL, POOL_STRIDE, EPS),
        "l2pool_backward": lambda: l2pool_backward(p, y, p, POOL, POOL_STRIDE),
        "lcn_forward": lambda: lcn_forward(p, LCN, LCN_SIGMA, EPS),
        "lcn_backward": lambda: lcn_backward(dn, p, LCN, LCN_SIGMA, EPS),
    }, sync, repeats)
    pool_lcn = t["l2pool_forward"] + t["l2pool_backward"] + t["lcn_forward"] + t["lcn_backward"]
    t["forward+backward"] = t["lc_forward"] + t["lc_backward_data"] + t["lc_backward_weights"]
    t["stage"] = t["forward+backward"] + pool_lcn
    fl = {key: flops for key in t}
    fl["forward+backward"] = fl["stage"] = 3 * flops
    fl["dense_gemm"] = 2.0 * n**3
    gflops = {key: fl[key] / t[key] / 1e9 for key in t}
    return {
        "shape": dict(zip(("batch", "maps", "image", "k", "stride", "F"), shape)),
        "out_hw": [OY, OX],
        "flops_forward": flops,
        "dense_gemm_n": n,
        "seconds": t,
        "gflops": gflops,
        "ratio_to_dense_gemm": {key: gflops[key] / gflops["dense_gemm"] for key in t},
        "speedup_forward_vs_loop": t["per_location_loop"] / t["lc_forward"],
        "stage_pool_lcn_share": pool_lcn / t["stage"],
    }


def write_json(path: Path, payload: dict) -> None:
    """Write to a temporary file beside the target, then rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--json", type=Path, default=None, help="default results/bench/kernels-<cpu|gpu>.json")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), default=list(SHAPES))
    args = ap.parse_args(argv)

    backend = select_backend(args.device)
    xp, sync = backend.xp, backend.synchronize
    console = Console()
    threads = {v: os.environ.get(v) for v in THREAD_VARS}
    threads["kernel_threads"] = n_threads() if not backend.is_gpu else None
    dev_name = device_name(xp)
    console.print(f"[bold]device[/] {backend.name} ({dev_name})   threads: "
                  + ", ".join(f"{k}={v}" for k, v in threads.items()))

    results = {name: bench_shape(name, SHAPES[name], xp, sync, args.repeats, backend.is_gpu) for name in args.shapes}

    table = Table(title=f"locally connected kernels, float32, {dev_name} (best of {args.repeats} round-robin)")
    table.add_column("shape")
    table.add_column("kernel")
    table.add_column("ms", justify="right")
    table.add_column("GFLOP/s", justify="right")
    table.add_column("/ dense GEMM", justify="right")
    for name, r in results.items():
        for i, key in enumerate(("lc_forward", "lc_backward_data", "lc_backward_weights", "forward+backward",
                                 "lc_backward_weights_fresh", "per_location_loop", "gemms_alone",
                                 "gemms_cols_cached", "gemms_all_cached", "dense_gemm")):
            if key not in r["seconds"]:  # the cached-operand rows are CPU-only
                continue
            label = {"dense_gemm": f"dense GEMM n={r['dense_gemm_n']}",
                     "lc_backward_weights_fresh": "lc_backward_weights, new output",
                     "gemms_alone": "per-location GEMMs alone (no gather)",
                     "gemms_cols_cached": "  the same, columns in cache",
                     "gemms_all_cached": "  the same, both operands in cache"}.get(key, key)
            table.add_row(name if i == 0 else "", label, f"{r['seconds'][key] * 1e3:.1f}",
                          f"{r['gflops'][key]:.1f}", f"{r['ratio_to_dense_gemm'][key]:.0%}")
        table.add_row("", "forward speed-up vs loop", "", f"{r['speedup_forward_vs_loop']:.2f}x", "")
        for key in ("l2pool_forward", "l2pool_backward", "lcn_forward", "lcn_backward"):
            table.add_row("", key, f"{r['seconds'][key] * 1e3:.1f}", "", "")
        table.add_row("", "stage (LC fwd+bwd, pool, LCN)", f"{r['seconds']['stage'] * 1e3:.1f}",
                      f"{r['gflops']['stage']:.1f}", f"{r['ratio_to_dense_gemm']['stage']:.0%}")
        table.add_row("", "pool + LCN share of stage", "", f"{r['stage_pool_lcn_share']:.0%}", "",
                      end_section=True)
    console.print(table)

    payload = {
        "device": backend.name,
        "device_name": dev_name,
        "cupy": xp.__version__ if backend.is_gpu else None,
        "threads": threads,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "timing": f"best of {args.repeats} round-robin rounds after one warm-up, time.perf_counter, stream synchronised",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "results": results,
    }
    path = args.json or Path("results") / "bench" / f"kernels-{backend.name}.json"
    write_json(path, payload)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
