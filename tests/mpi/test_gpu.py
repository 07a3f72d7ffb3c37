"""CuPy (GPU) equals NumPy (CPU): the same network, the same numbers.

Each test runs twice: on a real GPU (skipped without one), and on ``fakecupy``'s NumPy stand-in for
CuPy, which sends every GPU branch of repro down its path on any machine (it checks the branches'
logic and numbers, not CuPy's API or speed)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from support import fakecupy
from support.gpu import gpu_available
from support.mpi import SCENARIOS, run_mpi
from support.scenarios import SMALL, images
from repro.model.config import from_dict
from repro.model.network import Network, apply_update, compute_features, gather_tiles
from repro.model.optim import Optimizer
from repro.engine.comm import world


@pytest.fixture(params=["gpu", "stand-in"])
def cp(request, monkeypatch):
    """The array module of the "device": CuPy on a GPU, or the NumPy stand-in."""
    if request.param == "gpu":
        if not gpu_available():
            pytest.skip("needs CuPy and a GPU")
        import cupy

        return cupy
    monkeypatch.setitem(sys.modules, "cupy", fakecupy.make())
    return sys.modules["cupy"]


def _pair(cp):
    cfg = from_dict(SMALL)
    return Network.create(cfg, seed=3, xp=np, w=world()), Network.create(cfg, seed=3, xp=cp, w=world())


def test_forward_losses_and_gradients_match_numpy(cp):
    cpu, gpu = _pair(cp)
    x = images()
    lc, gc = cpu.finetune_loss_and_grads(x)
    lg, gg = gpu.finetune_loss_and_grads(x)
    assert lg == pytest.approx(lc, rel=1e-4)
    for k in gc:
        np.testing.assert_allclose(gg[k].get(), gc[k], rtol=2e-3, atol=2e-5, err_msg=k)
    np.testing.assert_allclose(compute_features(gpu, x, 1, "lcn"), compute_features(cpu, x, 1, "lcn"),
                               rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
def test_training_steps_match_numpy(cp, kind):
    cpu, gpu = _pair(cp)
    oc, og = Optimizer(kind, 0.01, 0.9), Optimizer(kind, 0.01, 0.9)
    for step in range(3):
        x = images(seed=50 + step)
        apply_update(cpu, oc, cpu.finetune_loss_and_grads(x)[1])
        apply_update(gpu, og, gpu.finetune_loss_and_grads(x)[1])
    a, b = gather_tiles(cpu, cpu.params), gather_tiles(gpu, gpu.params)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("device", ["gpu", "stand-in"])
@pytest.mark.parametrize("cuda_aware", ["0", "1"])
def test_halo_exchange_of_device_buffers(tmp_path, cuda_aware, device):
    """Two ranks on the GPU(s): staged through host memory, or handed to MPI directly when asked
    (the stand-in's arrays are host memory, so MPI takes them directly as a CUDA-aware MPI would)."""
    if device == "gpu" and not gpu_available():
        pytest.skip("needs CuPy and a GPU")
    if device == "gpu" and cuda_aware == "1" and os.environ.get("REPRO_TEST_CUDA_AWARE") != "1":
        pytest.skip("set REPRO_TEST_CUDA_AWARE=1 on a machine whose MPI is CUDA-aware")
    out = tmp_path / "r.npz"
    run_mpi(2, [str(SCENARIOS), "distarray-gpu", str(out)],
            env={"REPRO_CUDA_AWARE_MPI": cuda_aware, "REPRO_TEST_FAKE_CUPY": "1" if device == "stand-in" else "0"})
    r = np.load(out)
    assert r["fetch_ok"].all() and r["adjoint_ok"].all()


def test_scaling_measures_on_the_device(cp):
    """scaling-sweep's worker on the device: GPU memory rule, device name, free memory, --largest."""
    from repro.engine.comm import world
    from repro.experiments import scaling as S
    from repro.model.memory import estimate

    cfg = S.sized_config("cpu", 1, batch=4)
    r = S.measure_update(cfg, 4, 1, xp=cp)
    assert r["device"] == "gpu" and r["update_s"] > 0
    assert r["estimate_bytes"] == max(e.total for e in estimate(cfg, 1, 4, gpu=True))
    budget = S.rank_memory_bytes(cp, world())
    assert 0 < budget <= cp.cuda.Device().mem_info[1]
    if getattr(cp, "is_stand_in", False):
        assert r["device_name"] == fakecupy.NAME and budget == fakecupy.FREE_BYTES
    big, need = S.largest_config(S.base_config("mini").with_train(batch=4), 1, 4, budget // 64, True, "big")
    assert need <= budget // 64 < max(e.total for e in estimate(
        S.resized(big, big.input_size[0] + 1, big.input_size[1] + 1, "bigger"), 1, 4, gpu=True))


def test_commands_run_on_the_device_as_on_the_cpu(cp, tmp_path):
    """train, evaluate and visualize with --device gpu: the same weights and the same best neuron as
    with --device cpu (float32 on both; the GPU sums in another order, so within a tolerance)."""
    import json

    from click.testing import CliRunner

    from repro.cli import cli
    from repro.model.network import load_checkpoint

    root = tmp_path / "data"
    runs = {}
    # mini's SGD (AdaGrad's first step amplifies round-off), with the input LCN of the default config
    from repro.model.config import CONFIG_DIR

    cfg = tmp_path / "mini-lcn.toml"
    cfg.write_text((CONFIG_DIR / "mini.toml").read_text().replace("[input]\n", "[input]\nlcn = 13\nlcn_sigma = 2.0\nlcn_eps = 0.1\n"))
    for device in ("cpu", "gpu"):
        run = runs[device] = tmp_path / device
        for args in (["train", "--config", cfg, "--data", "mini", "--out", run, "--root", root, "--layer-steps", 3,
                      "--finetune-steps", 2, "--batch", 16],
                     ["evaluate", "--concept", "faces", "--checkpoint", run, "--root", root,
                      "--linear-filters", "64", "--one-layer-steps", "1"],
                     ["visualize", "best-neuron", "--checkpoint", run, "--root", root, "--iters", "5"]):
            r = CliRunner().invoke(cli, ["--device", device, *map(str, args)], catch_exceptions=False)
            assert r.exit_code == 0, (device, args[0], r.output)
    (a, _), (b, _) = load_checkpoint(runs["cpu"], None, np, world()), load_checkpoint(runs["gpu"], None, np, world())
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=2e-3, atol=2e-5, err_msg=k)
    ec, eg = (json.loads((runs[d] / "evaluate-faces.json").read_text()) for d in ("cpu", "gpu"))
    assert eg["best_neuron"]["accuracy"] == pytest.approx(ec["best_neuron"]["accuracy"], abs=0.02)
    vc, vg = (json.loads((runs[d] / "visualize-best-neuron.json").read_text()) for d in ("cpu", "gpu"))
    assert (runs["gpu"] / "best-neuron-stimulus.png").read_bytes()[:4] == b"\x89PNG"
    assert set(vg) == set(vc)
