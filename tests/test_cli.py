"""The command line: train, resume, info, export, and one-line errors for bad input."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import invoke, one_line_error, run_mpi
from repro.commands.export import META
from repro.model.config import load_config
from repro.model.network import param_names


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def short_train(run, data_root, *extra):
    return invoke("train", "--config", "mini", "--out", run, "--root", data_root, "--layer-steps", 6, "--finetune-steps", 3,
                  "--batch", 16, "--checkpoint-every", 4, *extra)


def test_help_lists_only_built_commands():
    out = invoke("--help").output
    for name in ("train", "info", "export"):
        assert name in out


def test_train_resume_equals_uninterrupted(tmp_path, data_root):
    full, part = tmp_path / "full", tmp_path / "part"
    r = short_train(full, data_root)
    assert r.exit_code == 0, r.output
    r = short_train(part, data_root, "--max-steps", 7)
    assert r.exit_code == 0, r.output
    assert json.loads((part / "train.json").read_text())["finished"] is False
    r = short_train(part, data_root, "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads((part / "train.json").read_text())["finished"] is True
    for run in (full, part):
        assert invoke("export", "--checkpoint", run, "--out", run / "w.npz").exit_code == 0
    a, b = np.load(full / "w.npz"), np.load(part / "w.npz")
    assert sorted(a.files) == sorted(param_names(load_config("mini")) + [META])  # W1 (and W2 unless tied) per stage
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    log = [json.loads(line) for line in (part / "train-log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 22))  # stopped (and checkpointed) at 7, resumed at 8


def test_train_on_two_ranks_equals_one(tmp_path, data_root):
    one, two = tmp_path / "one", tmp_path / "two"
    assert short_train(one, data_root, "--optimizer", "sgd", "--lr", "0.0005").exit_code == 0
    run_mpi(2, ["-m", "repro.cli", "--device", "cpu", "train", "--config", "mini", "--out", str(two), "--root", str(data_root),
                "--layer-steps", "6", "--finetune-steps", "3", "--batch", "16", "--checkpoint-every", "4",
                "--optimizer", "sgd", "--lr", "0.0005"])
    for run in (one, two):
        assert invoke("export", "--checkpoint", run, "--out", run / "w.npz").exit_code == 0
    a, b = np.load(one / "w.npz"), np.load(two / "w.npz")
    for k in param_names(load_config("mini")):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    la = json.loads((one / "train.json").read_text())["last_loss"]
    lb = json.loads((two / "train.json").read_text())["last_loss"]
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-4)


def test_info_plans_memory(tmp_path):
    r = invoke("info", "--config", "le2012", "--ranks", 4, "--json", tmp_path / "i.json")
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "i.json").read_text())
    assert d["parameters_W1"] == 971_256_096  # 183^2*8*324 + 158^2*8*2592 + 133^2*8*2592
    assert len(d["per_rank"]) == 4
    total_params = sum(r["parameters"] for r in d["per_rank"])
    weight_sets = 1 if load_config("le2012").rica.tied else 2  # W1 (+ W2 unless tied)
    assert total_params == weight_sets * 4 * d["parameters_W1"]  # float32, split without overlap


def test_unknown_config_is_one_line(tmp_path):
    line = one_line_error(invoke("info", "--config", "nope"))
    assert "unknown config 'nope'" in line


def test_impossible_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[input]\nsize = 10\n[[stages]]\nfilter = 12\n')
    line = one_line_error(invoke("info", "--config", bad))
    assert "bad.toml" in line and "larger than its input" in line
    bad.write_text('name = "bad"\n[input]\nsize = 10\n[[stages]]\nfilter = 3\nstride = 0\n')
    assert "stride must be >= 1" in one_line_error(invoke("info", "--config", bad))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("run") / "r"
    assert short_train(run, data_root, "--finetune-steps", 0).exit_code == 0
    return run


def test_truncated_checkpoint_is_one_line_and_writes_nothing(trained, tmp_path):
    latest = json.loads((trained / "checkpoints" / "latest.json").read_text())["path"]
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(trained / "checkpoints" / latest, broken)
    f = broken / "rank-00000.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = tmp_path / "x.npz"
    line = one_line_error(invoke("export", "--checkpoint", broken, "--out", out))
    assert "rank-00000.npz" in line and "truncated or corrupt" in line
    assert not out.exists() and not list(tmp_path.glob("x.npz*"))


def test_checkpoint_of_another_config_is_one_line(trained, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text('name = "other"\n[input]\nsize = 32\n[[stages]]\nfilter = 5\n')
    line = one_line_error(invoke("train", "--config", other, "--out", trained, "--root", tmp_path, "--resume"))
    assert "does not match" in line


def test_missing_checkpoint_is_one_line(tmp_path):
    line = one_line_error(invoke("export", "--checkpoint", tmp_path / "nothing", "--out", tmp_path / "o.npz"))
    assert "no such checkpoint" in line


def test_console_entry_point_exit_code(tmp_path):
    import subprocess
    p = subprocess.run([sys.executable, "-m", "repro.cli", "info", "--config", "nope"], capture_output=True, text=True)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == ["Error: unknown config 'nope': choose one of faces32, le2012, mini or give a "
                                             "path to a .toml file"]


def test_diverging_training_stops_with_one_line(tmp_path, data_root):
    r = invoke("train", "--config", "mini", "--out", tmp_path / "r", "--root", data_root, "--layer-steps", 30, "--batch", 16,
               "--lr", 10)
    assert r.exit_code != 0 and "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]  # after the progress bar's last state
    assert last.startswith("Error: loss diverged at step") and "--lr" in last


def test_export_carries_config_and_axes(trained, tmp_path):
    out = tmp_path / "w.npz"
    r = invoke("export", "--checkpoint", trained, "--out", out)
    assert r.exit_code == 0, r.output
    z = np.load(out, allow_pickle=False)  # plain numpy, nothing pickled
    meta = json.loads(z[META].item())
    assert meta["config"] == json.loads((trained / "config.json").read_text())
    names = param_names(load_config("mini"))
    assert sorted(z.files) == sorted(names + [META]) and sorted(meta["arrays"]) == sorted(names)
    for n in names:
        assert meta["arrays"][n]["axes"] == ["oy", "ox", "f", "c", "ky", "kx"]
        assert tuple(meta["arrays"][n]["shape"]) == z[n].shape
    assert meta["decoder"].startswith("tied") and meta["step"] == 18
    assert "__meta__.json" in invoke("export", "--help").output
