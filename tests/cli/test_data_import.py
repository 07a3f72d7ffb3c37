"""`repro data import`: a labeled store from one sub-folder per class; `repro evaluate --data` takes it,
`--neuron-from` applies a neuron chosen elsewhere to it, and the one-layer baseline follows the
training data it is given. Bad folders give one line and leave nothing behind."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from repro.data.store import open_store
from repro.engine.comm import world

from support.cli import invoke, one_line_error, train_tiny_run


def make_tree(d: Path, classes: dict[str, int], size=(40, 48), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, n in classes.items():
        for i in range(n):
            sub = d / c / ("nested" if i % 3 == 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            ext = (".png", ".jpg", ".bmp")[i % 3]
            cv2.imwrite(str(sub / f"{c}{i}{ext}"), img)
    (d / "faces" / "notes.txt").write_text("not an image")
    (d / ".hidden").mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("imp")
    run, root = train_tiny_run(d)
    make_tree(d / "photos", {"faces": 8, "other": 9, "cars": 3})
    return d, run, root


def test_import_labels_and_store(tiny) -> None:
    d, run, root = tiny
    r = invoke("data", "import", d / "photos", "--name", "mine", "--size", 32, 32, "--positive", "faces", "--root", root)
    assert r.exit_code == 0, r.output
    st = open_store(root / "prepared" / "mine" / "test")
    assert len(st) == 20 and st.shape == (32, 32) and int(st.labels.sum()) == 8
    assert st.index["info"]["classes"] == ["cars", "faces", "other"] and st.index["info"]["positive"] == "faces"
    assert all(("faces/" in rec["source"]) == (rec["label"] == 1) for rec in st.records)
    r = invoke("data", "import", d / "photos", "--name", "multi", "--size", 24, 24, "--colour", "--root", root)
    assert r.exit_code == 0, r.output
    st = open_store(root / "prepared" / "multi" / "test")
    assert st.shape == (24, 24, 3) and sorted(set(st.labels.tolist())) == [0, 1, 2]
    # the run wants 32x32 grey: the error names the import that makes it, and that import goes beside
    one_line_error(invoke("evaluate", "--checkpoint", run, "--root", root, "--data", "multi"),
                   "24x24x3", "wants 32x32x1", f"repro data import {d / 'photos'} --name multi --size 32 32")
    r = invoke("data", "import", d / "photos", "--name", "multi", "--size", 32, 32, "--root", root)
    assert r.exit_code == 0, r.output
    assert open_store(root / "prepared" / "multi@32x32" / "test").shape == (32, 32)
    assert open_store(root / "prepared" / "multi" / "test").shape == (24, 24, 3)
    one_line_error(invoke("evaluate", "--checkpoint", run, "--root", root, "--data", "multi"), "multi-class")


def test_evaluate_imported_store_with_neuron_from(tiny, tmp_path) -> None:
    """The neuron and threshold chosen on mini's test split, applied unchanged to the imported set."""
    from repro.experiments import evaluate as ev
    from repro.model.network import load_checkpoint, neuron_features

    d, run, root = tiny
    r = invoke("data", "import", d / "photos", "--name", "mine2", "--size", 32, 32, "--positive", "faces", "--root", root)
    assert r.exit_code == 0, r.output
    base = ["evaluate", "--checkpoint", run, "--root", root, "--linear-filters", 64, "--one-layer-steps", 3]
    r = invoke(*base)  # into the run folder: its one-layer baseline too
    assert r.exit_code == 0, r.output
    src = json.loads((run / "evaluate-faces.json").read_text())
    out = tmp_path / "away"
    r = invoke(*base, "--data", "mine2", "--neuron-from", run, "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "evaluate-faces.json").read_text())
    t = res["transfer"]
    b = src["best_neuron"]
    assert t["neuron"] == {k: b[k] for k in ("layer", "sublayer", "index")} and t["threshold"] == b["threshold"]
    assert t["chosen_on"]["names"] == ["mini"] and res["test_set"]["names"] == ["mine2"]
    net, _ = load_checkpoint(run, None, np, world())
    st = open_store(root / "prepared" / "mine2" / "test")
    acts = neuron_features(net, ev.as_float(st.images(np.arange(len(st)))), b["layer"], b["sublayer"], b["index"])
    y = st.labels == 1
    assert t["accuracy"] == pytest.approx(float(np.mean((acts >= b["threshold"]) == y)))
    assert t["auc"] == pytest.approx(ev.auc(acts, y))
    assert "chosen on mini (test)" in (out / "evaluate-faces.md").read_text()
    # everything evaluate writes lands in --out; the one-layer baseline of the run's own data is reused
    assert res["baselines"]["one_layer"]["reused"] is True
    assert not (out / "one-layer").exists() and (out / "histogram-faces.png").exists()


def test_one_layer_baseline_follows_the_training_data(tiny, tmp_path) -> None:
    """Another training store means another one-layer network, trained into --out, never a stale cache."""
    d, run, root = tiny
    r = invoke("data", "import", d / "photos", "--name", "frames", "--split", "train", "--size", 32, 32, "--root", root)
    assert r.exit_code == 0, r.output
    out = tmp_path / "other-data"
    r = invoke("evaluate", "--checkpoint", run, "--root", root, "--linear-filters", 64, "--one-layer-steps", 3,
               "--train-data", "frames", "--out", out, "--format", "png", "--format", "svg", "--dpi", 60)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "evaluate-faces.json").read_text())
    ol = res["baselines"]["one_layer"]
    assert ol["reused"] is False and Path(ol["run"]) == out / "one-layer"
    assert json.loads((out / "one-layer" / "data.json").read_text())["store"].endswith("prepared/frames/train")
    assert res["training_data"]["store"].endswith("frames/train")
    assert (out / "histogram-faces.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("case,words", [
    ("empty", ["no image found"]),
    ("one-class", ["only one class (faces)"]),
    ("unreadable", ["bad.jpg", "corrupt or unsupported image"]),
    ("positive", ["--positive 'dogs'", "classes: faces, other"]),
    ("missing", ["no such folder"]),
])
def test_bad_import_folders(tmp_path, case, words) -> None:
    d = tmp_path / "in"
    d.mkdir()
    args = ["--positive", "faces"]
    if case == "one-class":
        make_tree(d, {"faces": 3})
    elif case in ("unreadable", "positive"):
        make_tree(d, {"faces": 3, "other": 3})
        (d / "other" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        if case == "positive":
            (d / "other" / "bad.jpg").unlink()
            args = ["--positive", "dogs"]
    elif case == "empty":
        (d / "faces").mkdir()
    elif case == "missing":
        d = tmp_path / "nope"
    root = tmp_path / "data"
    r = invoke("data", "import", d, "--name", "x", "--size", 32, 32, *args, "--root", root)
    one_line_error(r, *words)
    assert not (root / "prepared" / "x").exists() or not any((root / "prepared" / "x").iterdir())


def test_import_for_config(tmp_path) -> None:
    """--for-config takes the network's input size and channels; a clash or no size is one line."""
    d, root = make_tree(tmp_path / "in", {"faces": 3, "other": 3}), tmp_path / "data"
    r = invoke("data", "import", d, "--name", "x", "--for-config", "mini", "--positive", "faces", "--root", root)
    assert r.exit_code == 0, r.output
    assert open_store(root / "prepared" / "x" / "test").shape == (32, 32)
    one_line_error(invoke("data", "import", d, "--name", "y", "--for-config", "mini", "--size", 8, 8, "--root", root),
                   "--for-config mini", "disagree")
    one_line_error(invoke("data", "import", d, "--name", "y", "--for-config", "mini", "--colour", "--root", root),
                   "disagree")
    one_line_error(invoke("data", "import", d, "--name", "y", "--root", root), "--size H W", "--for-config")
    assert not (root / "prepared" / "y").exists()
