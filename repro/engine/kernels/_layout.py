"""Moving the batch axis innermost and back, on the CPU.

The CPU kernels work batch-last (``xt[c, y, x, b]``: a window row is k*B contiguous numbers), so
each call moves the batch axis of its input to the end and that of its output (y, dx) back to the
front. Those are 2-D transposes of a (B, N) matrix, and NumPy's element-wise transposed copy reads
the source with a stride of N numbers: at the paper's shapes a quarter of the forward pass.
So the copy is blocked: float32 goes through OpenCV's SIMD ``cv2.transpose`` (already a dependency;
it releases the GIL), cut into slabs on the kernel thread pool above _MIN_THREADED_BYTES; other
dtypes use NumPy copies tile by tile, whose tile shapes (16 x 2048 moving the batch last, 512 x 64
moving it back) and thresholds were the fastest measured. Below _MIN_TILED_BYTES NumPy's own copy
is as fast. Figures: results/reference/kernels-cpu.md.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from repro.engine.kernels._parallel import map_chunks, n_threads

_MIN_TILED_BYTES = 3 << 20
_TILE = 1 << 15  # numbers per tile
_MIN_THREADED_BYTES = 4 << 20  # OpenCV path: below this one call beats the thread pool
_SLAB_BYTES = 1 << 19  # OpenCV path: source bytes per call (100-row source: 1310 columns)
_INT_MAX = 2**31 - 1  # cv::Mat sizes are C ints

try:
    import cv2
except ImportError:  # a broken OpenCV install must not take the kernels down with it
    cv2 = None


def _opencv_takes(a: np.ndarray) -> bool:
    """Whether a (2-D, non-empty) transposes through OpenCV: float32, sides that fit a C int."""
    return cv2 is not None and a.dtype == np.float32 and 0 < a.shape[0] <= _INT_MAX and 0 < a.shape[1] <= _INT_MAX


def _cv_into(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[:] = src.T; OpenCV returns a new array instead when it cannot write into dst."""
    r = cv2.transpose(src, dst=dst)
    if r is not dst:
        dst[...] = r


def _transpose_cv(a: np.ndarray, out: np.ndarray) -> None:
    """out[:] = a.T through cv2.transpose (float32), in slabs on the thread pool when large."""
    q, p = a.shape
    if a.nbytes < _MIN_THREADED_BYTES or n_threads() == 1:
        _cv_into(a, out)
        return
    # cut the longer side, so each slab has the full short side and about _SLAB_BYTES of source
    n, other = (p, q) if p >= q else (q, p)
    slab = max(16, _SLAB_BYTES // (other * a.itemsize))

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi, slab):
            j = min(hi, i + slab)
            if p >= q:
                _cv_into(a[:, i:j], out[i:j])
            else:
                _cv_into(a[i:j], out[:, i:j])

    map_chunks(work, n, max(slab, -(-n // n_threads())), blas=False)


def transpose_into(a: np.ndarray, out: np.ndarray) -> None:
    """out[:] = a.T for 2-D arrays with unit-stride rows (one call, on the calling thread): through
    OpenCV for float32, else NumPy's copy. For small blocks already in cache, e.g. one location's
    weight gradient (Coates-like, 2048 x 64: OpenCV about 2x faster than NumPy there)."""
    if _opencv_takes(a) and out.dtype == a.dtype:
        _cv_into(a, out)
    else:
        np.copyto(out, a.T)


def transpose2d(a: np.ndarray) -> np.ndarray:
    """Contiguous a.T of a C-contiguous 2-D array, tiled and threaded."""
    q, p = a.shape  # out is (p, q)
    out = np.empty((p, q), dtype=a.dtype)
    if _opencv_takes(a):
        _transpose_cv(a, out)
        return out
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
