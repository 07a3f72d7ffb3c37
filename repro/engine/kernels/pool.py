"""L2 pooling with fixed uniform weights: p = sqrt(eps + sum of squares over a window of one map).

Valid pooling, no padding, per map (Le et al. 2012's ``H``, fixed). The window sums are done
separably (rows, then columns), i.e. 2*size strided-slice adds, never loops over pixels.
"""
from __future__ import annotations

from typing import Any

from repro.engine.backend import get_array_module

Array = Any


def pool_output_size(n: int, size: int, stride: int) -> int:
    if size > n:
        raise ValueError(f"pool size {size} larger than map size {n}")
    return (n - size) // stride + 1


def _window_sum(a: Array, size: int, stride: int) -> Array:
    """Sum over size x size windows at the given stride on the last two axes (valid)."""
    xp = get_array_module(a)
    H, W = a.shape[-2:]
    oh, ow = pool_output_size(H, size, stride), pool_output_size(W, size, stride)
    rows = xp.zeros(a.shape[:-2] + (oh, W), dtype=a.dtype)  # (..., OH, W)
    for d in range(size):
        rows += a[..., d : d + stride * (oh - 1) + 1 : stride, :]
    out = xp.zeros(a.shape[:-2] + (oh, ow), dtype=a.dtype)  # (..., OH, OW)
    for d in range(size):
        out += rows[..., d : d + stride * (ow - 1) + 1 : stride]
    return out


def _window_sum_T(g: Array, size: int, stride: int, hw: tuple[int, int]) -> Array:
    """Adjoint of _window_sum: each pixel gets the sum of g over the windows that contain it."""
    xp = get_array_module(g)
    H, W = hw
    oh, ow = g.shape[-2:]
    cols = xp.zeros(g.shape[:-2] + (oh, W), dtype=g.dtype)  # (..., OH, W)
    for d in range(size):  # within one d the targets are distinct, so += is exact
        cols[..., d : d + stride * (ow - 1) + 1 : stride] += g
    out = xp.zeros(g.shape[:-2] + (H, W), dtype=g.dtype)  # (..., H, W)
    for d in range(size):
        out[..., d : d + stride * (oh - 1) + 1 : stride, :] += cols
    return out


def l2pool_forward(y: Array, size: int, stride: int, eps: float) -> Array:
    """p[b, f, i, j] = sqrt(eps + sum_{dy,dx < size} y[b, f, i*stride+dy, j*stride+dx]**2)."""
    xp = get_array_module(y)
    return xp.sqrt(_window_sum(y * y, size, stride) + y.dtype.type(eps))


def l2pool_backward(dp: Array, y: Array, p: Array, size: int, stride: int) -> Array:
    """dy = y * sum over the pools containing the pixel of dp / p (the exact gradient)."""
    return y * _window_sum_T(dp / p, size, stride, y.shape[-2:])
