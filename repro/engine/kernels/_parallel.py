"""Run a chunked loop on a small thread pool (CPU) or inline (GPU).

Why threads: NumPy releases the GIL in copies and in BLAS, and a single small GEMM per chunk
does not keep several cores busy by itself; cutting the locations into chunks and running the
chunks concurrently does. On GPUs the work is already asynchronous on the stream, so chunks run
in order on the calling thread.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

_POOL: ThreadPoolExecutor | None = None


def n_threads() -> int:
    """Worker threads for the CPU kernels.

    REPRO_KERNEL_THREADS if set; else the usable cores, capped by OMP_NUM_THREADS when set (MPI
    launches with several ranks per node set it to 1 so ranks do not oversubscribe the cores).
    """
    env = os.environ.get("REPRO_KERNEL_THREADS")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, cores)


def _one_blas_thread() -> None:
    """Pool initializer: this worker's BLAS calls run single-threaded.

    The pool already keeps every core busy; a multithreaded BLAS inside each worker would
    oversubscribe them. OpenBLAS >= 0.3.27 (NumPy's wheels) has a thread-local setting; with
    another BLAS this does nothing and OPENBLAS/OMP_NUM_THREADS=1 is the user's lever.
    """
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        try:
            fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local")
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        fn(1)
        return


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            max_workers=n_threads(), thread_name_prefix="repro-kernel", initializer=_one_blas_thread
        )
    return _POOL


def map_chunks(fn: Callable[[int, int], None], n: int, chunk: int, gpu: bool = False) -> None:
    """Call fn(lo, hi) for consecutive ranges of size <= chunk covering range(n)."""
    ranges = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    if gpu or len(ranges) == 1 or n_threads() == 1:
        for lo, hi in ranges:
            fn(lo, hi)
        return
    # one task per worker pulling ranges from a shared iterator: the load stays balanced and the
    # Python overhead (futures, locks) does not grow with the number of ranges
    it = iter(ranges)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                r = next(it, None)
            if r is None:
                return
            fn(*r)

    for f in [_pool().submit(worker) for _ in range(min(n_threads(), len(ranges)))]:
        f.result()
