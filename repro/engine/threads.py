"""Threads per rank: N ranks on one node share its cores instead of each using all of them.

BLAS and OpenMP read their thread counts once, when NumPy loads, so :func:`configure` runs at the
top of the command line, before anything imports NumPy; the kernels' own pool follows
``OMP_NUM_THREADS`` (``kernels/_parallel.py``). Later changes of the BLAS thread count, for one
block (:func:`single_threaded_blas`), go through threadpoolctl, which finds whichever BLAS NumPy
loaded (OpenBLAS, MKL, BLIS) and sets it through that library's own call.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from threadpoolctl import ThreadpoolController  # no NumPy import: safe before configure()

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# ranks on this node, as launchers export it (MPICH/Hydra, Open MPI, Slurm)
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")

_CHOSEN: tuple[int, str] | None = None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() and int(value) > 0 else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_ranks(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    for var in _LOCAL_SIZE_VARS:
        n = _int(env.get(var))
        if n:
            return n
    return 1


def decide(env: dict[str, str] | None = None, cores: int | None = None, all_cores: int | None = None) -> tuple[int, str]:
    """(threads per rank, where the number comes from). In order: ``REPRO_THREADS``; a thread count
    the user exported; Slurm's ``--cpus-per-task``; the cores this process may use when the launcher
    bound it to fewer than the node has; else the node's cores divided by the ranks on it."""
    env = os.environ if env is None else env
    n = _int(env.get("REPRO_THREADS"))
    if n:
        return n, "REPRO_THREADS"
    for var in THREAD_VARS:
        n = _int(env.get(var))
        if n:
            return n, var
    n = _int(env.get("SLURM_CPUS_PER_TASK"))
    if n:
        return n, "SLURM_CPUS_PER_TASK"
    cores = usable_cores() if cores is None else cores
    all_cores = (os.cpu_count() or cores) if all_cores is None else all_cores
    if cores < all_cores:
        return cores, "the cores this rank is bound to"
    ranks = local_ranks(env)
    return max(1, cores // ranks), f"{cores} cores / {ranks} rank(s) on this node"


def configure() -> tuple[int, str]:
    """Decide once and export the count for BLAS/OpenMP (a no-op on what the user exported)."""
    global _CHOSEN
    if _CHOSEN is None:
        n, source = decide()
        for var in THREAD_VARS:
            if source == "REPRO_THREADS":
                os.environ[var] = str(n)
            else:
                os.environ.setdefault(var, str(n))
        _CHOSEN = (n, source)
    return _CHOSEN


def describe() -> str:
    """For the startup line: how many threads each rank uses and why."""
    n, source = configure()
    return f"{n} thread(s) per rank ({source}; REPRO_THREADS=N to change)"


_BLAS: Any = None


def _blas() -> Any:
    """threadpoolctl's handle on the BLAS libraries loaded now; made once, on first use (after
    NumPy loaded its BLAS), since finding the libraries walks every loaded shared object."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS calls run on one thread inside the block; the previous count is restored after.

    For the kernels' thread pool, which already keeps every core busy: a multithreaded BLAS inside
    each worker would oversubscribe them. The count is process-wide (OpenBLAS's "local" setter is
    not thread-local in NumPy's pthreads build), hence set around the whole pool, not per worker.
    Already at one thread, nothing is set: setting it back wakes OpenBLAS's threads, which then
    spin on the cores the next call needs.
    """
    blas = _blas()
    if max((lib["num_threads"] for lib in blas.info()), default=1) <= 1:
        yield
        return
    with blas.limit(limits=1):
        yield
