"""Built-in `mini`: counts, no train/test leak, determinism, ensure_mini, and the face filter on it."""
from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner

from support.data import cli
from repro.data import ensure_mini, open_store
from repro.data.facefilter import FaceDetector, detect, filter_faces
from repro.data.store import write_store


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    r = CliRunner().invoke(cli, ["data", "prepare", "mini", "--root", str(root)])
    assert r.exit_code == 0, r.output
    return root


def test_counts_and_shapes(mini_root):
    tr = open_store(mini_root / "prepared" / "mini" / "train")
    te = open_store(mini_root / "prepared" / "mini" / "test")
    assert len(tr) == 4000 and tr.shape == (32, 32) and (tr.labels == -1).all()
    assert len(tr.shards) == 4
    faces = sum(r["face"] for r in tr.records)
    assert 0.30 * 4000 < faces < 0.40 * 4000
    assert len(te) == 300 and (te.labels == 1).sum() == 100 and (te.labels == 0).sum() == 200
    r = CliRunner().invoke(cli, ["data", "verify", "mini", "--root", str(mini_root)])
    assert r.exit_code == 0, r.output


def test_no_test_image_or_face_in_training(mini_root):
    tr = open_store(mini_root / "prepared" / "mini" / "train")
    te = open_store(mini_root / "prepared" / "mini" / "test")
    assert not {r["sha256"] for r in tr.records} & {r["sha256"] for r in te.records}
    pasted = {r["paste"] for r in tr.records if r["paste"]}
    test_ids = {":".join(r["source"].split(":")[:3]) for r in te.records if r["source"].startswith("lfw_subset")}
    assert pasted and test_ids and not pasted & test_ids
    train_photos = {r["source"] for r in tr.records}
    test_photos = {"skimage:" + r["source"].split(":")[1] for r in te.records if r["source"].startswith("skimage")}
    assert not train_photos & test_photos
    assert "skimage:astronaut" not in train_photos | test_photos  # photos with human faces are left out


def test_deterministic_and_ensure_mini(mini_root, tmp_path):
    paths = ensure_mini(mini_root)  # already there: no rebuild
    assert paths["train"] == mini_root / "prepared" / "mini" / "train"
    r = CliRunner().invoke(cli, ["data", "prepare", "mini", "--root", str(mini_root)])
    assert "already prepared" in r.output
    other = ensure_mini(tmp_path, seed=1)
    a, b = open_store(paths["train"]), open_store(other["train"])
    assert [x["sha256"] for x in a.records] != [x["sha256"] for x in b.records]
    # the test set does not depend on the training seed
    assert [x["sha256"] for x in open_store(paths["test"]).records] == \
           [x["sha256"] for x in open_store(other["test"]).records]


def test_face_filter_rates_on_mini_training_frames(mini_root, capsys):
    """The detector removes most frames with a pasted face and few without (parameters not tuned on test)."""
    tr = open_store(mini_root / "prepared" / "mini" / "train")
    idx = np.arange(0, len(tr), 4)  # 1000 frames keep the test fast
    has = detect(tr.images(idx), FaceDetector())
    face = np.array([tr.records[i]["face"] for i in idx])
    rate_face, rate_none = has[face].mean(), has[~face].mean()
    with capsys.disabled():
        print(f"\nface filter on mini train frames: removed {has[face].sum()}/{face.sum()} with a pasted face "
              f"({rate_face:.1%}), {has[~face].sum()}/{(~face).sum()} without ({rate_none:.1%})")
    assert rate_face > 0.6 and rate_none < 0.1


def test_filter_faces_store(mini_root, tmp_path):
    tr = open_store(mini_root / "prepared" / "mini" / "train")
    idx = np.arange(200)
    small = write_store(tmp_path / "small", tr.images(idx), [dict(tr.records[i]) for i in idx], "mini", "train",
                        {}, shard_size=64)
    s = filter_faces(small, tmp_path / "noface")
    out = open_store(tmp_path / "noface")
    assert s["removed"] > 0 and len(out) == 200 - s["removed"]
    assert out.index["info"]["face_filter"]["removed"] == s["removed"] and out.verify() == []
    # the CLI reports the count
    r = CliRunner().invoke(cli, ["data", "filter-faces", str(tmp_path / "small"), "--out", str(tmp_path / "nf2"),
                                 "--root", str(tmp_path)])
    assert r.exit_code == 0 and f"removed {s['removed']} of 200" in r.output.replace("\n", " "), r.output
