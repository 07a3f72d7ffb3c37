"""Bad input and a failing machine end in one ``Error:`` line and a non-zero exit, never a
traceback, and leave finished work as it was: option ranges, a config file that is not UTF-8, a run
too large for memory (refused before anything is allocated), a full disk while training or preparing
data, and JSON files of the wrong shape (a store's index, a checkpoint's manifest and latest.json)."""
from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

from support.cli import invoke, one_line_error, train_tiny_run

TINY = ("--config", "mini", "--layer-steps", 2, "--finetune-steps", 0, "--batch", 16, "--checkpoint-every", 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished 2-steps-per-stage ``mini`` run and its data root."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny"))


def usage_error(result, option: str) -> None:
    """Click's own refusal of an option value: exit 2, the option named, no traceback."""
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("args,option", [
    (("train", "--seed", -1), "--seed"),
    (("evaluate", "--seed", -1), "--seed"),
    (("control", "--seed", -1), "--seed"),
    (("data", "prepare", "mini", "--seed", -1), "--seed"),
    (("data", "prepare", "mini", "--workers", -1), "--workers"),
    (("data", "prepare", "mini", "--workers", 0), "--workers"),
    (("data", "bench", "mini", "--steps", 0), "--steps"),
    (("data", "filter-faces", "mini", "--min-face", 0), "--min-face"),
])
def test_out_of_range_options_are_refused_by_click(tmp_path, args, option):
    usage_error(invoke(*args, "--root", tmp_path), option)
    assert list(tmp_path.iterdir()) == []


