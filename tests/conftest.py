"""Shared test helpers: launching scenarios under ``mpiexec`` and finding a GPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


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
    e.update(env or {})
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def gpu_available() -> bool:
    from repro.engine.backend import gpu_available as _g
    return _g()


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")


def invoke(*args):
    """``repro --device cpu ARGS`` through Click's runner, in this process."""
    from click.testing import CliRunner

    from repro.cli import cli

    return CliRunner().invoke(cli, ["--device", "cpu", *map(str, args)], catch_exceptions=False)


def one_line_error(result, *words: str) -> str:
    """Bad input: exit code not 0 and exactly one ``Error:`` line (no traceback) naming ``words``."""
    assert result.exit_code != 0
    text = result.output.strip()
    assert text.startswith("Error:") and "\n" not in text and "Traceback" not in text, text
    for w in words:
        assert w in text, text
    return text


def train_tiny_run(d: Path) -> tuple[Path, Path]:
    """A 3-steps-per-stage ``mini`` run under ``d`` (run folder, data root): for command tests."""
    root, run = d / "data", d / "run"
    r = invoke("train", "--config", "mini", "--out", run, "--root", root, "--layer-steps", 3, "--batch", 16)
    assert r.exit_code == 0, r.output
    return run, root
