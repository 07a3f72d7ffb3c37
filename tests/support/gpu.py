"""Whether this machine has a GPU CuPy can use: GPU tests skip cleanly without one."""
from __future__ import annotations

import pytest

from repro.engine.backend import gpu_available

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")

__all__ = ["gpu_available", "requires_gpu"]
