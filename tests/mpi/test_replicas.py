"""Data-parallel replicas on a rank mesh: R model-parallel copies, each on its slice of the step's
images, gradients averaged, give the parameters of one copy trained with R times the batch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from repro.model.config import load_config
from repro.model.network import param_names
from support.cli import invoke, one_line_error
from support.mpi import run_mpi

STEPS = ["--config", "mini", "--layer-steps", "3", "--finetune-steps", "2", "--checkpoint-every", "3",
         "--optimizer", "sgd", "--lr", "0.0005"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert invoke("data", "prepare", "mini", "--root", root).exit_code == 0
    return root


@pytest.fixture(scope="module")
def serial(tmp_path_factory, data_root):
    """One copy, batch 16: what every mesh below must reproduce."""
    run = tmp_path_factory.mktemp("serial") / "run"
    r = invoke("train", *STEPS, "--batch", 16, "--out", run, "--root", data_root)
    assert r.exit_code == 0, r.output
    return run


def weights(run):
    out = run.parent / f"{run.name}.npz"
    assert invoke("export", "--checkpoint", run, "--out", out).exit_code == 0
    return np.load(out)


@pytest.mark.parametrize("ranks,replicas,batch", [(2, 2, 8), (4, 2, 8), (4, 4, 4)],
                         ids=["2x1", "2x2", "4x1"])
def test_replicas_equal_one_copy_with_the_whole_batch(tmp_path, data_root, serial, ranks, replicas, batch):
    run = tmp_path / "run"
    run_mpi(ranks, ["-m", "repro.cli", "--device", "cpu", "train", *STEPS, "--batch", str(batch),
                    "--replicas", str(replicas), "--out", str(run), "--root", str(data_root)])
    a, b = weights(serial), weights(run)
    for k in param_names(load_config("mini")):
        np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-6, err_msg=k)
    seg = json.loads((run / "train.json").read_text())["segments"][-1]
    assert (seg["ranks"], seg["replicas"], seg["batch"]) == (ranks, replicas, 16)
    assert [p.name for p in (run / "checkpoints").glob("step-*")]  # one copy, written by replica 0


def test_bad_mesh_and_a_resume_on_another_mesh_are_one_line(tmp_path, data_root, serial):
    p = run_mpi(3, ["-m", "repro.cli", "--device", "cpu", "train", *STEPS, "--batch", "8", "--replicas", "2",
                    "--out", str(tmp_path / "bad"), "--root", str(data_root)], check=False)
    assert p.returncode != 0 and "--replicas 2: must divide the 3 rank(s)" in p.stderr + p.stdout
    assert "Traceback" not in p.stderr + p.stdout and not (tmp_path / "bad").exists()
    run = tmp_path / "half"
    run_mpi(2, ["-m", "repro.cli", "--device", "cpu", "train", *STEPS, "--batch", "8", "--replicas", "2",
                "--max-steps", "3", "--out", str(run), "--root", str(data_root)])
    one_line_error(invoke("train", "--out", run, "--root", data_root, "--resume"), "--replicas 1", "--replicas 2")
