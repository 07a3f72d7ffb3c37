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
    backward-weights dW_l (F, K) = dy_l (F, B) @ cols_l^T (B, K)

with K = C*k*k. On CPUs the locations are cut into chunks so the gathered columns stay in
cache and the chunks run on a thread pool (NumPy releases the GIL in copies and BLAS); on GPUs
the same code runs with large chunks (bounded only to cap temporary memory).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from repro.engine.backend import get_array_module
from repro.engine.kernels._parallel import map_chunks, n_threads

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


def _is_gpu(xp: Any) -> bool:
    return xp is not np


def _chunk_size(xp: Any, n_loc: int, per_loc_bytes: int) -> int:
    budget = _GPU_CHUNK_BYTES if _is_gpu(xp) else _CPU_CHUNK_BYTES
    return max(1, min(n_loc, budget // max(per_loc_bytes, 1)))


def _batch_last(x: Array) -> Array:
    """(B, C, H, W) -> contiguous (C, H, W, B)."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(xp.moveaxis(x, 0, -1))


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
    xt = _batch_last(x.astype(dtype, copy=False))  # (C, H, W, B)
    win = _windows(xt, k, stride, OY, OX)  # (OY, OX, C, k, k, B) view
    Wm = xp.ascontiguousarray(W, dtype=dtype).reshape(L, F, K)  # (L, F, K)
    yt = xp.empty((L, F, B), dtype=dtype)  # (L, F, B)

    def work(lo: int, hi: int) -> None:
        cols = _gather(win, lo, hi)  # (n, K, B)
        xp.matmul(Wm[lo:hi], cols, out=yt[lo:hi])  # (n, F, B)

    map_chunks(work, L, _chunk_size(xp, L, K * B * xt.itemsize), gpu=_is_gpu(xp))
    # (L, F, B) -> (B, F, OY, OX)
    return xp.ascontiguousarray(yt.reshape(OY, OX, F, B).transpose(3, 2, 0, 1))


def lc_backward_weights(x: Array, dy: Array, stride: int, kernel_size: int) -> Array:
    """dW[oy, ox, f, c, ky, kx]: per location (F, B) @ (B, K), all batched."""
    xp = get_array_module(x, dy)
    B, C, H, Wd = x.shape
    k = int(kernel_size)
    OY, OX = lc_output_shape((H, Wd), k, stride)
    Bd, F, OYd, OXd = dy.shape
    if (Bd, OYd, OXd) != (B, OY, OX):
        raise ValueError(f"gradient {dy.shape} does not fit input {x.shape} (k={k}, s={stride})")
    L, K = OY * OX, C * k * k
    dtype = np.result_type(x.dtype, dy.dtype)
    xt = _batch_last(x.astype(dtype, copy=False))  # (C, H, W, B)
    win = _windows(xt, k, stride, OY, OX)  # (OY, OX, C, k, k, B) view
    dyt = xp.ascontiguousarray(dy.astype(dtype, copy=False).transpose(2, 3, 1, 0)).reshape(L, F, B)
    dW = xp.empty((L, F, K), dtype=dtype)

    dyt = dyt.transpose(0, 2, 1)  # (L, B, F) view

    def work(lo: int, hi: int) -> None:
        cols = _gather(win, lo, hi)  # (n, K, B)
        # dW_l^T = cols_l (K, B) @ dy_l^T (B, F): the long K axis as GEMM rows is much faster
        # than (F, B) @ (B, K) with tiny F and B; the transpose back is chunk-local (in cache)
        dW[lo:hi] = xp.matmul(cols, dyt[lo:hi]).transpose(0, 2, 1)  # (n, K, F) -> (n, F, K)

    map_chunks(work, L, _chunk_size(xp, L, K * B * xt.itemsize), gpu=_is_gpu(xp))
    return dW.reshape(OY, OX, F, C, k, k)


def lc_backward_data(dy: Array, W: Array, stride: int, input_shape: tuple[int, int, int, int]) -> Array:
    """dx[b, c, y, x]: per location (K, F) @ (F, B), then col2im scatter-add.

    GPU (and the generic path): one batched GEMM for all locations, then a scatter-add over
    groups of locations whose windows do not overlap (q = ceil(k/s) apart), each group one
    vectorised ``+=`` into a strided view: ceil(k/s)**2 adds (<= k*k).
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
    Wt = xp.ascontiguousarray(W, dtype=dtype).reshape(L, F, K).transpose(0, 2, 1)  # (L, K, F) view
    dyt = xp.ascontiguousarray(dy.astype(dtype, copy=False).transpose(2, 3, 1, 0)).reshape(L, F, B)
    if _is_gpu(xp) or _FORCE_GENERIC:
        dxt = _backward_data_grouped(Wt, dyt, (C, H, Wd, B), OY, OX, k, stride)
    else:
        dxt = _backward_data_blocks(Wt, dyt, (C, H, Wd, B), OY, OX, k, stride)
    return xp.ascontiguousarray(xp.moveaxis(dxt, -1, 0))  # (C, H, W, B) -> (B, C, H, W)


_FORCE_GENERIC = False  # tests flip this to run the GPU code path on NumPy


def _backward_data_grouped(Wt: Array, dyt: Array, shape_t: tuple, OY: int, OX: int, k: int, s: int) -> Array:
    """Generic path: all columns at once, scatter-add by non-overlapping groups."""
    xp = get_array_module(Wt)
    C, H, Wd, B = shape_t
    L, K, F = Wt.shape
    dcols = xp.empty((L, K, B), dtype=Wt.dtype)  # (L, K, B)

    def work(lo: int, hi: int) -> None:
        xp.matmul(Wt[lo:hi], dyt[lo:hi], out=dcols[lo:hi])  # (n, K, B)

    map_chunks(work, L, _chunk_size(xp, L, K * B * Wt.itemsize), gpu=_is_gpu(xp))
    dxt = xp.zeros(shape_t, dtype=Wt.dtype)  # (C, H, W, B)
    dc = dcols.reshape(OY, OX, C, k, k, B)
    q = -(-k // s)  # windows q locations apart never overlap
    sc, sh, sw, sb = dxt.strides
    for a in range(min(q, OY)):
        my = len(range(a, OY, q))
        for b in range(min(q, OX)):
            nx = len(range(b, OX, q))
            # (C, my, k, nx, k, B) non-overlapping view of the windows of this group
            tgt = xp.lib.stride_tricks.as_strided(
                dxt[:, a * s :, b * s :, :],
                shape=(C, my, k, nx, k, B),
                strides=(sc, q * s * sh, sh, q * s * sw, sw, sb),
            )
            tgt += dc[a::q, b::q].transpose(2, 0, 3, 1, 4, 5)  # (my, nx, C, k, k, B) -> view order
    return dxt


def _backward_data_blocks(Wt: Array, dyt: Array, shape_t: tuple, OY: int, OX: int, k: int, s: int) -> Array:
    """CPU path: per-thread accumulators, cache-sized chunks, one add per window block."""
    C, H, Wd, B = shape_t
    L, K, F = Wt.shape
    sub = _chunk_size(np, L, K * B * Wt.itemsize)
    parts: dict[int, np.ndarray] = {}

    def work(lo: int, hi: int) -> None:
        acc = np.zeros(shape_t, dtype=Wt.dtype)  # (C, H, W, B), this thread's own
        buf = np.empty((sub, K, B), dtype=Wt.dtype)
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
