"""The kernel benchmark runs end to end on a tiny shape and writes every row it prints (a smoke
test: it asserts what is recorded, never how fast anything is)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from support import fakecupy
from support.gpu import gpu_available

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "SETTLE_S", 0.0)
    monkeypatch.setattr(mod, "SHAPES", {"tiny": (4, 2, 20, 4, 2, 8)})  # (B, C, H, k, s, F)
    return mod


def test_bench_kernels_writes_every_row(bench, tmp_path):
    out = tmp_path / "k.json"
    assert bench.main(["--device", "cpu", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]["tiny"]
    rows = {"dense_gemm", "lc_forward", "lc_backward_data", "lc_backward_weights", "forward+backward",
            "gemms_alone", "gemms_cols_cached", "gemms_all_cached", "per_location_loop", "stage"}
    assert rows <= set(r["seconds"])
    assert all(r["seconds"][key] > 0 for key in rows)
    assert r["ratio_to_dense_gemm"]["dense_gemm"] == pytest.approx(1.0)
    assert r["out_hw"] == [9, 9] and 0 < r["stage_pool_lcn_share"] < 1
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file and renamed


@pytest.mark.parametrize("device", ["gpu", "stand-in"])
def test_bench_kernels_on_the_device(bench, tmp_path, monkeypatch, device):
    """The GPU branch (a real GPU, skipped without one, or fakecupy's NumPy stand-in for CuPy):
    the device's name is recorded and the CPU-only cached-operand rows are left out."""
    if device == "gpu" and not gpu_available():
        pytest.skip("needs CuPy and a GPU")
    if device == "stand-in":
        monkeypatch.setitem(sys.modules, "cupy", fakecupy.make())
    out = tmp_path / "k.json"
    assert bench.main(["--device", "gpu", "--repeats", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    r = d["results"]["tiny"]
    assert d["device"] == "gpu" and d["device_name"] and d["cupy"]
    assert r["seconds"]["gemms_alone"] > 0 and "gemms_cols_cached" not in r["seconds"]
    if device == "stand-in":
        assert d["device_name"] == fakecupy.NAME
