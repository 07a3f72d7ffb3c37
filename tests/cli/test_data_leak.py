"""check-leak: images a test set shares with the training data, identical or near-duplicated (resized,
re-encoded, brightened), across image sizes; exit 0 clean, 1 leak; `repro evaluate` warns."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from support.cli import invoke, one_line_error
from repro.data import leak
from support.data import write_manifest


def _blobs(n: int, seed: int, size: int = 64) -> list[np.ndarray]:
    """Distinct structured grey images (blurred noise), unlike each other at any size."""
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 4).astype(np.float32)
            for _ in range(n)]


def _save(folder: Path, imgs, prefix: str, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, im in enumerate(imgs):
        im = np.clip((im - im.min()) * 255.0 / max(1e-6, float(np.ptp(im))), 0, 255).astype(np.uint8) \
            if im.dtype != np.uint8 else im
        p = folder / f"{prefix}{i:02d}{ext}"
        assert cv2.imwrite(str(p), im)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """train/: 24 images; leaky/: 2 of them copied, 2 of them resized to 100x100, brightened and saved
    as JPEG quality 60, 5 unrelated, one black frame; clean/: 6 unrelated images."""
    d = tmp_path_factory.mktemp("leak")
    train = _save(d / "train", _blobs(24, 0), "t")
    (d / "leaky" / "faces").mkdir(parents=True)
    for k in (0, 1):
        (d / "leaky" / "faces" / f"copy{k}.png").write_bytes(train[k].read_bytes())
    for k in (2, 3):
        im = cv2.imread(str(train[k]), cv2.IMREAD_GRAYSCALE)
        big = np.clip(cv2.resize(im, (100, 100), interpolation=cv2.INTER_CUBIC) * 0.9 + 20, 0, 255).astype(np.uint8)
        cv2.imwrite(str(d / "leaky" / "faces" / f"near{k}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 60])
    _save(d / "leaky" / "other", _blobs(5, 1), "o")
    cv2.imwrite(str(d / "leaky" / "other" / "black.png"), np.zeros((64, 64), np.uint8))
    _save(d / "clean" / "faces", _blobs(3, 2), "f")
    _save(d / "clean" / "other", _blobs(3, 3), "o")
    mdir = d / "manifests"
    mdir.mkdir()
    write_manifest(mdir / "frames.toml", "frames", kind="local", role="unlabeled",
                   sources=[{"split": "train", "label": -1, "glob": "*.png"}])
    return d


@pytest.fixture
def root(sets, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_MANIFESTS", str(sets / "manifests"))
    r = tmp_path / "data"
    assert invoke("data", "prepare", "frames", "--from", sets / "train", "--for-config", "mini", "--root", r).exit_code == 0
    for name in ("leaky", "clean"):
        res = invoke("data", "import", sets / name, "--name", name, "--size", 32, 32, "--positive", "faces", "--root", r)
        assert res.exit_code == 0, res.output
    return r


def test_check_leak_counts_examples_and_exit_codes(root, tmp_path):
    r = invoke("data", "check-leak", "frames", "leaky", "--root", root, "--json", tmp_path / "leak.json")
    assert r.exit_code == 1, r.output
    rep = json.loads((tmp_path / "leak.json").read_text())
    assert (rep["identical"], rep["near"], rep["leaked"], rep["flat_b"]) == (2, 2, 4, 1)
    assert rep["a_images"] == 24 and rep["b_images"] == 10 and rep["same_shape"]
    kinds = {Path(e["b_source"]).stem: (e["kind"], Path(e["a_source"]).stem) for e in rep["examples"]}
    assert kinds == {"copy0": ("identical", "t00"), "copy1": ("identical", "t01"),
                     "near2": ("near", "t02"), "near3": ("near", "t03")}
    assert "leak: 4 of 10 images of B are in A" in r.output
    r = invoke("data", "check-leak", "frames", "leaky", "--exact-only", "--root", root)
    assert r.exit_code == 1 and "leak: 2 of 10" in r.output
    r = invoke("data", "check-leak", "frames", "clean", "--root", root)
    assert r.exit_code == 0 and "clean: no image of B is in A" in r.output, r.output
    # another size: nothing identical, the near-duplicate search still finds all four
    src = Path(json.loads((root / "prepared" / "leaky" / "test" / "index.json").read_text())["info"]["imported_from"])
    assert invoke("data", "import", src, "--name", "leaky", "--size", 48, 48, "--positive", "faces",
                  "--root", root).exit_code == 0
    r = invoke("data", "check-leak", "frames", "leaky@48x48", "--root", root, "--json", tmp_path / "l48.json")
    rep = json.loads((tmp_path / "l48.json").read_text())
    assert r.exit_code == 1 and (rep["identical"], rep["near"], rep["same_shape"]) == (0, 4, False), r.output


def test_check_leak_bad_input(root):
    one_line_error(invoke("data", "check-leak", "frames", "frames:train", "--root", root), "same store")
    one_line_error(invoke("data", "check-leak", "frames", "leaky:val", "--root", root), "repro data")
    one_line_error(invoke("data", "check-leak", "frames", "nothing", "--root", root), "not prepared")
    r = invoke("data", "check-leak", "frames", "leaky", "--max-distance", 40, "--root", root)
    assert r.exit_code == 2 and "--max-distance" in r.output


def test_near_search_is_exact():
    """The block join finds every pair within d bits that brute force finds."""
    rng = np.random.default_rng(0)
    ha = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    hb = ha[:100] ^ (np.uint64(1) << rng.integers(0, 64, 100).astype(np.uint64))  # one bit off
    hb = np.concatenate([hb, rng.integers(0, 2**63, 100, dtype=np.int64).astype(np.uint64)])
    for d in (0, 1, 3, 8):
        got = set()
        for a, b, dist in leak.candidate_pairs(ha, hb, d, chunk=37):
            got |= {(int(x), int(y), int(z)) for x, y, z in zip(a, b, dist)}
        pc = np.array([[bin(int(x) ^ int(y)).count("1") for y in hb] for x in ha])
        want = {(int(i), int(j), int(pc[i, j])) for i, j in zip(*np.nonzero(pc <= d))}
        assert got == want, d
        assert leak.count_candidates(ha, hb, d) >= len(got)


def test_near_search_skipped_over_its_pair_budget(root):
    """The evaluate hook's budget: too many candidate pairs -> identical images only, and said so."""
    from repro.data.prepare import require_store

    a, b = require_store("frames", "train", root, (32, 32)), require_store("leaky", "test", root)
    r = leak.check_leak(a, b, 8, max_pairs=0)
    assert (r.identical, r.near, r.near_searched) == (2, 0, False)
    r = leak.check_leak(a, b, 4)
    assert (r.identical, r.near, r.near_searched) == (2, 2, True)


def test_evaluate_warns_when_the_test_set_holds_training_images(root, tmp_path):
    run = tmp_path / "run"
    r = invoke("train", "--config", "mini", "--data", "frames", "--root", root, "--out", run,
               "--layer-steps", 1, "--batch", 8)
    assert r.exit_code == 0, r.output
    common = ("evaluate", "--checkpoint", run, "--root", root, "--linear-filters", 5, "--one-layer-steps", 1)
    r = invoke(*common, "--data", "leaky", "--out", tmp_path / "e1")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "also in the training data" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: 4 of 10 test images") and "check-leak" in lines[0]
    r = invoke(*common, "--data", "clean", "--out", tmp_path / "e2")
    assert r.exit_code == 0 and "also in the training data" not in r.output, r.output
