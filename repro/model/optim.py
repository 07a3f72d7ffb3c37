"""Optimisers: elementwise on each rank's tiles, so distributed updates equal serial ones exactly."""
from __future__ import annotations

from typing import Any

import numpy as np

from repro.engine.backend import get_array_module, is_gpu
from repro.model.config import TrainConfig


class Optimizer:
    """SGD with momentum, or AdaGrad. ``state`` holds one array per parameter (checkpointed)."""

    def __init__(self, kind: str, lr: float, momentum: float = 0.9, eps: float = 1e-8) -> None:
        if kind not in ("sgd", "adagrad"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind, self.lr, self.momentum, self.eps = kind, lr, momentum, eps
        self.state: dict[str, Any] = {}
        self._scratch: dict[str, Any] = {}

    @classmethod
    def from_config(cls, t: TrainConfig) -> "Optimizer":
        return cls(t.optimizer, t.lr, t.momentum)

    def state_names(self, param: str) -> list[str]:
        return [f"{param}.{'velocity' if self.kind == 'sgd' else 'sumsq'}"]

    def step(self, params: dict[str, Any], grads: dict[str, Any]) -> None:
        """Update in place. The update touches every weight once and is memory bound: on GPUs it
        runs as whole-array in-place ops; on CPUs it runs block by block so the few passes of each
        block stay in cache (one trip through memory instead of one per operation)."""
        for name, g in grads.items():
            p = params[name]
            xp = get_array_module(p)
            key = self.state_names(name)[0]
            if key not in self.state:
                self.state[key] = xp.zeros_like(p)
            s = self.state[key]
            if not is_gpu(xp) and p.flags.c_contiguous and s.flags.c_contiguous:
                g = np.ascontiguousarray(g)
                pf, sf, gf = p.reshape(-1), s.reshape(-1), g.reshape(-1)
                tmp = np.empty(min(_BLOCK, pf.size), dtype=p.dtype)
                for lo in range(0, pf.size, _BLOCK):
                    hi = min(pf.size, lo + _BLOCK)
                    self._update(np, pf[lo:hi], sf[lo:hi], gf[lo:hi], tmp[:hi - lo])
            else:
                if name not in self._scratch:
                    self._scratch[name] = xp.empty_like(p)
                self._update(xp, p, s, g, self._scratch[name])

    def _update(self, xp: Any, p: Any, s: Any, g: Any, tmp: Any) -> None:
        if self.kind == "sgd":  # v = mu v - lr g ; p += v
            s *= self.momentum
            xp.multiply(g, self.lr, out=tmp)
            s -= tmp
            p += s
        else:  # h += g^2 ; p -= lr g / (sqrt(h) + eps)
            xp.multiply(g, g, out=tmp)
            s += tmp
            xp.sqrt(s, out=tmp)
            tmp += self.eps
            xp.divide(g, tmp, out=tmp)
            tmp *= self.lr
            p -= tmp


_BLOCK = 1 << 17  # elements per CPU block: 4 arrays x 512 KiB, about one core's L2 (measured best of 2^14..2^17)
