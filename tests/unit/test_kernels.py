"""Kernels against slow loop references, adjointness, finite differences, NumPy vs CuPy."""
from __future__ import annotations

import numpy as np
import pytest

from repro.engine.kernels import (gaussian_window, l2pool_backward, l2pool_forward, lc_backward_data,
                                  lc_backward_weights, lc_flops, lc_forward, lc_output_shape, lcn_backward,
                                  lcn_forward)

# (B, C, H, W, k, stride, F): strides 1-3, windows that do not tile (11, k=4, s=3),
# 1 and 3 input maps, non-square images, F = 1 and 5
LC_CASES = [
    (2, 1, 7, 7, 3, 1, 1),
    (3, 3, 11, 11, 4, 3, 5),
    (2, 3, 9, 12, 3, 2, 5),
    (1, 1, 11, 8, 4, 3, 1),
    (4, 3, 10, 7, 5, 1, 5),
    (2, 3, 13, 10, 3, 3, 1),
]
POOL_CASES = [(2, 3, 7, 9, 3, 1), (1, 2, 11, 8, 3, 2), (2, 1, 10, 10, 5, 3), (1, 2, 6, 7, 2, 2)]
LCN_CASES = [(2, 3, 9, 8, 5, 1.5), (1, 1, 7, 7, 3, 1.0), (2, 4, 10, 13, 7, 2.0)]


def _lc_case(case, dtype=np.float64, seed=0):
    B, C, H, W, k, s, F = case
    rng = np.random.default_rng(seed)
    OY, OX = lc_output_shape((H, W), k, s)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    Wt = rng.standard_normal((OY, OX, F, C, k, k)).astype(dtype)
    dy = rng.standard_normal((B, F, OY, OX)).astype(dtype)
    return x, Wt, dy, k, s


# ---------------------------------------------------------------- slow, obviously correct references
def ref_lc_forward(x, W, s):
    B = x.shape[0]
    OY, OX, F, C, k, _ = W.shape
    y = np.zeros((B, F, OY, OX))
    for b in range(B):
        for f in range(F):
            for i in range(OY):
                for j in range(OX):
                    y[b, f, i, j] = np.sum(W[i, j, f] * x[b, :, i * s : i * s + k, j * s : j * s + k])
    return y


def ref_lc_backward_data(dy, W, s, shape):
    dx = np.zeros(shape)
    OY, OX, F, C, k, _ = W.shape
    for b in range(shape[0]):
        for f in range(F):
            for i in range(OY):
                for j in range(OX):
                    dx[b, :, i * s : i * s + k, j * s : j * s + k] += dy[b, f, i, j] * W[i, j, f]
    return dx


def ref_lc_backward_weights(x, dy, s, k):
    B, F, OY, OX = dy.shape
    dW = np.zeros((OY, OX, F, x.shape[1], k, k))
    for b in range(B):
        for f in range(F):
            for i in range(OY):
                for j in range(OX):
                    dW[i, j, f] += dy[b, f, i, j] * x[b, :, i * s : i * s + k, j * s : j * s + k]
    return dW


def ref_l2pool(y, size, s, eps):
    B, F, H, W = y.shape
    oh, ow = (H - size) // s + 1, (W - size) // s + 1
    p = np.zeros((B, F, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = y[:, :, i * s : i * s + size, j * s : j * s + size]
            p[:, :, i, j] = np.sqrt(eps + (win**2).sum(axis=(2, 3)))
    return p


def ref_lcn(x, size, sigma, eps):
    B, C, H, W = x.shape
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t[:, None] ** 2 + t[None, :] ** 2) / sigma**2)
    w = g / (C * g.sum())
    r = size // 2
    out = np.zeros((B, C, H - size + 1, W - size + 1))
    for b in range(B):
        for i in range(H - size + 1):
            for j in range(W - size + 1):
                win = x[b, :, i : i + size, j : j + size]
                m = np.sum(w * win)
                v2 = max(np.sum(w * win**2) - m**2, 0.0)
                out[b, :, i, j] = (x[b, :, i + r, j + r] - m) / np.sqrt(eps + v2)
    return out


def _fd_check(f, x, g_analytic, n=12, h=1e-6, seed=1, rtol=1e-5, atol=1e-7):
    """Central differences of the scalar f at n random coordinates of x."""
    rng = np.random.default_rng(seed)
    for idx in zip(*(rng.integers(0, d, n) for d in x.shape)):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        num = (f(xp_) - f(xm)) / (2 * h)
        assert num == pytest.approx(g_analytic[idx], rel=rtol, abs=atol), idx


