"""CuPy (GPU) equals NumPy (CPU): the same network, the same numbers. Skipped without a GPU."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import TESTS, requires_gpu, run_mpi
from mpi_scenarios import SMALL, images
from repro.model.config import from_dict
from repro.model.network import Network, apply_update, compute_features, gather_tiles
from repro.model.optim import Optimizer

pytestmark = requires_gpu


def _pair():
    import cupy as cp

    cfg = from_dict(SMALL)
    return Network.create(cfg, seed=3), Network.create(cfg, seed=3, xp=cp)


def test_forward_losses_and_gradients_match_numpy():
    cpu, gpu = _pair()
    x = images()
    lc, gc = cpu.finetune_loss_and_grads(x)
    lg, gg = gpu.finetune_loss_and_grads(x)
    assert lg == pytest.approx(lc, rel=1e-4)
    for k in gc:
        np.testing.assert_allclose(gg[k].get(), gc[k], rtol=2e-3, atol=2e-5, err_msg=k)
    np.testing.assert_allclose(compute_features(gpu, x, 1, "lcn"), compute_features(cpu, x, 1, "lcn"),
                               rtol=2e-3, atol=2e-5)


def test_training_steps_match_numpy():
    cpu, gpu = _pair()
    oc, og = Optimizer("sgd", 0.01, 0.9), Optimizer("sgd", 0.01, 0.9)
    for step in range(3):
        x = images(seed=50 + step)
        apply_update(cpu, oc, cpu.finetune_loss_and_grads(x)[1])
        apply_update(gpu, og, gpu.finetune_loss_and_grads(x)[1])
    a, b = gather_tiles(cpu, cpu.params), gather_tiles(gpu, gpu.params)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("cuda_aware", ["0", "1"])
def test_halo_exchange_of_device_buffers(tmp_path, cuda_aware):
    """Two ranks on the GPU(s): staged through host memory, or handed to MPI directly when asked."""
    if cuda_aware == "1" and os.environ.get("REPRO_TEST_CUDA_AWARE") != "1":
        pytest.skip("set REPRO_TEST_CUDA_AWARE=1 on a machine whose MPI is CUDA-aware")
    out = tmp_path / "r.npz"
    run_mpi(2, [str(TESTS / "mpi_scenarios.py"), "distarray-gpu", str(out)],
            env={"REPRO_CUDA_AWARE_MPI": cuda_aware})
    r = np.load(out)
    assert r["fetch_ok"].all() and r["adjoint_ok"].all()
