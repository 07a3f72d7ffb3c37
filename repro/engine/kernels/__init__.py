"""The hot loops of the engine, one code path for NumPy (CPU) and CuPy (GPU).

- locally connected layer (untied weights) as block-sparse batched GEMM: ``lc_forward``,
  ``lc_backward_data``, ``lc_backward_weights`` (layout ``x[b,c,y,x]``, ``W[oy,ox,f,c,ky,kx]``);
- L2 pooling with fixed uniform weights: ``l2pool_forward``, ``l2pool_backward``;
- valid local contrast normalisation: ``lcn_forward``, ``lcn_backward``, ``gaussian_window``; the
  same at unchanged size (mirrored border) for the network's input: ``lcn_same_forward``/``_backward``.

Every function takes NumPy or CuPy arrays and computes in their dtype.
"""
from repro.engine.kernels.lc import (
    lc_backward_data,
    lc_backward_weights,
    lc_flops,
    lc_forward,
    lc_output_shape,
    lc_workspace_bytes,
)
from repro.engine.kernels.lcn import gaussian_window, lcn_backward, lcn_forward, lcn_same_backward, lcn_same_forward
from repro.engine.kernels.pool import l2pool_backward, l2pool_forward, pool_output_size

__all__ = [
    "gaussian_window",
    "l2pool_backward",
    "l2pool_forward",
    "lc_backward_data",
    "lc_backward_weights",
    "lc_flops",
    "lc_forward",
    "lc_output_shape",
    "lc_workspace_bytes",
    "lcn_backward",
    "lcn_forward",
    "lcn_same_backward",
    "lcn_same_forward",
    "pool_output_size",
]
