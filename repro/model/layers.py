"""The three sublayers of a stage and the stage itself, each with the same face.

Every sublayer maps one distributed activation to the next over its own halo plan:
``forward(input DistArray, ...) -> (output tile, input window)`` and
``backward(d output tile, input window, ...) -> (d input tile, d weights)``. The window is the
part of the input this rank's output tile reads (its own tile plus the halo); the backward pass
returns window-shaped gradients to their owners with :func:`~repro.engine.distarray.scatter_add`.
The distributed part is only *how the input window is fetched*; the maths is the kernels'.

Shapes (one rank; ``B`` images, ``C`` input maps, ``F`` maps per location):
    LocalFilter   x (B, C, Hin, Win) -> y (B, F, Hf, Wf)   W (Hf, Wf, F, C, k, k), one GEMM per location
    L2Pool        y (B, F, Hf, Wf)   -> p (B, F, Hp, Wp)   p = sqrt(eps + sum over a window of y^2)
    LCN           p (B, F, Hp, Wp)   -> z (B, F, Hn, Wn)   valid local contrast normalisation
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from repro.engine import kernels as K
from repro.engine.backend import get_array_module
from repro.engine.comm import World
from repro.engine.distarray import DistArray, HaloPlan, scatter_add, windowed_apply
from repro.engine.partition import Box, Partition, box_shape
from repro.engine.timing import timed
from repro.model.config import StageConfig
from repro.model.layout import StageLayout


def _tiled(kernel: Any, out_shape: tuple[int, ...], first: Any, *args: Any, **kw: Any) -> Any:
    """Run a kernel on this rank's (sub)tile; an empty tile (a layer with fewer rows than the
    process grid) gets an empty result of the right shape without a call."""
    if 0 in out_shape:
        return kw["out"] if kw.get("out") is not None else get_array_module(first).zeros(out_shape, dtype=first.dtype)
    return kernel(first, *args, **kw)


def _sub(W: Any, box: Box, tile: Box) -> Any:
    """The weights of the output locations ``box`` (global) from this rank's tile ``tile``."""
    return W[box[0] - tile[0]:box[1] - tile[0], box[2] - tile[2]:box[3] - tile[2]]


@dataclass
class _Sublayer:
    """What every sublayer knows: its input and output partitions, the halo plan, the window rule."""

    part_in: Partition
    part_out: Partition
    plan: HaloPlan
    kernel: int
    stride: int
    w: World

    @property
    def tile(self) -> Box:
        return self.part_out.tile(self.w.rank)

    def _out_shape(self, B: int, F: int, box: Box | None = None) -> tuple[int, int, int, int]:
        return (B, F, *box_shape(self.tile if box is None else box))


