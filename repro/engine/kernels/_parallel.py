"""Run a chunked loop on a small thread pool (CPU) or inline (GPU).

Why threads: NumPy releases the GIL in copies and in BLAS, and a single small GEMM per chunk
does not keep several cores busy by itself; cutting the locations into chunks and running the
chunks concurrently does. On GPUs the work is already asynchronous on the stream, so chunks run
in order on the calling thread.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from repro.engine.threads import single_threaded_blas

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


# NumPy ufuncs run non-contiguous operands through small buffers (np.getbufsize(), 8192 elements):
# each block is copied in, added, and copied back. For ``window += block`` on a strided window whose
# rows are contiguous runs of k*B numbers, that makes the add several times slower per number than
# on contiguous arrays. With a buffer smaller than a run the iterator walks the view in place
# instead, which pays only for long runs (measured: from about 256 numbers on; the figures are in
# results/reference/kernels-cpu.md).
_UNBUFFERED_SIZE = 16
_UNBUFFERED_MIN_RUN = 256


@contextlib.contextmanager
def unbuffered_ufuncs(run: int) -> Iterator[None]:
    """Ufuncs in this block (this thread) walk strided operands in place rather than through
    buffers, when their contiguous runs are ``run`` >= _UNBUFFERED_MIN_RUN numbers long.

    Only for same-dtype, aligned operands (a cast still needs buffers, and would get tiny ones).
    NumPy 2 keeps the buffer size per context and ``errstate`` restores it; NumPy 1 keeps it
    process-wide, so there it is left alone.
    """
    if run < _UNBUFFERED_MIN_RUN or int(np.__version__.split(".")[0]) < 2:
        yield
        return
    with np.errstate():
        np.setbufsize(_UNBUFFERED_SIZE)
        yield


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=n_threads(), thread_name_prefix="repro-kernel")
    return _POOL


def map_chunks(fn: Callable[[int, int], None], n: int, chunk: int, gpu: bool = False, blas: bool = True) -> None:
    """Call fn(lo, hi) for consecutive ranges of size <= chunk covering range(n).

    blas=False: fn makes no BLAS calls, so OpenBLAS's thread count is left alone (setting it back
    after the pool wakes OpenBLAS's own threads, which then spin on the cores the next call needs).
    """
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

    with single_threaded_blas() if blas else contextlib.nullcontext():
        for f in [_pool().submit(worker) for _ in range(min(n_threads(), len(ranges)))]:
            f.result()
