"""Launching a script under ``mpiexec`` on several ranks, as the distributed tests do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
SCENARIOS = TESTS / "support" / "scenarios.py"  # the per-rank scripts (see support/scenarios.py)


def mpiexec_path() -> str:
    """The ``mpiexec`` beside this Python (the mpich wheel installs it there), else the PATH's."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec found")
    return found


def run_mpi(n: int, args: list[str], timeout: float = 240, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` on ``n`` ranks (oversubscribing the cores is fine), one BLAS thread each."""
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "PYTHONUNBUFFERED": "1"})
    # a scenario script imports its neighbours as ``support.*``, like the tests do
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), e.get("PYTHONPATH", "")) if p)
    e.update(env or {})
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