def test_config_file_that_is_not_utf8_is_one_line(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    line = one_line_error(invoke("train", "--config", bad, "--out", tmp_path / "run", "--root", tmp_path / "data"))
    assert "latin1.toml" in line and "not UTF-8" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_minimal_config_gets_the_shipped_objective_and_training(tmp_path):
    """Omitted sections get what the shipped configs train with (tied RICA, not the degenerate
    untied decoder with unit-norm encoders), not the dataclasses' historical defaults."""
    from repro.model.config import load_config

    p = tmp_path / "minimal.toml"
    p.write_text('name = "minimal"\n[input]\nsize = 32\n[[stages]]\nfilter = 6\nstride = 2\npool = 3\nlcn = 3\n')
    cfg, shipped = load_config(str(p)), load_config("faces32")
    assert cfg.rica == shipped.rica and cfg.rica.tied and not cfg.rica.normalize_encoder
    t, s = cfg.train, shipped.train
    assert (t.optimizer, t.lr, t.batch, t.layer_steps) == (s.optimizer, s.lr, s.batch, s.layer_steps)
    assert cfg.stages[0].lcn_eps == shipped.stages[0].lcn_eps


def test_run_too_large_for_memory_is_refused_before_allocating(tmp_path):
    """le2012 with a huge minibatch: the planned bytes per rank exceed any machine of this kind, so
    train refuses at once (no data prepared, no folder) naming the estimate and what is available."""
    from repro.model.config import CONFIG_DIR, load_config
    from repro.model.memory import estimate_rank, human

    big = tmp_path / "big.toml"
    text = (CONFIG_DIR / "le2012.toml").read_text()
    big.write_text(text.replace("batch = 100", "batch = 100000"))
    need = estimate_rank(load_config(str(big)), 0, 1, 100000).total
    line = one_line_error(invoke("train", "--config", big, "--out", tmp_path / "run", "--root", tmp_path / "data"),
                          "needs about", "can count on", "repro info --config")
    assert human(need) in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_memory_estimate_of_one_rank_equals_the_table():
    from repro.model.config import load_config
    from repro.model.memory import estimate, estimate_rank

    cfg = load_config("mini")
    assert [estimate_rank(cfg, r, 3, 8) for r in range(3)] == estimate(cfg, 3, 8)


def test_host_memory_is_known_on_linux():
    from repro.engine.backend import host_memory_available

    free, source = host_memory_available()
    assert 0 < free and source


def test_out_of_memory_during_a_command_is_one_line(tmp_path, monkeypatch):
    from repro.model import network

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(network.Network, "create", classmethod(lambda cls, *a, **k: no_memory()))
    line = one_line_error(invoke("train", *TINY, "--out", tmp_path / "run", "--root", tmp_path / "data"))
    assert "out of memory" in line and "repro info" in line


def test_disk_full_while_training_keeps_the_last_checkpoint(tmp_path, tiny, monkeypatch):
    """The second checkpoint's write fails with ENOSPC: one line, the first checkpoint stays
    ``latest`` and loads, and ``--resume`` (disk freed) finishes the run."""
    _, root = tiny
    run = tmp_path / "run"
    real_savez, calls = np.savez, []

    def savez(fh, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(fh.name))
        return real_savez(fh, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    r = invoke("train", *TINY, "--out", run, "--root", root)
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("Error:") == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: No space left on device at ") and "--resume" in line, line
    monkeypatch.setattr(np, "savez", real_savez)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["path"] == "step-00000002"
    r = invoke("train", "--out", run, "--root", root, "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "train.json").read_text())["finished"] is True
    assert not list((run / "checkpoints").glob(".*partial"))


def test_disk_full_while_preparing_data_resumes(tmp_path, monkeypatch):
    from repro.data import store

    real, calls = store.save_npy, []

    def save_npy(path, arr):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, arr)

    monkeypatch.setattr(store, "save_npy", save_npy)
    line = one_line_error(invoke("data", "prepare", "mini", "--root", tmp_path))
    assert "No space left on device" in line
    assert not (tmp_path / "prepared" / "mini" / "train" / "index.json").exists()
    monkeypatch.setattr(store, "save_npy", real)
    assert invoke("data", "prepare", "mini", "--root", tmp_path).exit_code == 0
    assert invoke("data", "verify", "mini", "--root", tmp_path).exit_code == 0


@pytest.mark.parametrize("field,value", [
    ("shards", [1, 2, 3, 4]),
    ("shards", "shard-00000.npy"),
    ("shards", [{"file": "../../etc/passwd", "count": 1}]),
    ("shape", [32]),
    ("count", "many"),
])
def test_store_index_of_the_wrong_shape_is_one_line(tmp_path, tiny, field, value):
    _, root = tiny
    src = root / "prepared" / "mini" / "train"
    copy = tmp_path / "prepared" / "mini" / "train"
    shutil.copytree(src, copy)
    index = json.loads((copy / "index.json").read_text())
    index[field] = value
    (copy / "index.json").write_text(json.dumps(index))
    line = one_line_error(invoke("data", "bench", "mini", "--root", tmp_path, "--steps", 1))
    assert "index.json" in line and field in line


@pytest.mark.parametrize("field,value", [
    ("step", "three"),
    ("shapes", {"stage0.W1": "big"}),
    ("files", [1, 2]),
    ("files", [{"file": "rank-00000.npz", "tiles": {"stage0.W1": [0, 1]}}]),
    ("dtypes", {"stage0.W1": "object"}),
    ("config", [1, 2]),
])
def test_checkpoint_manifest_of_the_wrong_shape_is_one_line(tmp_path, tiny, field, value):
    run, root = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    latest = json.loads((copy / "checkpoints" / "latest.json").read_text())["path"]
    mpath = copy / "checkpoints" / latest / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest[field] = value
    mpath.write_text(json.dumps(manifest))
    line = one_line_error(invoke("export", "--checkpoint", copy, "--out", tmp_path / "w.npz"))
    assert "manifest.json" in line and repr(field) in line
    assert not (tmp_path / "w.npz").exists()


@pytest.mark.parametrize("text", ["[1, 2]", '{"path": 3}', '{"path": "../../x"}', "{", '"step-1"'])
def test_latest_json_of_the_wrong_shape_is_one_line(tmp_path, tiny, text):
    run, _ = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "latest.json").write_text(text)
    line = one_line_error(invoke("export", "--checkpoint", copy, "--out", tmp_path / "w.npz"))
    assert "latest.json" in line