@dataclass
class LocalFilter(_Sublayer):
    """Locally connected filtering (untied weights): ``y = W^T x``, the F maps of a location share a window."""

    maps: int = 8

    def forward(self, a: DistArray, W: Any) -> tuple[Any, Any]:
        """(y tile, input window). The tile's interior is computed while its halo is in flight."""
        B, tile = a.data.shape[0], self.tile

        def fn(xwin: Any, box: Box) -> Any:
            return _tiled(K.lc_forward, self._out_shape(B, self.maps, box), xwin, _sub(W, box, tile), self.stride)

        with timed("LC forward"):
            return windowed_apply(a, self.plan, tile, self.kernel, self.stride, fn)

    def backward(self, dy: Any, xw: Any, W: Any, need_input_grad: bool = True, need_weight_grad: bool = True,
                 dW_out: Any = None) -> tuple[Any, Any]:
        """(d input tile or None, dW or None) from d output tile; dW is written into dW_out if given."""
        dW = dx = None
        if need_weight_grad:
            with timed("LC backward-weights"):
                dW = _tiled(K.lc_backward_weights, W.shape, xw, dy, self.stride, self.kernel, out=dW_out)
        if need_input_grad:
            with timed("LC backward-data"):
                dxw = _tiled(K.lc_backward_data, xw.shape, dy, W, self.stride, xw.shape)
            dx = scatter_add(dxw, self.plan, self.w)
        return dx, dW

    def transpose(self, y: Any, W: Any, window_shape: tuple[int, ...]) -> Any:
        """The transposed connectivity ``W y`` (the RICA decoder): summed into the input's owners."""
        with timed("decoder W2 y"):
            xw = _tiled(K.lc_backward_data, window_shape, y, W, self.stride, window_shape)
        return scatter_add(xw, self.plan, self.w)

    def transpose_backward(self, g: DistArray, y: Any, W: Any, dW_out: Any = None) -> tuple[Any, Any]:
        """Gradients of ``<g, W y>``: (d y tile, d W, written into dW_out if given). ``g`` lives on
        the input partition."""
        B, tile = y.shape[0], self.tile

        def fn(gwin: Any, box: Box) -> Any:
            return _tiled(K.lc_forward, self._out_shape(B, self.maps, box), gwin, _sub(W, box, tile), self.stride)

        with timed("decoder backward"):
            dy, gw = windowed_apply(g, self.plan, tile, self.kernel, self.stride, fn)
        with timed("decoder backward-weights"):
            dW = _tiled(K.lc_backward_weights, W.shape, gw, y, self.stride, self.kernel, out=dW_out)
        return dy, dW


@dataclass
class L2Pool(_Sublayer):
    """L2 pooling with fixed uniform weights ``H``: ``p = sqrt(eps + H y^2)`` per map."""

    eps: float = 1e-2

    def forward(self, y: DistArray) -> tuple[Any, Any]:
        B, F = y.data.shape[:2]

        def fn(ywin: Any, box: Box) -> Any:
            return _tiled(K.l2pool_forward, self._out_shape(B, F, box), ywin, self.kernel, self.stride, self.eps)

        with timed("L2 pool forward"):
            return windowed_apply(y, self.plan, self.tile, self.kernel, self.stride, fn)

    def backward(self, dp: Any, yw: Any, p: Any) -> Any:
        with timed("L2 pool backward"):
            dyw = _tiled(K.l2pool_backward, yw.shape, dp, yw, p, self.kernel, self.stride)
        return scatter_add(dyw, self.plan, self.w)


@dataclass
class LCN(_Sublayer):
    """Valid local contrast normalisation over a Gaussian neighbourhood across all maps."""

    sigma: float = 1.0
    eps: float = 1e-2

    def forward(self, p: DistArray) -> tuple[Any, Any]:
        if self.kernel == 0:  # no LCN: the pooling output passes through (its tile is its window)
            return p.data, p.data
        B, F = p.data.shape[:2]

        def fn(pwin: Any, box: Box) -> Any:
            return _tiled(K.lcn_forward, self._out_shape(B, F, box), pwin, self.kernel, self.sigma, self.eps)

        with timed("LCN forward"):
            return windowed_apply(p, self.plan, self.tile, self.kernel, 1, fn)

    def backward(self, dz: Any, pw: Any) -> Any:
        if self.kernel == 0:
            return dz
        with timed("LCN backward"):
            dpw = _tiled(K.lcn_backward, pw.shape, dz, pw, self.kernel, self.sigma, self.eps)
        return scatter_add(dpw, self.plan, self.w)


SUBLAYERS = ("filter", "pool", "lcn")


def check_sublayer(name: str) -> str:
    if name not in SUBLAYERS:
        raise ValueError(f"unknown sublayer {name!r}: choose filter, pool or lcn")
    return name


@dataclass
class StageCache:
    """What the backward pass of one stage needs from its forward pass."""

    a: DistArray  # input
    xw: Any  # input window of the filter tile
    y: Any  # filter output tile
    yw: Any  # filter-output window of the pooling tile
    p: Any  # pooling output tile
    pw: Any  # pooling-output window of the LCN tile
    z: Any  # LCN output tile

    def sublayer(self, name: str) -> Any:
        """The tile of one sublayer's output: ``filter``, ``pool`` or ``lcn``."""
        return {"filter": self.y, "pool": self.p, "lcn": self.z}[check_sublayer(name)]


