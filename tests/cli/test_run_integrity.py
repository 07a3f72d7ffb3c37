"""A run folder is the record of one experiment: resume continues it exactly, bad configs and options
are refused before anything is written, and nothing finishes with exit 0 and a wrong result."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import repro
from support.cli import invoke, one_line_error

STEPS = ("--layer-steps", 4, "--finetune-steps", 2, "--batch", 16, "--checkpoint-every", 2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert invoke("data", "prepare", "mini", "--root", root).exit_code == 0
    return root


def train(run, root, *extra):
    return invoke("train", "--config", "mini", "--out", run, "--root", root, *STEPS, *extra)


def snapshot(folder):
    """Every file under ``folder`` with its bytes: to prove a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def stopped(tmp_path, data_root):
    """A run stopped at step 4 of 14 (3 stages x 4 + 2 fine-tuning; checkpointed there)."""
    run = tmp_path / "run"
    r = train(run, data_root, "--max-steps", 4, "--seed", 7)
    assert r.exit_code == 0, r.output
    return run


def test_resume_refuses_overrides_that_change_the_run(stopped, data_root):
    before = snapshot(stopped)
    line = one_line_error(train(stopped, data_root, "--resume", "--seed", 9))
    assert "--seed 9 (the run has 7)" in line
    line = one_line_error(invoke("train", "--out", stopped, "--root", data_root, "--resume", "--layer-steps", 10))
    assert "--layer-steps 10" in line
    assert snapshot(stopped) == before


def test_resume_without_config_json_is_refused(stopped, data_root):
    (stopped / "config.json").unlink()
    before = snapshot(stopped)
    assert "no config.json" in one_line_error(invoke("train", "--out", stopped, "--root", data_root, "--resume"))
    assert snapshot(stopped) == before


def test_resume_with_nothing_to_resume_creates_nothing(tmp_path, data_root):
    line = one_line_error(invoke("train", "--config", "mini", "--out", tmp_path / "new", "--root", data_root, "--resume"))
    assert "nothing to resume" in line
    assert not (tmp_path / "new").exists()


def test_max_steps_is_the_total_and_train_json_covers_every_segment(stopped, data_root):
    r = invoke("train", "--out", stopped, "--root", data_root, "--resume", "--max-steps", 7)
    assert r.exit_code == 0, r.output
    s = json.loads((stopped / "train.json").read_text())
    assert s["steps_done"] == 7 and not s["finished"]  # counted from the run's start, not from step 4
    before = snapshot(stopped)
    r = invoke("train", "--out", stopped, "--root", data_root, "--resume", "--max-steps", 5)
    assert r.exit_code == 0 and "nothing to do" in r.output
    assert snapshot(stopped) == before
    assert invoke("train", "--out", stopped, "--root", data_root, "--resume").exit_code == 0
    s = json.loads((stopped / "train.json").read_text())
    assert s["finished"] and s["steps_done"] == 14
    assert [(g["from_step"], g["to_step"]) for g in s["segments"]] == [(0, 4), (4, 7), (7, 14)]
    # the package runs from this checkout: each segment names its git commit
    if (Path(repro.__file__).resolve().parents[1] / ".git").exists():
        assert all(len(g["git_commit"].split("+")[0]) == 40 for g in s["segments"]), s["segments"]
    before = snapshot(stopped)
    r = invoke("train", "--out", stopped, "--root", data_root, "--resume")  # a finished run: its record stays
    assert r.exit_code == 0 and "nothing to do" in r.output
    assert snapshot(stopped) == before
    log = [json.loads(line) for line in (stopped / "train-log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 15))
    assert {"loss", "lr", "images_per_s", "unix_time"} <= set(log[0])


def test_resume_cuts_the_log_back_to_the_checkpoint(stopped, data_root):
    log = stopped / "train-log.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "phase": "stage0", "loss": 1.0}\n{"step": 6, "ph')  # a kill's leftovers
    assert invoke("train", "--out", stopped, "--root", data_root, "--resume").exit_code == 0
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 15))


def test_resume_uses_the_runs_own_data(stopped, data_root, tmp_path):
    other_root = tmp_path / "elsewhere"  # the mini config's data, had resume followed the config instead of the run
    r = invoke("train", "--out", stopped, "--root", other_root, "--resume", "--max-steps", 6)
    assert r.exit_code == 0, r.output
    assert not other_root.exists()
    rec = json.loads((stopped / "data.json").read_text())
    assert rec["store"] == str((data_root / "prepared" / "mini" / "train").resolve())


