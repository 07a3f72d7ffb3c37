"""Optimisers: elementwise on each rank's tiles, so distributed updates equal serial ones exactly."""
from __future__ import annotations

from typing import Any

from repro.engine.backend import get_array_module
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
        """Update in place, one scratch array per parameter: no full-size temporaries per step
        (the update touches every weight and is memory bound; temporaries doubled its time)."""
        for name, g in grads.items():
            p = params[name]
            xp = get_array_module(p)
            key = self.state_names(name)[0]
            if key not in self.state:
                self.state[key] = xp.zeros_like(p)
            if name not in self._scratch:
                self._scratch[name] = xp.empty_like(p)
            s, tmp = self.state[key], self._scratch[name]
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