# ---------------------------------------------------------------- locally connected
@pytest.mark.parametrize("case", LC_CASES)
def test_lc_forward_matches_loop(case):
    x, W, dy, k, s = _lc_case(case)
    np.testing.assert_allclose(lc_forward(x, W, s), ref_lc_forward(x, W, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LC_CASES)
def test_lc_backward_data_matches_loop(case):
    x, W, dy, k, s = _lc_case(case)
    dx = lc_backward_data(dy, W, s, x.shape)
    np.testing.assert_allclose(dx, ref_lc_backward_data(dy, W, s, x.shape), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LC_CASES)
def test_lc_backward_weights_matches_loop(case):
    x, W, dy, k, s = _lc_case(case)
    dW = lc_backward_weights(x, dy, s, k)
    assert dW.shape == W.shape
    np.testing.assert_allclose(dW, ref_lc_backward_weights(x, dy, s, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LC_CASES)
@pytest.mark.parametrize("chunk_locs", [1, 3, 10**6])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("moves", ["per chunk", "per location"])
def test_lc_cpu_chunks_match_loop(case, chunk_locs, dtype, moves, monkeypatch):
    """The CPU kernels with chunks of one, three and all locations; backward-weights moving its
    (K, F) blocks into dW one chunk at a time (small blocks) or one location at a time (OpenCV
    for float32)."""
    import repro.engine.kernels.lc as lc

    x, W, dy, k, s = _lc_case(case, dtype=dtype)
    K, B = W.shape[3] * k * k, x.shape[0]
    monkeypatch.setattr(lc, "_CPU_CHUNK_BYTES", chunk_locs * K * B * x.itemsize)
    if moves == "per location":
        monkeypatch.setattr(lc, "_BATCHED_MOVE_MAX", 0)
    else:
        assert K * W.shape[2] < lc._BATCHED_MOVE_MAX
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lc_forward(x, W, s), ref_lc_forward(x, W, s), **tol)
    np.testing.assert_allclose(lc_backward_weights(x, dy, s, k), ref_lc_backward_weights(x, dy, s, k), **tol)
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), ref_lc_backward_data(dy, W, s, x.shape), **tol)