def test_resume_refuses_other_data_and_follows_a_moved_store(stopped, data_root, tmp_path):
    other = tmp_path / "other"
    assert invoke("data", "prepare", "mini", "--root", other, "--seed", 3).exit_code == 0
    before = snapshot(stopped)
    line = one_line_error(invoke("train", "--out", stopped, "--data", other / "prepared" / "mini" / "train", "--resume"))
    assert "not the training store" in line
    assert snapshot(stopped) == before
    moved = tmp_path / "moved"
    shutil.copytree(data_root / "prepared", moved / "prepared")
    r = invoke("train", "--out", stopped, "--root", moved, "--data", "mini", "--resume", "--max-steps", 6)
    assert r.exit_code == 0, r.output
    assert json.loads((stopped / "data.json").read_text())["store"] == str((moved / "prepared" / "mini" / "train").resolve())


def test_training_into_an_existing_run_needs_force(stopped, data_root):
    before = snapshot(stopped)
    line = one_line_error(train(stopped, data_root))
    assert "already holds a run" in line and "--force" in line
    assert snapshot(stopped) == before
    (stopped / "notes.txt").write_text("mine")
    (stopped / "checkpoints" / ".step-00000009.partial").mkdir()  # a write a kill left half done
    r = train(stopped, data_root, "--force", "--seed", 8)
    assert r.exit_code == 0 and "--force: replaced the run" in r.output
    assert (stopped / "notes.txt").read_text() == "mine"  # only what repro wrote is replaced
    assert not list((stopped / "checkpoints").glob(".*partial"))
    log = [json.loads(x)["step"] for x in (stopped / "train-log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 15))
    assert json.loads((stopped / "config.json").read_text())["train"]["seed"] == 8
    r = train(stopped, data_root, "--resume", "--force")
    assert r.exit_code == 2 and r.output.strip().endswith("choose one")


BAD_CONFIGS = [
    ("tied", '"no"', "rica.tied must be true or false"),
    ("batch", "true", "train.batch must be an integer"),
    ("seed", "1.5", "train.seed must be an integer"),
    ("lr", '"0.001"', "train.lr must be a number"),
    ("layer_steps", "-5", "train.layer_steps must be >= 0"),
    ("momentum", "-3.0", "train.momentum must be in [0, 1)"),
    ("checkpoint_every", "0", "train.checkpoint_every must be >= 1"),
    ("lr", "nan", "train.lr must be a positive finite number"),
    ("lr", "inf", "train.lr must be a positive finite number"),
    ("lcn_sigma", "0", "lcn_sigma must be a positive number"),
    ("lcn_eps", "-5", "lcn_eps must be a positive number"),
    ("filter", '"6"', "stage.filter must be an integer"),
    ("maps", "1.5", "stage.maps must be an integer"),
    ("size", '"32"', "input.size must be an integer or [height, width] integers"),
    ("size", "[32]", "input.size must be an integer or [height, width] integers"),
    ("size", "[32, 32, 1]", "input.size must be an integer or [height, width] integers"),
]


def mini_with(tmp_path, key, value):
    """The shipped mini config with the first ``key = ...`` line set to ``value``."""
    import re

    text = (Path(repro.__file__).parent / "configs" / "mini.toml").read_text()
    text, n = re.subn(rf"^{key} *=.*$", f"{key} = {value}", text, count=1, flags=re.M)
    assert n == 1, key
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("key,value,message", BAD_CONFIGS)
def test_bad_config_values_are_one_line_and_write_nothing(tmp_path, data_root, key, value, message):
    cfg = mini_with(tmp_path, key, value)
    line = one_line_error(invoke("train", "--config", cfg, "--out", tmp_path / "run", "--root", data_root))
    assert "bad.toml" in line and message in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_lr_option_is_refused(tmp_path, data_root, value):
    line = one_line_error(train(tmp_path / "run", data_root, "--lr", value))
    assert "train.lr must be a positive finite number" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow the test provokes
def test_no_checkpoint_of_non_finite_weights(tmp_path, data_root):
    run = tmp_path / "run"
    r = invoke("train", "--config", "mini", "--out", run, "--root", data_root, "--layer-steps", 3, "--batch", 16,
               "--checkpoint-every", 1, "--optimizer", "sgd", "--lr", "1e38")
    assert r.exit_code != 0 and "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: parameters are no longer finite after step 1") and "--lr" in last, last
    assert not (run / "checkpoints").exists()
