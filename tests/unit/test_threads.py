"""BLAS threads: set through threadpoolctl for one block, restored after (repro/engine/threads.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json
import numpy as np  # loads the BLAS, with OPENBLAS_NUM_THREADS=2 from the environment
from threadpoolctl import threadpool_info
from repro.engine.threads import single_threaded_blas

def blas():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

before = blas()
with single_threaded_blas():
    inside = blas()
print(json.dumps({"before": before, "inside": inside, "after": blas()}))
"""


def test_single_threaded_blas_sets_one_thread_and_restores():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2", OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    r = json.loads(p.stdout)
    if not r["before"]:
        pytest.skip("NumPy's BLAS is not one threadpoolctl knows")
    assert r["before"] == [2] * len(r["before"]) and r["after"] == r["before"]
    assert r["inside"] == [1] * len(r["before"])


def test_no_hand_written_blas_calls():
    """The BLAS is reached through threadpoolctl only: no ctypes lookups of OpenBLAS symbols."""
    import repro.engine.kernels._parallel as parallel

    assert "ctypes" not in vars(parallel) and not hasattr(parallel, "_blas_fns")