@pytest.mark.parametrize("path", ["cpu", "generic"])
def test_lc_backward_weights_into_out(path, monkeypatch):
    """out= is written over (stale contents and all) and returned, on each code path."""
    import repro.engine.kernels.lc as lc

    x, W, dy, k, s = _lc_case(LC_CASES[2])
    monkeypatch.setattr(lc, "_FORCE_GENERIC", path == "generic")
    out = np.full(W.shape, np.nan)
    got = lc_backward_weights(x, dy, s, k, out=out)
    assert got is out
    np.testing.assert_allclose(out, ref_lc_backward_weights(x, dy, s, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", ["shape", "dtype", "strided"])
def test_lc_backward_weights_rejects_unfit_out(bad):
    x, W, dy, k, s = _lc_case(LC_CASES[2])
    out = {"shape": np.empty(W.shape[:-1] + (W.shape[-1] + 1,)), "dtype": np.empty(W.shape, np.float32),
           "strided": np.empty(W.shape[:-1] + (2 * W.shape[-1],))[..., ::2]}[bad]
    with pytest.raises(ValueError, match="out must be"):
        lc_backward_weights(x, dy, s, k, out=out)


def test_lc_backward_data_zero_where_no_window_reaches():
    x, W, dy, k, s = _lc_case((2, 3, 11, 12, 4, 3, 5))  # rows/cols 10 (and 11) are never read
    dx = lc_backward_data(dy, W, s, x.shape)
    assert np.all(dx[:, :, 10:, :] == 0) and np.all(dx[:, :, :, 10:] == 0)
    assert np.all(dx[:, :, :10, :10] != 0)


@pytest.mark.parametrize("case", LC_CASES)
def test_lc_adjoints(case):
    x, W, dy, k, s = _lc_case(case, seed=3)
    a = np.vdot(lc_forward(x, W, s), dy)
    b = np.vdot(x, lc_backward_data(dy, W, s, x.shape))
    c = np.vdot(W, lc_backward_weights(x, dy, s, k))
    assert b == pytest.approx(a, rel=1e-12, abs=1e-12)
    assert c == pytest.approx(a, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("F", [3, 20])
def test_lc_larger_than_one_chunk(F):
    """Many locations and a wide batch: several chunks, run on the thread pool."""
    x, W, dy, k, s = _lc_case((40, 4, 30, 30, 6, 1, F), dtype=np.float32)
    y = lc_forward(x, W, s)
    ref = np.einsum("ijfcuv,bcijuv->bfij", W.astype(np.float64),
                    np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (k, k), axis=(2, 3)))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
    a = np.vdot(y.astype(np.float64), dy)
    assert np.vdot(x, lc_backward_data(dy, W, s, x.shape).astype(np.float64)) == pytest.approx(a, rel=1e-4)
    assert np.vdot(W, lc_backward_weights(x, dy, s, k).astype(np.float64)) == pytest.approx(a, rel=1e-4)


def test_lc_float32_stays_float32():
    x, W, dy, k, s = _lc_case(LC_CASES[1], dtype=np.float32)
    assert lc_forward(x, W, s).dtype == np.float32
    assert lc_backward_data(dy, W, s, x.shape).dtype == np.float32
    assert lc_backward_weights(x, dy, s, k).dtype == np.float32


def test_lc_flops():
    assert lc_flops(3, (2, 4, 5, 3, 6, 6)) == 2.0 * 3 * 2 * 4 * 5 * 3 * 36


def test_lc_shape_errors():
    x, W, dy, k, s = _lc_case(LC_CASES[1])
    with pytest.raises(ValueError):
        lc_forward(x, W, s + 1)
    with pytest.raises(ValueError):
        lc_backward_weights(x, dy[:, :, :-1], s, k)


# ---------------------------------------------------------------- L2 pooling
@pytest.mark.parametrize("case", POOL_CASES)
def test_l2pool_forward_matches_loop(case):
    B, F, H, W, size, s = case
    y = np.random.default_rng(0).standard_normal((B, F, H, W))
    np.testing.assert_allclose(l2pool_forward(y, size, s, 1e-2), ref_l2pool(y, size, s, 1e-2), rtol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES)
def test_l2pool_gradient(case):
    B, F, H, W, size, s = case
    rng = np.random.default_rng(1)
    y = rng.standard_normal((B, F, H, W))
    p = l2pool_forward(y, size, s, 1e-2)
    dp = rng.standard_normal(p.shape)
    dy = l2pool_backward(dp, y, p, size, s)
    _fd_check(lambda v: np.vdot(l2pool_forward(v, size, s, 1e-2), dp), y, dy)


def test_l2pool_float32():
    y = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    p = l2pool_forward(y, 3, 1, 1e-2)
    assert p.dtype == np.float32
    assert l2pool_backward(np.ones_like(p), y, p, 3, 1).dtype == np.float32


# ---------------------------------------------------------------- LCN
def test_gaussian_window():
    g = gaussian_window(5, 1.5, np, np.float64)
    assert g.shape == (5, 5) and g.sum() == pytest.approx(1.0)
    assert g[2, 2] == g.max() and np.allclose(g, g.T) and np.allclose(g, g[::-1, ::-1])
    assert gaussian_window(3, 1.0, np, np.float32).dtype == np.float32


@pytest.mark.parametrize("case", LCN_CASES)
def test_lcn_forward_matches_loop(case):
    B, C, H, W, n, sigma = case
    x = np.random.default_rng(0).standard_normal((B, C, H, W))
    out = lcn_forward(x, n, sigma, 1e-2)
    assert out.shape == (B, C, H - n + 1, W - n + 1)
    np.testing.assert_allclose(out, ref_lcn(x, n, sigma, 1e-2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", LCN_CASES)
def test_lcn_gradient(case):
    B, C, H, W, n, sigma = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, C, H, W)) + 0.5
    dout = rng.standard_normal((B, C, H - n + 1, W - n + 1))
    dx = lcn_backward(dout, x, n, sigma, 1e-2)
    assert dx.shape == x.shape
    _fd_check(lambda v: np.vdot(lcn_forward(v, n, sigma, 1e-2), dout), x, dx, n=20)


def test_lcn_gradient_of_flat_region():
    """Where the local variance clips to zero the gradient still matches finite differences."""
    x = np.ones((1, 2, 6, 6))
    x[0, :, :, 3:] += np.random.default_rng(0).standard_normal((2, 6, 3))
    dout = np.random.default_rng(1).standard_normal((1, 2, 4, 4))
    dx = lcn_backward(dout, x, 3, 1.0, 1e-2)
    f = lambda v: np.vdot(lcn_forward(v, 3, 1.0, 1e-2), dout)
    # coordinates well inside the constant region (variance exactly 0, away from the kink)
    for idx in [(0, 0, 0, 0), (0, 1, 1, 0)]:
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += 1e-6
        xm[idx] -= 1e-6
        assert (f(xp_) - f(xm)) / 2e-6 == pytest.approx(dx[idx], rel=1e-4, abs=1e-6)


def test_lcn_float32():
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = lcn_forward(x, 5, 1.5, 1e-2)
    assert out.dtype == np.float32
    assert lcn_backward(np.ones_like(out), x, 5, 1.5, 1e-2).dtype == np.float32


# ---------------------------------------------------------------- CuPy == NumPy
def _cupy_or_skip():
    cp = pytest.importorskip("cupy")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception:  # driver missing
        n = 0
    if n == 0:
        pytest.skip("CuPy sees no GPU")
    return cp


class TestCuPyMatchesNumPy:
    @pytest.mark.parametrize("case", LC_CASES)
    def test_lc(self, case):
        cp = _cupy_or_skip()
        x, W, dy, k, s = _lc_case(case)
        gx, gW, gdy = cp.asarray(x), cp.asarray(W), cp.asarray(dy)
        np.testing.assert_allclose(cp.asnumpy(lc_forward(gx, gW, s)), lc_forward(x, W, s), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cp.asnumpy(lc_backward_data(gdy, gW, s, x.shape)),
                                   lc_backward_data(dy, W, s, x.shape), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cp.asnumpy(lc_backward_weights(gx, gdy, s, k)),
                                   lc_backward_weights(x, dy, s, k), rtol=1e-10, atol=1e-10)

    @pytest.mark.parametrize("case", LC_CASES)
    def test_lc_float32(self, case):
        cp = _cupy_or_skip()
        x, W, dy, k, s = _lc_case(case, dtype=np.float32)
        y = lc_forward(cp.asarray(x), cp.asarray(W), s)
        assert y.dtype == cp.float32
        np.testing.assert_allclose(cp.asnumpy(y), lc_forward(x, W, s), rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("case", POOL_CASES)
    def test_l2pool(self, case):
        cp = _cupy_or_skip()
        B, F, H, W, size, s = case
        y = np.random.default_rng(0).standard_normal((B, F, H, W))
        p = l2pool_forward(y, size, s, 1e-2)
        gp = l2pool_forward(cp.asarray(y), size, s, 1e-2)
        np.testing.assert_allclose(cp.asnumpy(gp), p, rtol=1e-10)
        dp = np.ones_like(p)
        np.testing.assert_allclose(cp.asnumpy(l2pool_backward(cp.asarray(dp), cp.asarray(y), gp, size, s)),
                                   l2pool_backward(dp, y, p, size, s), rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("case", LCN_CASES)
    def test_lcn(self, case):
        cp = _cupy_or_skip()
        B, C, H, W, n, sigma = case
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, C, H, W))
        dout = rng.standard_normal((B, C, H - n + 1, W - n + 1))
        np.testing.assert_allclose(cp.asnumpy(lcn_forward(cp.asarray(x), n, sigma, 1e-2)),
                                   lcn_forward(x, n, sigma, 1e-2), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cp.asnumpy(lcn_backward(cp.asarray(dout), cp.asarray(x), n, sigma, 1e-2)),
                                   lcn_backward(dout, x, n, sigma, 1e-2), rtol=1e-10, atol=1e-12)
        assert gaussian_window(n, sigma, cp, cp.float32).dtype == cp.float32


@pytest.mark.parametrize("case", LC_CASES)
def test_lc_backward_data_generic_path_matches(case, monkeypatch):
    """The GPU code path (one batched GEMM + grouped scatter-add), run on NumPy."""
    import repro.engine.kernels.lc as lc

    x, W, dy, k, s = _lc_case(case)
    fast = lc_backward_data(dy, W, s, x.shape)
    monkeypatch.setattr(lc, "_FORCE_GENERIC", True)
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), fast, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast, ref_lc_backward_data(dy, W, s, x.shape), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- GPU path: bounded temporaries
def _gpu_path_calls(x, W, dy, k, s):
    return (lambda: lc_forward(x, W, s), lambda: lc_backward_data(dy, W, s, x.shape),
            lambda: lc_backward_weights(x, dy, s, k))


@pytest.mark.parametrize("case", LC_CASES)
@pytest.mark.parametrize("locs", [1, 2.5, 7, 10**6])  # one location, part of a row, rows, all
def test_lc_gpu_path_chunked_matches_loop(case, locs, monkeypatch):
    """The GPU code path on NumPy with a tiny chunk budget: every chunking equals the reference."""
    import repro.engine.kernels.lc as lc

    x, W, dy, k, s = _lc_case(case)
    K, B = W.shape[3] * k * k, x.shape[0]
    monkeypatch.setattr(lc, "_FORCE_GENERIC", True)
    monkeypatch.setattr(lc, "_GPU_CHUNK_BYTES", int(locs * K * B * x.itemsize))
    np.testing.assert_allclose(lc_forward(x, W, s), ref_lc_forward(x, W, s), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), ref_lc_backward_data(dy, W, s, x.shape),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lc_backward_weights(x, dy, s, k), ref_lc_backward_weights(x, dy, s, k),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gpu_path", [True, False])
@pytest.mark.parametrize("locs", [1, 3, 40])
def test_lc_workspace_bounds_temporaries(gpu_path, locs, monkeypatch):
    """Peak traced allocation of each call minus its output stays within lc_workspace_bytes
    (NumPy reports its buffers to tracemalloc; 64 KiB slack for Python objects)."""
    import tracemalloc

    import repro.engine.kernels.lc as lc

    x, W, dy, k, s = _lc_case((4, 3, 20, 21, 5, 2, 5), dtype=np.float32)
    K, B = W.shape[3] * k * k, x.shape[0]
    monkeypatch.setattr(lc, "_FORCE_GENERIC", gpu_path)
    monkeypatch.setattr(lc, "_GPU_CHUNK_BYTES", locs * K * B * 4)
    monkeypatch.setattr(lc, "_CPU_CHUNK_BYTES", locs * K * B * 4)
    ws = lc.lc_workspace_bytes(B, W.shape, 4, gpu=gpu_path, stride=s)
    assert ws <= lc.lc_workspace_bytes(B, W.shape, 4, gpu=gpu_path)  # stride=None is an upper bound
    for fn, out_bytes in zip(_gpu_path_calls(x, W, dy, k, s), (dy.nbytes, x.nbytes, W.nbytes)):
        fn()  # warm-up: the thread pool and its BLAS settings
        tracemalloc.start()
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - out_bytes <= ws + (64 << 10)
    if gpu_path:
        L, F = W.shape[0] * W.shape[1], W.shape[2]
        assert ws == min(L, locs) * B * (K + F) * 4


def test_lc_workspace_le2012_gpu_is_bounded():
    """The paper's first layer on one GPU: the old column buffer was 26 GB, now one chunk."""
    import repro.engine.kernels.lc as lc

    W_shape = (158, 158, 8, 8, 18, 18)
    full = 158 * 158 * 8 * 18 * 18 * 100 * 4
    assert full > 25e9
    assert lc.lc_workspace_bytes(100, W_shape, 4, gpu=True) <= lc._GPU_CHUNK_BYTES * (1 + 8 / 2592) + 1


def test_kernels_leave_the_blas_thread_count_alone():
    """The pool runs its GEMMs on one BLAS thread each; the process's BLAS must keep its own count."""
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS that threadpoolctl knows")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 20, 20)).astype(np.float32)
    W = rng.standard_normal((5, 5, 3, 2, 8, 8)).astype(np.float32)
    y = lc_forward(x, W, 3)
    lc_backward_data(y, W, 3, x.shape)
    lc_backward_weights(x, y, 3, 8)
    assert blas_threads() == before


@pytest.mark.parametrize("threads", ["1", "2"])
def test_lc_backward_data_long_runs_matches_loop(threads, monkeypatch):
    """Window rows of k*B >= 256 numbers: the CPU window adds walk the strided view in place
    (unbuffered ufuncs), on one and two threads."""
    from repro.engine.kernels._parallel import _UNBUFFERED_MIN_RUN

    monkeypatch.setenv("REPRO_KERNEL_THREADS", threads)
    x, W, dy, k, s = _lc_case((40, 2, 20, 21, 8, 2, 3))
    assert k * x.shape[0] >= _UNBUFFERED_MIN_RUN
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), ref_lc_backward_data(dy, W, s, x.shape),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("case, chunk_locs, way", [
    ((3, 2, 12, 11, 2, 1, 3), 10**6, "offset"),  # stride 1, whole rows: one add per window offset
    ((2, 3, 15, 14, 3, 1, 2), 40, "offset"),  # ... in chunks of 3 whole rows (of 12 locations)
    ((3, 2, 13, 17, 3, 2, 2), 10**6, "grouped"),  # stride 2: windows 2 locations apart share an add
    ((2, 2, 16, 17, 5, 3, 2), 10**6, "grouped"),  # stride 3
    ((2, 3, 11, 11, 4, 3, 5), 2, "one per location"),  # chunks of fewer locations than ceil(k/s)
])
def test_lc_backward_data_each_way_of_adding_matches_loop(case, chunk_locs, way, threads, monkeypatch):
    """The CPU backward-data adds window blocks by offset, by groups of windows or one per location,
    chosen per chunk by the number of adds: each way equals the loop, also where chunk and thread
    boundaries cut rows into pieces (with several threads the ways mix, so only one thread's is
    checked)."""
    import repro.engine.kernels.lc as lc

    monkeypatch.setenv("REPRO_KERNEL_THREADS", threads)
    x, W, dy, k, s = _lc_case(case)
    K, B = W.shape[3] * k * k, x.shape[0]
    monkeypatch.setattr(lc, "_CPU_CHUNK_BYTES", chunk_locs * K * B * x.itemsize)
    used = {"offset": 0, "grouped": 0}
    for name, fn in (("offset", lc._add_by_offset), ("grouped", lc._add_windows)):
        monkeypatch.setattr(lc, f"_add_{'by_offset' if name == 'offset' else 'windows'}",
                            lambda *a, _fn=fn, _n=name, **kw: (used.__setitem__(_n, used[_n] + 1), _fn(*a, **kw))[1])
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), ref_lc_backward_data(dy, W, s, x.shape),
                               rtol=1e-12, atol=1e-12)
    if threads != "1":
        return
    if way == "one per location":
        assert used == {"offset": 0, "grouped": 0}
    else:
        assert used[way] > 0


