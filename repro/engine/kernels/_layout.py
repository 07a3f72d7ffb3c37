"""Moving the batch axis innermost and back, on the CPU.

The CPU kernels work batch-last (``xt[c, y, x, b]``: a window row is k*B contiguous numbers), so
each call moves the batch axis of its input to the end and, for backward-data, back to the front.
Those are 2-D transposes of a (B, N) matrix. NumPy copies a transposed view element by element
along the destination, reading the source with a stride of N numbers: with B = 100 and
N = 8*48*48 the Coates-like input took 5.4 ms on one core, a quarter of the forward pass.
Copying tile by tile (each tile's source rows stay in L1/L2) on the kernel thread pool takes
1.8 ms (2-core EPYC; figures in results/reference/kernels-cpu.md).

Tile shapes (measured, float32): moving the batch last, the source is (B, N) with B small, and
tiles of 16 source rows by 2048 columns were best (2.9x faster than NumPy's copy); moving it
back, the source is (N, B) and tiles of 512 rows by 64 columns were best (1.3-2.4x). Below
_MIN_TILED_BYTES NumPy's own copy is as fast or faster (100 x 5184: 0.6 ms against 1.0).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from repro.engine.kernels._parallel import map_chunks, n_threads

_MIN_TILED_BYTES = 3 << 20
_TILE = 1 << 15  # numbers per tile


def transpose2d(a: np.ndarray) -> np.ndarray:
    """Contiguous a.T of a C-contiguous 2-D array, tiled and threaded."""
    q, p = a.shape  # out is (p, q)
    out = np.empty((p, q), dtype=a.dtype)
    if a.nbytes < _MIN_TILED_BYTES:
        np.copyto(out, a.T)
        return out
    # few source rows per tile when the source is short and wide (batch-first -> batch-last),
    # many when it is tall and narrow (batch-last -> batch-first)
    qt = 16 if q <= p else 512
    pt = max(16, _TILE // qt)

    def work(lo: int, hi: int) -> None:
        for p0 in range(lo, hi, pt):
            p1 = min(hi, p0 + pt)
            for q0 in range(0, q, qt):
                out[p0:p1, q0 : q0 + qt] = a[q0 : q0 + qt, p0:p1].T

    map_chunks(work, p, max(pt, -(-p // n_threads())), blas=False)
    return out


def batch_last(x: Any) -> np.ndarray:
    """(B, *rest) -> contiguous (*rest, B)."""
    x = np.ascontiguousarray(x)
    b = x.shape[0]
    return transpose2d(x.reshape(b, -1)).reshape(x.shape[1:] + (b,))


def batch_first(xt: Any) -> np.ndarray:
    """(*rest, B) -> contiguous (B, *rest)."""
    xt = np.ascontiguousarray(xt)
    b = xt.shape[-1]
    return transpose2d(xt.reshape(-1, b)).reshape((b,) + xt.shape[:-1])
