"""Local contrast normalisation, valid (subtractive then divisive, Gaussian neighbourhood).

Valid means every output pixel has its full n x n neighbourhood: each spatial dim shrinks by
n - 1, so there is no border handling, and a distributed tile only needs an (n-1) halo.

    w = g / (C * g.sum())                       sums to 1 over (C, n, n)
    m[b,i,j]    = sum_{c,dy,dx} w[dy,dx] x[b,c,i+dy,j+dx]
    v2[b,i,j]   = max(sum_{c,dy,dx} w[dy,dx] x[b,c,i+dy,j+dx]**2 - m**2, 0)
    out[b,c,i,j] = (x[b,c,i+r,j+r] - m[b,i,j]) / sqrt(eps + v2[b,i,j]),   r = n // 2

The Gaussian is separable, so each local sum is 2*n shifted-slice adds on the channel sum.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from repro.engine.backend import get_array_module

Array = Any


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (t / float(sigma)) ** 2)
    return g / g.sum()


def gaussian_window(size: int, sigma: float, xp: Any = np, dtype: Any = np.float32) -> Array:
    """Centred size x size Gaussian (std sigma) normalised to sum 1 (so w = g / C)."""
    g1 = _gaussian_1d(size, sigma)
    return xp.asarray(np.outer(g1, g1), dtype=dtype)


def _corr(a: Array, g1: np.ndarray) -> Array:
    """Valid correlation of the last two axes of a with outer(g1, g1)."""
    xp = get_array_module(a)
    n = len(g1)
    H, W = a.shape[-2:]
    ho, wo = H - n + 1, W - n + 1
    t = xp.zeros(a.shape[:-2] + (ho, W), dtype=a.dtype)  # (..., Ho, W)
    for d in range(n):
        t += a.dtype.type(g1[d]) * a[..., d : d + ho, :]
    out = xp.zeros(a.shape[:-2] + (ho, wo), dtype=a.dtype)  # (..., Ho, Wo)
    for d in range(n):
        out += a.dtype.type(g1[d]) * t[..., d : d + wo]
    return out


def _corr_T(g: Array, g1: np.ndarray) -> Array:
    """Adjoint of _corr: (..., Ho, Wo) -> (..., Ho+n-1, Wo+n-1)."""
    xp = get_array_module(g)
    n = len(g1)
    ho, wo = g.shape[-2:]
    t = xp.zeros(g.shape[:-2] + (ho, wo + n - 1), dtype=g.dtype)
    for d in range(n):
        t[..., d : d + wo] += g.dtype.type(g1[d]) * g
    out = xp.zeros(g.shape[:-2] + (ho + n - 1, wo + n - 1), dtype=g.dtype)
    for d in range(n):
        out[..., d : d + ho, :] += g.dtype.type(g1[d]) * t
    return out


def _stats(x: Array, size: int, sigma: float, eps: float):
    """m, the clipped variance argument, its mask and den = sqrt(eps + v2); all (B, Ho, Wo)."""
    xp = get_array_module(x)
    if size > x.shape[-2] or size > x.shape[-1]:
        raise ValueError(f"LCN size {size} larger than input {x.shape[-2:]}")
    g1 = _gaussian_1d(size, sigma)
    inv_c = x.dtype.type(1.0 / x.shape[1])
    m = _corr(x.sum(axis=1), g1) * inv_c  # (B, Ho, Wo)
    raw = _corr((x * x).sum(axis=1), g1) * inv_c - m * m  # (B, Ho, Wo)
    v2 = xp.maximum(raw, 0)
    den = xp.sqrt(v2 + x.dtype.type(eps))
    return g1, m, raw > 0, den


def _centre(x: Array, size: int) -> Array:
    r = size // 2
    ho, wo = x.shape[-2] - size + 1, x.shape[-1] - size + 1
    return x[:, :, r : r + ho, r : r + wo]  # (B, C, Ho, Wo)


def lcn_forward(x: Array, size: int, sigma: float, eps: float) -> Array:
    """out (B, C, H-n+1, W-n+1): x minus its local mean, over its local standard deviation."""
    _, m, _, den = _stats(x, size, sigma, eps)
    return (_centre(x, size) - m[:, None]) / den[:, None]


def lcn_backward(dout: Array, x: Array, size: int, sigma: float, eps: float) -> Array:
    """Exact gradient of lcn_forward w.r.t. x; recomputes the statistics from x."""
    xp = get_array_module(dout, x)
    g1, m, mask, den = _stats(x, size, sigma, eps)
    inv_c = x.dtype.type(1.0 / x.shape[1])
    out = (_centre(x, size) - m[:, None]) / den[:, None]  # (B, C, Ho, Wo)
    dxc = dout / den[:, None]  # direct path through x[b, c, i+r, j+r]
    dden = -(dout * out).sum(axis=1) / den  # (B, Ho, Wo)
    dv2 = xp.where(mask, dden / (2 * den), 0).astype(x.dtype, copy=False)
    dm = -dxc.sum(axis=1) - 2 * m * dv2  # (B, Ho, Wo)
    dS1 = _corr_T(dm, g1) * inv_c  # (B, H, W): gradient w.r.t. sum_c x
    dS2 = _corr_T(dv2, g1) * inv_c  # (B, H, W): gradient w.r.t. sum_c x**2
    dx = dS1[:, None] + 2 * x * dS2[:, None]
    r = size // 2
    dx[:, :, r : r + dxc.shape[-2], r : r + dxc.shape[-1]] += dxc
    return dx


def _pad_reflect(x: Array, r: int) -> Array:
    """Mirror the last two axes by r pixels (the edge pixel itself is not repeated)."""
    xp = get_array_module(x)
    return xp.pad(x, ((0, 0),) * (x.ndim - 2) + ((r, r), (r, r)), mode="reflect")


def _pad_reflect_adjoint(g: Array, r: int) -> Array:
    """Adjoint of _pad_reflect: each padded pixel's gradient goes back to the pixel it mirrors."""
    H, W = g.shape[-2] - 2 * r, g.shape[-1] - 2 * r
    rows = g[..., r:r + H, :].copy()
    for j in range(r):  # padded row r-1-j mirrors row 1+j; padded row r+H+j mirrors row H-2-j
        rows[..., 1 + j, :] += g[..., r - 1 - j, :]
        rows[..., H - 2 - j, :] += g[..., r + H + j, :]
    out = rows[..., r:r + W].copy()
    for j in range(r):
        out[..., 1 + j] += rows[..., r - 1 - j]
        out[..., W - 2 - j] += rows[..., r + W + j]
    return out


def lcn_same_forward(x: Array, size: int, sigma: float, eps: float) -> Array:
    """LCN that keeps the size (B, C, H, W): the border is mirrored first. For the network's input,
    where no neighbouring tile supplies a halo and shrinking the image would waste its border."""
    if size // 2 >= min(x.shape[-2:]):
        raise ValueError(f"LCN size {size} too large for input {x.shape[-2:]}")
    return lcn_forward(_pad_reflect(x, size // 2), size, sigma, eps)


def lcn_same_backward(dout: Array, x: Array, size: int, sigma: float, eps: float) -> Array:
    """Exact gradient of lcn_same_forward w.r.t. x."""
    r = size // 2
    return _pad_reflect_adjoint(lcn_backward(dout, _pad_reflect(x, r), size, sigma, eps), r)