def test_unbuffered_ufuncs_is_scoped():
    """The small ufunc buffer holds inside the block only, and only for long runs."""
    from repro.engine.kernels._parallel import _UNBUFFERED_MIN_RUN, _UNBUFFERED_SIZE, unbuffered_ufuncs

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("NumPy 1 keeps the buffer size process-wide; it is left alone there")
    before = np.getbufsize()
    with unbuffered_ufuncs(_UNBUFFERED_MIN_RUN):
        assert np.getbufsize() == _UNBUFFERED_SIZE
        a = np.zeros((4, 600), np.float32)
        a[:, :300] += np.ones((4, 300), np.float32)
    assert np.getbufsize() == before and a[:, :300].sum() == 1200 and a[:, 300:].sum() == 0
    with unbuffered_ufuncs(_UNBUFFERED_MIN_RUN - 1):
        assert np.getbufsize() == before


# ---------------------------------------------------------------- layout moves (CPU)
@pytest.mark.parametrize("shape", [(3, 70001), (100, 4097), (4097, 100), (17, 33), (1, 5), (5, 1)])
@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("path", ["numpy", "opencv"])
def test_transpose2d_tiled_equals_numpy(shape, threads, path, monkeypatch):
    """The tiled, threaded transpose (forced on small arrays; NumPy tiles or OpenCV slabs) is an
    exact a.T for tall, wide, ragged and degenerate shapes, on one and several threads."""
    import repro.engine.kernels._layout as layout

    if path == "numpy":
        monkeypatch.setattr(layout, "cv2", None)
        monkeypatch.setattr(layout, "_MIN_TILED_BYTES", 0)
    else:
        assert layout.cv2 is not None  # a runtime dependency
        monkeypatch.setattr(layout, "_MIN_THREADED_BYTES", 0)
        monkeypatch.setattr(layout, "_SLAB_BYTES", 4096)  # many slabs, and a ragged last one
    monkeypatch.setenv("REPRO_KERNEL_THREADS", threads)
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = layout.transpose2d(a)
    assert out.flags.c_contiguous and out.shape == shape[::-1]
    np.testing.assert_array_equal(out, a.T)


