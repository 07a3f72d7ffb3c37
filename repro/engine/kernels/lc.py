"""Locally connected (untied) layer as block-sparse batched GEMM.

Long because it is the hot loop: three kernels, each with a CPU path (cache-sized chunks on a
thread pool) and a GPU path, kept side by side so they stay equal (tests compare them).

Public layout (the contract in ARCHITECTURE.md): input ``x[b, c, y, x]``, weights ``W[oy, ox, f, c, ky, kx]``,
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

with K = C*k*k. On CPUs the locations are cut into chunks so the gathered columns stay in cache,
and the chunks run on a thread pool (NumPy releases the GIL in copies and BLAS). The batch axis is
moved by a threaded blocked transpose (``_layout.py``). The forward writes each y_l straight into a
batch-last array that BLAS accepts as it is, and backward-weights puts the long K axis on the GEMM
rows and moves each block into dW while it is in cache: each of these choices was measured against
the simpler one it replaced (results/reference/kernels-cpu.md).

GPUs take a separate path (``_forward_gpu``, ``_backward_weights_gpu``, ``_backward_data_grouped``;
tests run it on NumPy through ``_FORCE_GENERIC``): no batch-last copy (strided gathers are cheap
there), chunks of n = _GPU_CHUNK_BYTES // (K*B*itemsize) locations, and every temporary is one
chunk, so a call needs at most ``lc_workspace_bytes(..., gpu=True)`` = n*B*(K+F)*itemsize beyond
its inputs and output, whatever the layer's size.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from repro.engine.backend import get_array_module, is_gpu
from repro.engine.kernels._layout import batch_first, batch_last, transpose_into
from repro.engine.kernels._parallel import map_chunks, n_threads, unbuffered_ufuncs

Array = Any

# Bytes of gathered columns per chunk. CPU: about an L2-to-L3 sized block so the gather and
# the GEMM that reads it share the cache. GPU: large, only to bound the temporary.
# Backward-weights moves each location's (K, F) block into dW_l (F, K): one OpenCV call per block,
# or, for blocks under this many numbers, one NumPy copy per chunk, whichever was faster per
# block size (results/reference/kernels-cpu.md).
_BATCHED_MOVE_MAX = 8192
_CPU_CHUNK_BYTES = 3 << 20  # the best of 1-4 MiB measured (results/reference/kernels-cpu.md)
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


def _chunk_size(xp: Any, n_loc: int, per_loc_bytes: int) -> int:
    budget = _GPU_CHUNK_BYTES if is_gpu(xp) else _CPU_CHUNK_BYTES
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
    dyt[l] is an (F, B) matrix with row stride L*B, which BLAS takes as it is, so dy is transposed
    once, not twice."""
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
    if is_gpu(xp) or _FORCE_GENERIC:
        return _forward_gpu(x.astype(dtype, copy=False), Wm, (OY, OX), k, stride)
    xt = batch_last(x.astype(dtype, copy=False))  # (C, H, W, B)
    win = _windows(xt, k, stride, OY, OX)  # (OY, OX, C, k, k, B) view
    yt = xp.empty((F, L, B), dtype=dtype)  # batch-last y: one layout move at the end
    ytl = yt.transpose(1, 0, 2)  # (L, F, B) view: each y_l an (F, B) matrix BLAS writes in place

    def work(lo: int, hi: int) -> None:
        cols = _gather(win, lo, hi)  # (n, K, B)
        xp.matmul(Wm[lo:hi], cols, out=ytl[lo:hi])

    map_chunks(work, L, _chunk_size(xp, L, K * B * xt.itemsize), gpu=is_gpu(xp))
    return batch_first(yt).reshape(B, F, OY, OX)


