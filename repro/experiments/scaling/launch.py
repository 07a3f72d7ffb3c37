"""The sweep's launcher: every point in its own ``mpiexec -n P python -m repro.experiments.scaling.worker``.

A point never inherits another's memory pool or thread pool, and each rank uses ``--threads`` BLAS /
kernel threads (one unless told otherwise), so points compare like with like. On a shared machine
single launches spread widely, so ``sweep`` can launch every point several times, round-robin, and
keep the median launch of each.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.errors import ReproError

WORKER = "repro.experiments.scaling.worker"
# the worker's one-line error for bad input; under MPI prefixed with the rank (comm.report_and_abort)
_ERROR_LINE = re.compile(r"(?:\[rank \d+\] )?Error: (.*)")


@dataclass(frozen=True)
class Point:
    mode: str  # "weak", "strong" or "largest"
    ranks: int
    size: int


def plan(ranks: list[int], sizes: list[int], mode: str, weak_base: int = 1) -> list[Point]:
    """Weak: size = ranks x ``weak_base``; strong: every size on every rank count (``mode`` "both": both)."""
    pts: list[Point] = []
    if mode in ("weak", "both"):
        pts += [Point("weak", n, weak_base * n) for n in ranks]
    if mode in ("strong", "both"):
        pts += [Point("strong", n, m) for m in sizes for n in ranks]
    return pts


def mpiexec() -> str:
    """The virtualenv's mpiexec (the one mpi4py was built against), else the first on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if not found:
        raise ReproError("no mpiexec found (pip install mpich, or put one on PATH)")
    return found


def worker_args(pt: Point, family: str, batch: int, steps: int, device: str, out: Path,
                memory: int | None = None, fill: float | None = None) -> list[str]:
    """The worker's options for one point (``largest`` points: ``--largest``, ``--memory``, ``--fill``)."""
    args = ["--device", device, "--family", family, "--size", str(pt.size), "--batch", str(batch),
            "--steps", str(steps), "--out", str(out)]
    if pt.mode == "largest":
        args.append("--largest")
        args += ["--fill", str(fill)] if fill is not None else []
        args += ["--memory", str(memory)] if memory else []
    return args


def launch_point(pt: Point, family: str, batch: int, steps: int, threads: int, device: str, timeout: float,
                 memory: int | None = None, fill: float | None = None) -> dict[str, Any]:
    """Run one configuration in its own mpiexec job and return rank 0's measurement."""
    with tempfile.TemporaryDirectory(prefix="repro-scaling-") as d:
        out = Path(d) / "point.json"
        cmd = [mpiexec(), "-n", str(pt.ranks), sys.executable, "-m", WORKER,
               *worker_args(pt, family, batch, steps, device, out, memory, fill)]
        env = dict(os.environ)
        t = str(threads)
        # REPRO_THREADS too: the worker's threads.configure() puts it above the others
        env.update({"OMP_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MKL_NUM_THREADS": t,
                    "REPRO_KERNEL_THREADS": t, "REPRO_THREADS": t})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ReproError(f"{pt.mode} scaling, {pt.ranks} rank(s), size {pt.size}: no result in {timeout:.0f} s")
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            said = [m.group(1) for m in map(_ERROR_LINE.fullmatch, tail) if m]
            if said:  # the worker's own one-line error (bad input): say it once
                raise ReproError(f"{pt.mode}, {pt.ranks} rank(s): {said[-1]}")
            raise ReproError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))
        r = json.loads(out.read_text())
    r.update({"mode": pt.mode, "size": pt.size, "threads_per_rank": threads})
    return r


def sweep(points: list[Point], repeat: int, run_one: Callable[[Point], dict[str, Any]],
          progress: Callable[[int, Point], None] | None = None) -> list[dict[str, Any]]:
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
