"""Locally connected (untied) layer as block-sparse batched GEMM.

Public layout (see DESIGN.md): input ``x[b, c, y, x]``, weights ``W[oy, ox, f, c, ky, kx]``,
``y[b, f, oy, ox] = sum_{c,ky,kx} W[oy, ox, f, c, ky, kx] * x[b, c, oy*s + ky, ox*s + kx]``.

Why this shape of code (Coates et al. 2013): the F neurons at one output location share one
window, so each location is one small *dense* GEMM; all L = OY*OX locations are done in one
batched call (``xp.matmul`` on stacked matrices = cuBLAS strided-batched GEMM on GPUs).

Internal layout: the batch axis is moved innermost. With ``xt[c, y, x, b]`` one window row
``xt[c, oy*s+ky, ox*s:ox*s+k, :]`` is k*B contiguous numbers, so gathering windows (im2col) is a
copy of long contiguous runs, and the per-location GEMMs become

    forward          y_l  (F, B) = W_l (F, K) @ cols_l (K, B)
    backward-data    dc_l (K, B) = W_l^T (K, F) @ dy_l (F, B)      then col2im scatter-add
    backward-weights dW_l^T (K, F) = cols_l (K, B) @ dy_l^T (B, F)

with K = C*k*k. On CPUs the locations are cut into chunks so the gathered columns stay in
cache and the chunks run on a thread pool (NumPy releases the GIL in copies and BLAS). Moving the
batch axis (x in, y and dx out, dy per location) is a threaded 2-D transpose (``_layout.py``: the
Coates-like input 5.4 ms with NumPy's element-wise transposed copy, 0.6-0.9 ms through OpenCV).
The forward GEMMs write each y_l straight into a batch-last (F, L, B) array (an (F, B) matrix of
row stride L*B, which BLAS takes as it is), moved batch-first by one transpose at the end:
Coates-like forward best 16.9 ms against 18.3 ms scattering each chunk's (F, B) results into
y (B, F, L) as they came.

Backward-weights on CPUs computes dW_l^T (K, F) = cols_l (K, B) @ dy_l^T (B, F), the long K axis
as GEMM rows, into a per-thread scratch block, and moves each (K, F) block into dW_l (F, K) while
it is in cache (``transpose_into``: OpenCV for float32). Coates-like, best of 41 paired rounds:
18.8 ms against 22.3 ms for the earlier scheme, dy_l (F, B) @ cols_l (B, K) on batch-first
columns gathered from x in runs of only k numbers (the gather alone took 5.2 ms). Le-like, the
same orientation with NumPy's element-wise transpose before: no difference beyond the noise in
wall time, 6-9% less CPU time (median and best; results/reference/kernels-cpu.md).

GPUs take a separate path (``_forward_gpu``, ``_backward_weights_gpu``, ``_backward_data_grouped``;
tests run it on NumPy through ``_FORCE_GENERIC``): no batch-last copy (strided gathers are cheap
there), chunks of n = _GPU_CHUNK_BYTES // (K*B*itemsize) locations, and every temporary is one
chunk, so a call needs at most ``lc_workspace_bytes(..., gpu=True)`` = n*B*(K+F)*itemsize beyond
its inputs and output (the paper's 158x158-location layer with batch 100 once needed 26 GB of
backward-data columns; now 256 MiB).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from repro.engine.backend import get_array_module
from repro.engine.kernels._layout import batch_first, batch_last, transpose_into
from repro.engine.kernels._parallel import map_chunks, n_threads, unbuffered_ufuncs

Array = Any

# Bytes of gathered columns per chunk. CPU: about an L2-to-L3 sized block so the gather and
# the GEMM that reads it share the cache. GPU: large, only to bound the temporary.
_CPU_CHUNK_BYTES = 3 << 20  # measured: 1-4 MiB best on a 2-core EPYC; small-F shapes like larger
_GPU_CHUNK_BYTES = 1 << 28


def lc_output_shape(in_hw: tuple[int, int], k: int, stride: int) -> tuple[int, int]:
    """(OY, OX) of a valid locally connected layer; trailing rows/cols may go unused."""
    h, w = in_hw
    if k > h or k > w:
        raise ValueError(f"window {k} larger than input {h}x{w}")
    return (h - k) // stride + 1, (w - k) // stride + 1


def lc_flops(batch: int, W_shape: tuple[int, ...]) -> float:
    """Multiply-adds x2 of one forward pass (the same for each backward pass)."""
    oy, ox, f, c, ky, kx = W_shape
    return 2.0 * batch * oy * ox * f * c * ky * kx


def lc_workspace_bytes(batch: int, W_shape: tuple[int, ...], itemsize: int, gpu: bool,
                       stride: int | None = None) -> int:
    """Largest temporary memory (bytes) one lc_* call allocates beyond its inputs and output.

    The maximum over lc_forward, lc_backward_data and lc_backward_weights, for contiguous inputs
    of one dtype. With B = batch, (OY, OX, F, C, k, k) = W_shape, L = OY*OX, K = C*k*k:

    GPU: n = min(L, max(1, _GPU_CHUNK_BYTES // (K*B*itemsize))) locations per chunk and
        workspace = n * B * (K + F) * itemsize          (one chunk of columns + its y/dy slice)
    CPU: T = n_threads() workers, c = min(L, max(1, _CPU_CHUNK_BYTES // (K*B*itemsize))),
        X = B*C*H*W (the input, copied batch-last; H = (OY-1)*s + k + s-1, likewise W),
        workspace = itemsize * max(X + L*F*B + T*c*K*B,              forward
                                   X + L*F*B + T*c*K*(B+F),          backward-weights
                                   L*F*B + T*(X + c*K*B))            backward-data
    stride: needed on the CPU only (for X); None assumes stride = k, an upper bound for every
    stride <= k.
    """
    oy, ox, f, c, k, _ = (int(v) for v in W_shape)
    B, L, K, isz = int(batch), oy * ox, c * k * k, int(itemsize)
    if gpu:
        n = min(L, max(1, _GPU_CHUNK_BYTES // (K * B * isz)))
        return n * B * (K + f) * isz
    s = k if stride is None else int(stride)
    X = B * c * ((oy - 1) * s + k + s - 1) * ((ox - 1) * s + k + s - 1)
    T, n = n_threads(), min(L, max(1, _CPU_CHUNK_BYTES // (K * B * isz)))
    return isz * max(X + L * f * B + T * n * K * B, X + L * f * B + T * n * K * (B + f), L * f * B + T * (X + n * K * B))


def _is_gpu(xp: Any) -> bool:
    return xp is not np


def _chunk_size(xp: Any, n_loc: int, per_loc_bytes: int) -> int:
    budget = _GPU_CHUNK_BYTES if _is_gpu(xp) else _CPU_CHUNK_BYTES
    return max(1, min(n_loc, budget // max(per_loc_bytes, 1)))


def _output(xp: Any, out: Array | None, shape: tuple[int, ...], dtype: Any) -> Array:
    """A fresh output array, or ``out`` after checking it can be one."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if get_array_module(out) is not xp or tuple(out.shape) != tuple(shape) or out.dtype != dtype \
            or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape {tuple(shape)} on the "
                         f"inputs' device, got {out.dtype} {tuple(out.shape)}")
    return out


def _per_location(dy: Array) -> Array:
    """(B, F, OY, OX) -> (L, F, B) view, L = OY*OX, of a contiguous (F, L, B) copy (CPU): each
    dyt[l] is an (F, B) matrix with row stride L*B, which BLAS takes as it is (one transpose of
    dy, not two: Coates-like dy 0.7 ms, a contiguous (L, F, B) made from the copy 3.1 ms)."""
    B, F, OY, OX = dy.shape
    return batch_last(dy).reshape(F, OY * OX, B).transpose(1, 0, 2)


def _windows(xt: Array, k: int, stride: int, oy: int, ox: int) -> Array:
    """Zero-copy view (OY, OX, C, k, k, B) of the windows of xt (C, H, W, B)."""
    xp = get_array_module(xt)
    sc, sh, sw, sb = xt.strides
    c, _, _, b = xt.shape
    return xp.lib.stride_tricks.as_strided(
        xt, shape=(oy, ox, c, k, k, b), strides=(stride * sh, stride * sw, sc, sh, sw, sb)
    )


def _gather(win: Array, lo: int, hi: int, out: Array | None = None) -> Array:
    """Columns (hi-lo, K, B) of locations lo..hi-1 (flat index oy*OX + ox), contiguous."""
    xp = get_array_module(win)
    oy_n, ox_n, c, k, _, b = win.shape
    n = hi - lo
    if out is None:
        out = xp.empty((n, c, k, k, b), dtype=win.dtype)
    else:
        out = out[:n].reshape(n, c, k, k, b)
    # copy row-by-row of output locations so each piece is a plain strided slice of the view
    i = 0
    while i < n:
        l = lo + i
        r, q = divmod(l, ox_n)
        m = min(ox_n - q, n - i)  # locations left in this output row
        out[i : i + m] = win[r, q : q + m]
        i += m
    return out.reshape(n, c * k * k, b)


def lc_forward(x: Array, W: Array, stride: int) -> Array:
    """y[b, f, oy, ox]: every output location is one (F, K) @ (K, B) GEMM, all batched."""
    xp = get_array_module(x, W)
    B, C, H, Wd = x.shape
    OY, OX, F, Cw, k, k2 = W.shape
    if Cw != C or k != k2:
        raise ValueError(f"weights {W.shape} do not fit input {x.shape}")
    if (OY, OX) != lc_output_shape((H, Wd), k, stride):
        raise ValueError(f"weights {W.shape} do not fit input {x.shape} with stride {stride}")
    L, K = OY * OX, C * k * k
    dtype = np.result_type(x.dtype, W.dtype)
    Wm = xp.ascontiguousarray(W, dtype=dtype).reshape(L, F, K)  # (L, F, K), a view when W is
    if _is_gpu(xp) or _FORCE_GENERIC:
        return _forward_gpu(x.astype(dtype, copy=False), Wm, (OY, OX), k, stride)
    xt = batch_last(x.astype(dtype, copy=False))  # (C, H, W, B)
    win = _windows(xt, k, stride, OY, OX)  # (OY, OX, C, k, k, B) view
    yt = xp.empty((F, L, B), dtype=dtype)  # batch-last y: one layout move at the end
    ytl = yt.transpose(1, 0, 2)  # (L, F, B) view: each y_l an (F, B) matrix BLAS writes in place

    def work(lo: int, hi: int) -> None:
        cols = _gather(win, lo, hi)  # (n, K, B)
        xp.matmul(Wm[lo:hi], cols, out=ytl[lo:hi])

    map_chunks(work, L, _chunk_size(xp, L, K * B * xt.itemsize), gpu=_is_gpu(xp))
    return batch_first(yt).reshape(B, F, OY, OX)


def lc_backward_weights(x: Array, dy: Array, stride: int, kernel_size: int, out: Array | None = None) -> Array:
    """dW[oy, ox, f, c, ky, kx]: per location one GEMM over the batch, all batched.

    out: a C-contiguous array of dW's shape and dtype (same device) to write into and return,
    e.g. the previous step's gradient. On CPUs a fresh weight-sized output costs its page faults
    on every call (Coates-like, 42 MB: 28-38% of the dense-GEMM rate with a new output, 45-50%
    with ``out``; results/reference/kernels-cpu.md).
    """
    xp = get_array_module(x, dy)
    B, C, H, Wd = x.shape
    k = int(kernel_size)
    OY, OX = lc_output_shape((H, Wd), k, stride)
    Bd, F, OYd, OXd = dy.shape
    if (Bd, OYd, OXd) != (B, OY, OX):
        raise ValueError(f"gradient {dy.shape} does not fit input {x.shape} (k={k}, s={stride})")
    L, K = OY * OX, C * k * k
    dtype = np.result_type(x.dtype, dy.dtype)
    dW6 = _output(xp, out, (OY, OX, F, C, k, k), dtype)
    dW = dW6.reshape(L, F, K)  # a view
    if _is_gpu(xp) or _FORCE_GENERIC:
        _backward_weights_gpu(x.astype(dtype, copy=False), dy.astype(dtype, copy=False), k, stride, dW)
        return dW6
    xt = batch_last(x.astype(dtype, copy=False))  # (C, H, W, B)
    win = _windows(xt, k, stride, OY, OX)  # (OY, OX, C, k, k, B) view
    dyt = _per_location(dy.astype(dtype, copy=False)).transpose(0, 2, 1)  # (L, B, F) view
    c = _chunk_size(xp, L, K * B * xt.itemsize)
    scratch = _PerThread(((c, K, B), (c, K, F)), dtype)

    def work(lo: int, hi: int) -> None:
        cb, tb = scratch.get()
        cols = _gather(win, lo, hi, out=cb)  # (n, K, B)
        # dW_l^T = cols_l (K, B) @ dy_l^T (B, F): the long K axis as GEMM rows is the fast
        # orientation; each (K, F) result is moved into dW_l while it is in cache
        t = xp.matmul(cols, dyt[lo:hi], out=tb[: hi - lo])  # (n, K, F)
        for i in range(hi - lo):
            transpose_into(t[i], dW[lo + i])

    map_chunks(work, L, c)
    return dW6


def lc_backward_data(dy: Array, W: Array, stride: int, input_shape: tuple[int, int, int, int]) -> Array:
    """dx[b, c, y, x]: per location (K, F) @ (F, B), then col2im scatter-add.

    GPU (and the generic path): chunks of output rows, each one batched GEMM and then a
    scatter-add over groups of locations whose windows do not overlap (q = ceil(k/s) apart),
    each group one vectorised ``+=`` into a strided view of dx: <= ceil(k/s)**2 adds a chunk.
    CPU: each worker thread takes a contiguous range of locations, computes the columns of a
    cache-sized chunk at a time and adds each window block into its own accumulator; the
    accumulators are summed at the end (the full (L, K, B) columns never reach main memory).
    """
    xp = get_array_module(dy, W)
    B, C, H, Wd = (int(v) for v in input_shape)
    OY, OX, F, Cw, k, _ = W.shape
    if Cw != C or (OY, OX) != lc_output_shape((H, Wd), k, stride) or dy.shape != (B, F, OY, OX):
        raise ValueError(f"shapes do not fit: dy {dy.shape}, W {W.shape}, input {input_shape}")
    L, K = OY * OX, C * k * k
    dtype = np.result_type(dy.dtype, W.dtype)
    Wm = xp.ascontiguousarray(W, dtype=dtype).reshape(L, F, K)  # (L, F, K), a view when W is
    if _is_gpu(xp) or _FORCE_GENERIC:
        return _backward_data_grouped(Wm, dy.astype(dtype, copy=False), (B, C, H, Wd), OY, OX, k, stride)
    Wt = Wm.transpose(0, 2, 1)  # (L, K, F) view
    dyt = _per_location(dy.astype(dtype, copy=False))  # (L, F, B) view
    dxt = _backward_data_blocks(Wt, dyt, (C, H, Wd, B), OY, OX, k, stride)
    return batch_first(dxt)  # (C, H, W, B) -> (B, C, H, W)


_FORCE_GENERIC = False  # tests flip this to run the GPU code path on NumPy


def _gpu_chunk(L: int, K: int, B: int, itemsize: int) -> int:
    """Locations per GPU chunk: their (n, B, K) columns fit in _GPU_CHUNK_BYTES (at least one)."""
    return max(1, min(L, _GPU_CHUNK_BYTES // max(K * B * itemsize, 1)))


def _windows_bf(x: Array, k: int, s: int, oy: int, ox: int) -> Array:
    """Zero-copy view (OY, OX, B, C, k, k) of the windows of x (B, C, H, W), batch-first."""
    xp = get_array_module(x)
    sb, sc, sh, sw = x.strides
    B, C = x.shape[:2]
    return xp.lib.stride_tricks.as_strided(x, shape=(oy, ox, B, C, k, k),
                                           strides=(s * sh, s * sw, sb, sc, sh, sw))


def _gather_any(win: Array, lo: int, hi: int, out: Array | None = None) -> Array:
    """Contiguous copy (hi-lo, *win.shape[2:]) of flat locations lo..hi-1 of a window view
    (into out[:hi-lo] when out is given)."""
    xp = get_array_module(win)
    ox_n = win.shape[1]
    if out is None:
        out = xp.empty((hi - lo,) + tuple(win.shape[2:]), dtype=win.dtype)
    else:
        out = out[: hi - lo]
    i, n = 0, hi - lo
    while i < n:  # one strided copy per output row touched
        r, q = divmod(lo + i, ox_n)
        m = min(ox_n - q, n - i)
        out[i : i + m] = win[r, q : q + m]
        i += m
    return out


# The GPU path (also run on NumPy by the tests via _FORCE_GENERIC). It keeps the public
# batch-first layout and never makes a full-size layout copy: every temporary is one chunk of
# n locations (n = _gpu_chunk), columns (n, B, K) plus a (n, B, F) slice of y / dy, so one call
# needs at most lc_workspace_bytes(..., gpu=True) beyond its inputs and output. cuBLAS takes the
# transposed operands below through its transpose flags (strided-batched GEMM), without copies.


def _forward_gpu(x: Array, Wm: Array, out_hw: tuple[int, int], k: int, s: int) -> Array:
    """y (B, F, OY, OX); per chunk: y_l^T (B, F) = cols_l (B, K) @ W_l^T (K, F)."""
    xp = get_array_module(x, Wm)
    B, C = x.shape[:2]
    OY, OX = out_hw
    L, F, K = Wm.shape
    win = _windows_bf(x, k, s, OY, OX)  # (OY, OX, B, C, k, k) view
    y = xp.empty((B, F, OY, OX), dtype=Wm.dtype)
    yf = y.reshape(B, F, L)
    n = _gpu_chunk(L, K, B, Wm.itemsize)
    for lo in range(0, L, n):
        hi = min(L, lo + n)
        cols = _gather_any(win, lo, hi).reshape(hi - lo, B, K)  # (n, B, K)
        yc = xp.matmul(cols, Wm[lo:hi].transpose(0, 2, 1))  # (n, B, F)
        del cols
        yf[:, :, lo:hi] = yc.transpose(1, 2, 0)  # (B, F, n)
    return y


def _backward_weights_gpu(x: Array, dy: Array, k: int, s: int, dW: Array) -> None:
    """dW (L, F, K); per chunk: dW_l (F, K) = dy_l (F, B) @ cols_l (B, K), written in place."""
    xp = get_array_module(x, dy)
    B, C = x.shape[:2]
    _, F, OY, OX = dy.shape
    L, K = OY * OX, C * k * k
    win = _windows_bf(x, k, s, OY, OX)
    dyf = dy.reshape(B, F, L)
    n = _gpu_chunk(L, K, B, x.itemsize)
    for lo in range(0, L, n):
        hi = min(L, lo + n)
        cols = _gather_any(win, lo, hi).reshape(hi - lo, B, K)  # (n, B, K)
        dyc = xp.ascontiguousarray(dyf[:, :, lo:hi].transpose(2, 1, 0))  # (n, F, B)
        xp.matmul(dyc, cols, out=dW[lo:hi])  # (n, F, K)
        del cols, dyc  # before the next chunk's are allocated


def _backward_data_grouped(Wm: Array, dy: Array, in_shape: tuple, OY: int, OX: int, k: int, s: int) -> Array:
    """dx (B, C, H, W); chunks of whole output rows (or pieces of one row when a row is larger
    than the budget): one batched GEMM dc_l (B, K) = dy_l^T (B, F) @ W_l (F, K), then a
    scatter-add over groups of locations whose windows do not overlap (q = ceil(k/s) apart),
    each group one vectorised ``+=`` into a strided view of dx: <= q*q adds per chunk."""
    xp = get_array_module(Wm, dy)
    B, C, H, Wd = in_shape
    L, F, K = Wm.shape
    W4 = Wm.reshape(OY, OX, F, K)
    dx = xp.zeros(in_shape, dtype=Wm.dtype)  # (B, C, H, W), the output
    n = _gpu_chunk(L, K, B, Wm.itemsize)
    if n >= OX:  # rectangles of nr whole rows
        rects = ((r, min(OY, r + n // OX), 0, OX) for r in range(0, OY, n // OX))
    else:  # a row is over the budget: pieces of n locations of one row
        rects = ((r, r + 1, c, min(OX, c + n)) for r in range(OY) for c in range(0, OX, n))
    q = -(-k // s)  # windows q locations apart never overlap
    sb, sc, sh, sw = dx.strides
    for r0, r1, c0, c1 in rects:
        nr, nc = r1 - r0, c1 - c0
        dyc = xp.ascontiguousarray(dy[:, :, r0:r1, c0:c1].transpose(2, 3, 0, 1))  # (nr, nc, B, F)
        dc = xp.matmul(dyc, W4[r0:r1, c0:c1])  # (nr, nc, B, K)
        del dyc
        dc = dc.reshape(nr, nc, B, C, k, k)
        for a in range(min(q, nr)):
            my = len(range(a, nr, q))
            for b in range(min(q, nc)):
                nx = len(range(b, nc, q))
                # (my, nx, B, C, k, k) non-overlapping view of the windows of this group
                tgt = xp.lib.stride_tricks.as_strided(
                    dx[:, :, (r0 + a) * s :, (c0 + b) * s :],
                    shape=(my, nx, B, C, k, k),
                    strides=(q * s * sh, q * s * sw, sb, sc, sh, sw),
                )
                tgt += dc[a::q, b::q]
        del dc
    return dx


def _backward_data_blocks(Wt: Array, dyt: Array, shape_t: tuple, OY: int, OX: int, k: int, s: int) -> Array:
    """CPU path: per-thread accumulators, cache-sized chunks, one add per window block."""
    C, H, Wd, B = shape_t
    L, K, F = Wt.shape
    sub = _chunk_size(np, L, K * B * Wt.itemsize)
    parts: dict[int, np.ndarray] = {}

    def work(lo: int, hi: int) -> None:
        acc = np.zeros(shape_t, dtype=Wt.dtype)  # (C, H, W, B), this thread's own
        buf = np.empty((sub, K, B), dtype=Wt.dtype)
        with unbuffered_ufuncs(k * B):  # the window adds: runs of k*B numbers
            for c0 in range(lo, hi, sub):
                n = min(sub, hi - c0)
                dc = np.matmul(Wt[c0 : c0 + n], dyt[c0 : c0 + n], out=buf[:n])  # (n, K, B)
                dc = dc.reshape(n, C, k, k, B)
                for i in range(n):
                    oy, ox = divmod(c0 + i, OX)
                    acc[:, oy * s : oy * s + k, ox * s : ox * s + k, :] += dc[i]
        parts[lo] = acc  # one key per worker range

    map_chunks(work, L, -(-L // n_threads()))
    order = sorted(parts)  # fixed summation order: results do not depend on thread timing
    total = parts[order[0]]
    for lo in order[1:]:
        total += parts[lo]
    return total


class _PerThread:
    """Scratch arrays of one kernel call, one set per worker thread, allocated on first use."""

    def __init__(self, shapes: tuple, dtype: Any) -> None:
        self._tls = threading.local()
        self._shapes, self._dtype = shapes, dtype

    def get(self) -> tuple:
        bufs = getattr(self._tls, "bufs", None)
        if bufs is None:
            bufs = self._tls.bufs = tuple(np.empty(sh, dtype=self._dtype) for sh in self._shapes)
        return bufs
