"""A stand-in for CuPy on machines with no GPU: NumPy underneath, an array type of its own, and the
few ``cupy.cuda`` calls repro makes.

Installed as ``sys.modules["cupy"]`` (``install``), it sends every GPU branch of repro down its path
on the CPU: ``xp is not np`` in the kernels, optimiser and halo exchange, ``.get()`` copies back to
the host, stream synchronisation, the memory pool, device names and free memory. It checks those
branches' logic and numbers against the NumPy path. It cannot check CuPy's API or speed: NumPy
answers every call, so a function CuPy lacks would pass here (the GPU tests on a real device do).

Run a script's ranks with ``REPRO_TEST_FAKE_CUPY=1`` and call ``install_if_asked()`` first to use
it under ``mpiexec``.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np

FREE_BYTES = 6 << 30
TOTAL_BYTES = 8 << 30
NAME = "NumPy stand-in for CuPy"


class ndarray(np.ndarray):
    """Host memory, but owned by "cupy" (``repro.engine.backend.get_array_module`` keys on the module)."""

    def get(self) -> np.ndarray:
        return np.array(self, copy=True, subok=False)


ndarray.__module__ = "cupy._core.core"


def _wrap(x: Any) -> Any:
    if type(x) is np.ndarray:
        return x.view(ndarray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class _Namespace(types.ModuleType):
    """NumPy's namespace (or a submodule of it) whose functions return stand-in arrays."""

    def __init__(self, name: str, target: types.ModuleType) -> None:
        super().__init__(name)
        self._target = target

    def __getattr__(self, key: str) -> Any:
        v = getattr(self._target, key)
        if isinstance(v, types.ModuleType):
            return _Namespace(f"{self.__name__}.{key}", v)
        if key == "ndarray":
            return ndarray
        if callable(v) and not isinstance(v, type):
            def call(*args: Any, **kwargs: Any) -> Any:
                return _wrap(v(*args, **kwargs))

            call.__name__ = key
            return call
        return v


class _Stream:
    def synchronize(self) -> None:
        pass


class _Device:
    def __init__(self, device: int = 0) -> None:
        self.id = int(device)

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    @property
    def mem_info(self) -> tuple[int, int]:
        return FREE_BYTES, TOTAL_BYTES


class _Pool:
    def total_bytes(self) -> int:
        return 0  # not tracked: NumPy frees through the host allocator

    def used_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


def _runtime() -> types.SimpleNamespace:
    return types.SimpleNamespace(getDeviceCount=lambda: 1,
                                 getDeviceProperties=lambda i: {"name": NAME.encode()})


def make() -> types.ModuleType:
    cp = _Namespace("cupy", np)
    cp.cuda = types.SimpleNamespace(Device=_Device, runtime=_runtime(), get_current_stream=_Stream,
                                    Stream=_Stream)
    _pool = _Pool()
    cp.get_default_memory_pool = lambda: _pool
    cp.asnumpy = lambda a: np.array(a, copy=True, subok=False)
    cp.is_stand_in = True
    return cp


def install() -> types.ModuleType:
    """Put the stand-in in ``sys.modules`` (for the rest of the process) and return it."""
    cp = make()
    sys.modules["cupy"] = cp
    return cp


def install_if_asked() -> None:
    if os.environ.get("REPRO_TEST_FAKE_CUPY") == "1":
        install()
