"""``repro control``: the face-filtered retraining, evaluated beside the baseline on the same test set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.cli import invoke, one_line_error
from support.mpi import run_mpi


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny baseline run trained on 240 of mini's training frames (so the face filter is quick)."""
    from repro.data.builtin import ensure_mini
    from repro.data.store import open_store, write_store

    d = tmp_path_factory.mktemp("ctl")
    root, run, small = d / "data", d / "run", d / "small"
    paths = ensure_mini(root)
    src = open_store(paths["train"])
    idx = np.arange(240)
    recs = [{k: v for k, v in src.records[i].items() if k not in ("shard", "offset", "sha256")} for i in idx]
    write_store(small, src.images(idx), recs, "small", "train", {})
    r = invoke("train", "--config", "mini", "--out", str(run), "--root", str(root), "--data", str(small), "--layer-steps", "3",
                 "--batch", "16")
    assert r.exit_code == 0, r.output
    return run, root, small


def _args(run: Path, root: Path, small: Path, *more: str) -> list[str]:
    return ["control", "--checkpoint", str(run), "--root", str(root), "--data", str(small),
            "--linear-filters", "32", "--one-layer-steps", "1", *more]


def test_control_end_to_end(small_run) -> None:
    from repro.data.facefilter import detect
    from repro.data.store import open_store

    run, root, small = small_run
    r = invoke(*_args(run, root, small))
    assert r.exit_code == 0, r.output
    c = json.loads((run / "control.json").read_text())
    faces = detect(open_store(small).images(np.arange(240)))
    f = c["face_filter"]
    assert (f["source_count"], f["removed"], f["kept"]) == (240, int(faces.sum()), 240 - int(faces.sum()))
    assert 0 < f["removed"] < 240 and f["reused"] is False
    # mini's frames say which hold a pasted face: the filter's recall is measured against them
    face = np.asarray([r["face"] for r in open_store(small).records])
    assert (f["with_face"], f["with_face_removed"]) == (int(face.sum()), int((faces & face).sum()))
    assert f["recall"] == pytest.approx((faces & face).sum() / face.sum())
    assert f["false_positive_rate"] == pytest.approx((faces & ~face).sum() / (~face).sum())
    assert Path(f["store"]) == root / "prepared" / "small-noface" / "train"
    assert (run / "control" / "checkpoints" / "latest.json").exists()
    ctl_train = json.loads((run / "control" / "train.json").read_text())
    assert ctl_train["finished"] and ctl_train["steps_done"] == 9
    assert json.loads((run / "control" / "config.json").read_text()) == json.loads((run / "config.json").read_text())
    base_ev = json.loads((run / "evaluate-faces.json").read_text())
    ctl_ev = json.loads((run / "control" / "evaluate-faces.json").read_text())
    assert c["baseline"]["best_neuron"]["accuracy"] == base_ev["best_neuron"]["accuracy"]
    assert c["faces_removed"]["best_neuron"]["accuracy"] == ctl_ev["best_neuron"]["accuracy"]
    assert base_ev["test_set"]["stores"] == ctl_ev["test_set"]["stores"]
    assert c["drop"] == pytest.approx(base_ev["best_neuron"]["accuracy"] - ctl_ev["best_neuron"]["accuracy"])
    assert c["paper"] == {"baseline": 81.7, "faces_removed": 72.5}
    md = (run / "control.md").read_text()
    assert "81.7%" in md and "72.5%" in md and f"removed {f['removed']:,} of 240" in md and "recall" in md

    # again: the filtered store and both evaluations are reused, the control run is already done
    r = invoke(*_args(run, root, small))
    assert r.exit_code == 0, r.output
    c2 = json.loads((run / "control.json").read_text())
    assert c2["face_filter"]["reused"] is True and c2["faces_removed"] == c["faces_removed"]


def test_control_bad_inputs(small_run, tmp_path) -> None:
    from repro.data.store import write_store

    run, root, small = small_run
    one_line_error(invoke(*_args(tmp_path / "nothing", root, small)), "no such checkpoint")
    imgs = np.zeros((4, 32, 32), np.uint8)
    write_store(tmp_path / "one", imgs, [{"label": 0, "source": f"x{i}"} for i in range(4)], "one", "test", {})
    one_line_error(invoke(*_args(run, root, small, "--test-data", str(tmp_path / "one"))), "no positives")
    one_line_error(invoke(*_args(run, root, small, "--concept", "cats")), "repro data prepare cat-heads")
    one_line_error(invoke(*_args(run, root, tmp_path / "missing")), "repro data prepare")


def test_control_two_ranks_same_numbers(small_run, tmp_path) -> None:
    import shutil

    run, root, small = small_run
    if not (run / "control.json").exists():
        assert invoke(*_args(run, root, small)).exit_code == 0
    one = json.loads((run / "control.json").read_text())
    copy = tmp_path / "run2"
    copy.mkdir()
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    for f in ("config.json", "train.json"):
        shutil.copy(run / f, copy / f)
    run_mpi(2, ["-m", "repro.cli", "--device", "cpu", *_args(copy, root, small)], timeout=180)
    two = json.loads((copy / "control.json").read_text())
    assert two["ranks"] == 2 and two["face_filter"]["removed"] == one["face_filter"]["removed"]
    for side in ("baseline", "faces_removed"):
        assert two[side]["best_neuron"]["accuracy"] == one[side]["best_neuron"]["accuracy"], side
        assert two[side]["best_neuron"]["index"] == one[side]["best_neuron"]["index"], side
        assert two[side]["held_out"] == one[side]["held_out"], side