def _window_cover(n: int, stride: int, k: int) -> np.ndarray:
    """How many of n windows (size k, this stride) cover each position of their union."""
    c = np.zeros((n - 1) * stride + k if n else 0, np.float64)
    for j in range(n):
        c[j * stride:j * stride + k] += 1
    return c


class Stage:
    """Filtering -> L2 pooling -> LCN, and the stage's RICA objective."""

    def __init__(self, index: int, cfg: StageConfig, layout: StageLayout, lam: float, eps: float, w: World,
                 reconstruct: str = "image") -> None:
        self.index, self.cfg, self.layout, self.lam, self.w = index, cfg, layout, lam, w
        self.reconstruct = reconstruct
        L = layout
        self.filter = LocalFilter(L.part_in, L.part_f, L.plan_in, cfg.filter, cfg.stride, w, cfg.maps)
        self.pool = L2Pool(L.part_f, L.part_p, L.plan_f, cfg.pool, cfg.pool_stride, w, eps)
        self.lcn = LCN(L.part_p, L.part_n, L.plan_p, cfg.lcn, 1, w, cfg.lcn_sigma, cfg.lcn_eps)

    def forward(self, a: DistArray, W1: Any) -> StageCache:
        y, xw = self.filter.forward(a, W1)
        p, yw = self.pool.forward(DistArray(y, self.layout.part_f, self.w))
        z, pw = self.lcn.forward(DistArray(p, self.layout.part_p, self.w))
        return StageCache(a, xw, y, yw, p, pw, z)

    def rica(self, c: StageCache, W1: Any, W2: Any, dz: Any = None, need_input_grad: bool = False,
             dW1_out: Any = None, dW2_out: Any = None) -> tuple[float, Any, Any, Any]:
        """RICA loss (summed over ranks, mean over images), dW1, dW2 and optionally d loss / d input.

            R = ( ||W2 y - x||^2 + lambda * sum p ) / B,   y = W1^T x,  p = sqrt(eps + H y^2)

        ``dz``: gradient of later stages' losses with respect to this stage's LCN output (joint
        fine-tuning); it flows back through LCN and pooling into W1 and the input.
        ``dW1_out``, ``dW2_out``: arrays of W1's and W2's shape to write the gradients into.
        """
        if self.reconstruct == "window":
            return self._rica_window(c, W1, W2, dz, need_input_grad, dW1_out, dW2_out)
        B = c.y.shape[0]
        inv_b = 1.0 / B
        r = self.filter.transpose(c.y, W2, c.xw.shape) - c.a.data  # residual on the input's tile
        with timed("loss all-reduce"):
            loss = self.w.allreduce_sum(float((r * r).sum()) + self.lam * float(c.p.sum())) * inv_b
        g = r * (2.0 * inv_b)  # d loss / d reconstruction
        dy, dW2 = self.filter.transpose_backward(DistArray(g, self.layout.part_in, self.w), c.y, W2, dW2_out)
        da, dW1 = self._encoder_backward(c, dy, W1, dz, need_input_grad, dW1_out, inv_b)
        if da is not None:
            da = da - g  # the reconstruction target x is the input too
        return loss, dW1, dW2, da

    def _encoder_backward(self, c: StageCache, dy: Any, W1: Any, dz: Any, need_input_grad: bool, dW1_out: Any,
                          inv_b: float) -> tuple[Any, Any]:
        """(d input, dW1) from the reconstruction's gradient ``dy`` w.r.t. the filter output plus the
        sparsity term's (and, in fine-tuning, the later stages' ``dz``) through pooling and LCN."""
        xp = get_array_module(c.y)
        dp = xp.full(c.p.shape, self.lam * inv_b, dtype=c.p.dtype)
        if dz is not None:
            dp = dp + self.lcn.backward(dz, c.pw)
        dy = dy + self.pool.backward(dp, c.yw, c.p)
        return self.filter.backward(dy, c.xw, W1, need_input_grad, dW_out=dW1_out)

    def _rica_window(self, c: StageCache, W1: Any, W2: Any, dz: Any, need_input_grad: bool, dW1_out: Any,
                     dW2_out: Any) -> tuple[float, Any, Any, Any]:
        """RICA where every receptive field reconstructs its own window x_l (Le et al. 2011 per patch):

            R = ( sum_l ||W2_l^T y_l - x_l||^2 + lambda * sum p ) / B,   y_l = W1_l x_l

        Expanded, ||W2_l^T y_l - x_l||^2 = y_l.G_l y_l - 2 y_l.u_l + ||x_l||^2 with G_l = W2_l W2_l^T
        (F x F) and u_l = W2_l x_l (= y_l when tied), so no window-sized reconstruction is ever formed:
        per location only F x F products beside the layer's usual GEMMs. Gradients, per location:
        dR/dy = 2 (G y - u); dR/dW2 = 2 (y y^T) W2 - 2 y x^T; dR/dW1 = dR/dy x^T;
        dR/dx = W1^T dR/dy - 2 W2^T y + 2 x (each window's share, summed where windows overlap).
        """
        xp = get_array_module(c.y)
        B = c.y.shape[0]
        inv_b = 1.0 / B
        y = c.y  # (B, F, ty, tx)
        ty, tx = y.shape[2:]
        F = y.shape[1]
        W2r = W2.reshape(ty, tx, F, int(np.prod(W2.shape[3:])))
        G = xp.einsum("yxfd,yxgd->yxfg", W2r, W2r)  # (ty, tx, F, F)
        Gy = xp.einsum("yxfg,bgyx->bfyx", G, y)
        tied = W2 is W1
        u = y if tied else _tiled(K.lc_forward, y.shape, c.xw, W2, self.cfg.stride)
        s, k = self.cfg.stride, self.cfg.filter
        cover = xp.asarray(np.outer(_window_cover(ty, s, k), _window_cover(tx, s, k)), dtype=y.dtype)
        xsq = float((cover * (c.xw * c.xw).sum(axis=(0, 1))).sum()) if ty * tx else 0.0  # the constant sum ||x_l||^2
        with timed("loss all-reduce"):
            rec = float((y * Gy).sum()) - 2.0 * float((y * u).sum()) + xsq
            loss = self.w.allreduce_sum(rec + self.lam * float(c.p.sum())) * inv_b
        dy_rec = (Gy - u) * (2.0 * inv_b)
        # dR/dW2 = 2 (sum_b y y^T) W2 - 2 sum_b y x^T: the second term is a weight gradient of the layer
        with timed("decoder backward-weights"):
            dW2 = _tiled(K.lc_backward_weights, W2.shape, c.xw, y * (-2.0 * inv_b), s, k, out=dW2_out)
            if ty * tx:
                yy = xp.einsum("bfyx,bgyx->yxfg", y, y)
                dW2 += (xp.einsum("yxfg,yxgd->yxfd", yy, W2r) * (2.0 * inv_b)).reshape(W2.shape)
        da, dW1 = self._encoder_backward(c, dy_rec, W1, dz, need_input_grad, dW1_out, inv_b)
        if da is not None:
            # - 2 W2^T y + 2 x of every window, summed into the input where windows overlap
            with timed("decoder W2 y"):
                xw_part = _tiled(K.lc_backward_data, c.xw.shape, y * (-2.0 * inv_b), W2, s, c.xw.shape)
                if ty * tx:
                    xw_part = xw_part + c.xw * (cover * (2.0 * inv_b))
            da = da + scatter_add(xw_part, self.filter.plan, self.w)
        return loss, dW1, dW2, da