def lc_backward_weights(x: Array, dy: Array, stride: int, kernel_size: int, out: Array | None = None) -> Array:
    """dW[oy, ox, f, c, ky, kx]: per location one GEMM over the batch, all batched.

    out: a C-contiguous array of dW's shape and dtype (same device) to write into and return,
    e.g. the previous step's gradient: on CPUs a fresh weight-sized output costs its page faults
    on every call (results/reference/kernels-cpu.md).
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
    if is_gpu(xp) or _FORCE_GENERIC:
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
        if K * F < _BATCHED_MOVE_MAX:  # small blocks: one NumPy copy for the chunk beats a call each
            np.copyto(dW[lo:hi], t.transpose(0, 2, 1))
            return
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
    cache-sized chunk at a time and adds them into its own accumulator; the accumulators are
    summed at the end (the full (L, K, B) columns never reach main memory). Small layers are
    bound by the number of adds (a few us each), so each chunk takes the way with the fewest:
    one add per window offset (stride 1, chunks of whole rows), one per group of windows that
    do not overlap, or one per location (large windows, where chunks hold few locations).
    """
    xp = get_array_module(dy, W)
    B, C, H, Wd = (int(v) for v in input_shape)
    OY, OX, F, Cw, k, _ = W.shape
    if Cw != C or (OY, OX) != lc_output_shape((H, Wd), k, stride) or dy.shape != (B, F, OY, OX):
        raise ValueError(f"shapes do not fit: dy {dy.shape}, W {W.shape}, input {input_shape}")
    L, K = OY * OX, C * k * k
    dtype = np.result_type(dy.dtype, W.dtype)
    Wm = xp.ascontiguousarray(W, dtype=dtype).reshape(L, F, K)  # (L, F, K), a view when W is
    if is_gpu(xp) or _FORCE_GENERIC:
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
    """CPU path: per-thread accumulators, cache-sized chunks (whole rows where one fits), and per
    chunk the fewest adds: by offset (_add_by_offset), by groups of windows (_add_windows), or one
    per location. Small layers are bound by the number of NumPy calls, so fewer adds make them
    faster; large ones are unchanged (results/reference/kernels-cpu.md)."""
    C, H, Wd, B = shape_t
    L, K, F = Wt.shape
    sub = _chunk_size(np, L, K * B * Wt.itemsize)
    parts: dict[int, np.ndarray] = {}

    if sub >= OX:  # whole rows per chunk: rectangles, whose adds cover many locations at once
        sub -= sub % OX

    q = -(-k // s)  # windows q locations apart do not overlap

    def work(lo: int, hi: int) -> None:
        acc = np.zeros(shape_t, dtype=Wt.dtype)  # (C, H, W, B), this thread's own
        flat = np.empty(sub * K * B, dtype=Wt.dtype)
        with unbuffered_ufuncs(k * B):  # the window adds: runs of k*B numbers (or longer)
            chunks(acc, flat, lo, hi)
        parts[lo] = acc  # one key per worker range

    def chunks(acc: np.ndarray, flat: np.ndarray, lo: int, hi: int) -> None:
        for c0 in range(lo, hi, sub):
            n = min(sub, hi - c0)
            # adds if grouped by window (n <= q: no two windows of the chunk can share one)
            rects = _rectangles(c0, n, OX) if n > q else []
            grouped = sum(min(q, nr) * min(q, nc) for _, _, _, nr, nc in rects) if rects else n
            if s == 1 and rects and k * k * len(rects) <= grouped:  # as few adds by offset, and longer runs
                dck = flat[: K * n * B].reshape(K, n, B)  # each dc_l a (K, B) matrix of row stride n*B
                np.matmul(Wt[c0 : c0 + n], dyt[c0 : c0 + n], out=dck.transpose(1, 0, 2))
                for rect in rects:
                    _add_by_offset(acc, dck.reshape(C, k, k, n * B), *rect)
                continue
            dc = np.matmul(Wt[c0 : c0 + n], dyt[c0 : c0 + n], out=flat[: n * K * B].reshape(n, K, B))
            if grouped == n:  # no two windows of the chunk share an add: one add per location
                d5 = dc.reshape(n, C, k, k, B)
                for i in range(n):
                    oy, ox = divmod(c0 + i, OX)
                    acc[:, oy * s : oy * s + k, ox * s : ox * s + k, :] += d5[i]
                continue
            for i0, r0, q0, nr, nc in rects:
                _add_windows(acc, dc[i0 : i0 + nr * nc].reshape(nr, nc, C, k, k, B), r0, q0, s)

    map_chunks(work, L, -(-L // n_threads()))
    order = sorted(parts)  # fixed summation order: results do not depend on thread timing
    total = parts[order[0]]
    for lo in order[1:]:
        total += parts[lo]
    return total


def _rectangles(c0: int, n: int, OX: int) -> list[tuple[int, int, int, int, int]]:
    """Flat locations c0..c0+n-1 as at most three rectangles in row-major order, each contiguous in
    the flat order: (offset in the chunk, first row, first column, rows, columns)."""
    out, i = [], 0
    while i < n:
        r, q = divmod(c0 + i, OX)
        if q or n - i < OX:  # a piece of one row
            m = min(OX - q, n - i)
            out.append((i, r, q, 1, m))
        else:  # whole rows
            m = (n - i) // OX * OX
            out.append((i, r, 0, m // OX, OX))
        i += m
    return out


def _add_windows(acc: Array, dc: Array, r0: int, q0: int, s: int) -> None:
    """acc (C, H, W, B) += every window block of dc (nr, nc, C, k, k, B), the rectangle of
    locations whose first is (r0, q0). Windows q = ceil(k/s) locations apart do not overlap, so
    each group of locations (oy = a mod q, ox = b mod q) is one vectorised add into a strided view
    of acc: min(q, nr) * min(q, nc) adds instead of nr * nc (mini's first layer, stride 2: 9 adds
    a rectangle where there were 98 per thread)."""
    nr, nc, C, k, _, B = dc.shape
    q = -(-k // s)
    sc, sh, sw, sb = acc.strides
    for a in range(min(q, nr)):
        my = len(range(a, nr, q))
        for b in range(min(q, nc)):
            nx = len(range(b, nc, q))
            y, x = (r0 + a) * s, (q0 + b) * s
            if my == nx == 1:  # a group of one window: a plain slice is cheaper than a strided view
                acc[:, y : y + k, x : x + k, :] += dc[a, b]
                continue
            # the view built directly: as_strided's own overhead would outweigh these small adds
            tgt = np.ndarray((my, nx, C, k, k, B), acc.dtype, acc, y * sh + x * sw,
                             (q * s * sh, q * s * sw, sc, sh, sw, sb))
            tgt += dc[a::q, b::q]


def _add_by_offset(acc: Array, d: Array, i0: int, r0: int, q0: int, nr: int, nc: int) -> None:
    """Stride 1: acc (C, H, W, B) += the rectangle (rows r0.., columns q0.., nr x nc locations,
    flat offset i0 in the chunk) of d (C, k, k, n*B), columns dc laid out offset-major. Window
    element (ky, kx) of every location of the rectangle lands in one (C, nr, nc*B) block of acc,
    rows of nc*B contiguous numbers on both sides: k*k adds for the rectangle, not one per location
    (the scaling family's first layer: 64 adds for a chunk of 240 locations)."""
    C, k, _, _ = d.shape
    B = acc.shape[3]
    src = d[:, :, :, i0 * B : (i0 + nr * nc) * B]
    with unbuffered_ufuncs(nc * B):
        for ky in range(k):
            for kx in range(k):
                acc[:, r0 + ky : r0 + ky + nr, q0 + kx : q0 + kx + nc, :] += src[:, ky, kx].reshape(C, nr, nc, B)


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