def test_transpose2d_when_opencv_returns_a_new_array(monkeypatch):
    """If OpenCV does not write into the given output it returns a new array: that is copied in."""
    import repro.engine.kernels._layout as layout

    class NewArrayCV:
        @staticmethod
        def transpose(src, dst=None):
            return np.ascontiguousarray(src.T)

    monkeypatch.setattr(layout, "cv2", NewArrayCV)
    monkeypatch.setattr(layout, "_MIN_THREADED_BYTES", 0)
    monkeypatch.setattr(layout, "_SLAB_BYTES", 256)
    monkeypatch.setenv("REPRO_KERNEL_THREADS", "2")
    for shape in [(7, 300), (300, 7)]:
        a = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(layout.transpose2d(a), a.T)


def test_batch_last_and_back_round_trip(monkeypatch):
    import repro.engine.kernels._layout as layout

    monkeypatch.setattr(layout, "_MIN_TILED_BYTES", 0)
    x = np.random.default_rng(1).standard_normal((7, 3, 11, 13))
    xt = layout.batch_last(x)
    np.testing.assert_array_equal(xt, np.moveaxis(x, 0, -1))
    np.testing.assert_array_equal(layout.batch_first(xt), x)


@pytest.mark.parametrize("case", LC_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lc_cpu_kernels_with_tiled_layout_moves(case, dtype, monkeypatch):
    """Every CPU kernel with its layout moves forced through the tiled transpose (float64: NumPy
    tiles; float32: OpenCV slabs on the thread pool)."""
    import repro.engine.kernels._layout as layout

    monkeypatch.setattr(layout, "_MIN_TILED_BYTES", 0)
    monkeypatch.setattr(layout, "_MIN_THREADED_BYTES", 0)
    monkeypatch.setattr(layout, "_SLAB_BYTES", 256)
    monkeypatch.setenv("REPRO_KERNEL_THREADS", "2")
    x, W, dy, k, s = _lc_case(case, dtype=dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    x64, W64, dy64 = (a.astype(np.float64) for a in (x, W, dy))
    np.testing.assert_allclose(lc_forward(x, W, s), ref_lc_forward(x64, W64, s), rtol=tol, atol=tol)
    np.testing.assert_allclose(lc_backward_data(dy, W, s, x.shape), ref_lc_backward_data(dy64, W64, s, x.shape),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(lc_backward_weights(x, dy, s, k), ref_lc_backward_weights(x64, dy64, s, k),
                               rtol=tol, atol=tol)


def test_lcn_same_size_mirrors_the_border_and_its_gradient():
    """The input's LCN keeps the size: a mirrored border, then the valid LCN; its backward is exact."""
    from repro.engine.kernels import lcn_backward, lcn_forward, lcn_same_backward, lcn_same_forward
    from repro.engine.kernels.lcn import _pad_reflect, _pad_reflect_adjoint

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 9, 8))
    for r in (1, 2, 3):
        g = rng.standard_normal((2, 3, 9 + 2 * r, 8 + 2 * r))
        assert (_pad_reflect(x, r) * g).sum() == pytest.approx((x * _pad_reflect_adjoint(g, r)).sum(), rel=1e-12)
    np.testing.assert_array_equal(_pad_reflect(x, 2), np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect"))
    y = lcn_same_forward(x, 5, 1.2, 0.3)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, lcn_forward(_pad_reflect(x, 2), 5, 1.2, 0.3))
    d = rng.standard_normal(y.shape)
    got = lcn_same_backward(d, x, 5, 1.2, 0.3)
    for idx in ((0, 0, 0, 0), (1, 2, 8, 7), (0, 1, 4, 1), (1, 0, 1, 6)):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += 1e-6
        xm[idx] -= 1e-6
        fd = ((lcn_same_forward(xp_, 5, 1.2, 0.3) - lcn_same_forward(xm, 5, 1.2, 0.3)) * d).sum() / 2e-6
        assert got[idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError):
        lcn_same_forward(x, 17, 1.0, 0.1)
    assert lcn_backward is not None
