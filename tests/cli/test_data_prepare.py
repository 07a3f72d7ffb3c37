"""prepare: raw files -> store; deterministic, resumable, all-or-nothing, --skip-bad; videos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from support.data import cli
from repro.data import manifest, open_store, require_store, resolve_dataset
from repro.data.prepare import prepare
from repro.errors import ReproError
from support.data import make_images, make_video, write_manifest


def _setup(tmp_path: Path, n: int = 10):
    src = tmp_path / "src"
    make_images(src / "pos", n // 2, seed=1, prefix="p")
    make_images(src / "neg", n - n // 2, seed=2, prefix="n", ext=".jpg")
    m = write_manifest(tmp_path / "toy.toml", "toy", kind="local",
                       sources=[{"split": "test", "label": 1, "glob": "pos/*"},
                                {"split": "test", "label": 0, "glob": "neg/*"}])
    return src, m


def test_prepare_store_format_and_determinism(tmp_path):
    src, m = _setup(tmp_path)
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(src), "--root", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    path = tmp_path / "a" / "prepared" / "toy" / "test"
    idx = json.loads((path / "index.json").read_text())
    assert idx["format"] == "repro-store" and idx["version"] == 2 and idx["shape"] == [16, 16]
    assert idx["count"] == 10 and len(idx["shards"]) == 3  # shard_size 4
    assert "records" not in idx and idx["labels"] == "labels.npy"
    side = path / idx["shards"][0]["records"]
    rec0 = json.loads(side.read_text().splitlines()[0])
    assert {"shard", "offset", "label", "source", "sha256"} <= set(rec0)
    assert np.load(path / "labels.npy").dtype == np.int64
    arr = np.load(path / "shard-00000.npy", mmap_mode="r", allow_pickle=False)
    assert arr.dtype == np.uint8 and arr.shape == (4, 16, 16)
    st = open_store(path)
    assert len(st) == 10 and st.shape == (16, 16) and sorted(st.labels.tolist()) == [0] * 5 + [1] * 5
    assert st.images([9, 0, 3]).shape == (3, 16, 16) and st.verify() == []
    assert not list(path.parent.glob("*.partial"))
    # same seed -> byte-identical store elsewhere; another seed -> another order
    prepare(manifest.load(str(m)), tmp_path / "b", from_path=src)
    st2 = open_store(tmp_path / "b" / "prepared" / "toy" / "test")
    assert [r["sha256"] for r in st.records] == [r["sha256"] for r in st2.records]
    assert [r["source"] for r in st.records] == [r["source"] for r in st2.records]
    prepare(manifest.load(str(m)), tmp_path / "c", from_path=src, seed=5)
    st3 = open_store(tmp_path / "c" / "prepared" / "toy" / "test")
    assert [r["source"] for r in st3.records] != [r["source"] for r in st.records]
    # already prepared: a rerun is a no-op
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(src), "--root", str(tmp_path / "a")])
    assert r.exit_code == 0 and "already prepared" in r.output


def test_prepare_colour_and_size_override(tmp_path):
    src, m = _setup(tmp_path, 4)
    text = m.read_text().replace("grey = true", "grey = false")
    m.write_text(text)
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(src), "--size", "8", "12",
                                 "--root", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    # not the manifest's size: beside its folder, named by size and channels
    assert not (tmp_path / "r" / "prepared" / "toy").exists()
    st = open_store(tmp_path / "r" / "prepared" / "toy@8x12x3" / "test")
    assert st.shape == (8, 12, 3) and st.channels == 3


def test_corrupt_image_and_skip_bad(tmp_path):
    src, m = _setup(tmp_path)
    (src / "pos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (src / "pos" / "empty.jpg").write_bytes(b"")
    good = (src / "neg" / "n000.jpg").read_bytes()
    (src / "neg" / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])  # truncated JPEG
    root = tmp_path / "r"
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(src), "--root", str(root)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "corrupt or unsupported image" in r.output and "--skip-bad" in r.output
    assert not (root / "prepared" / "toy" / "test").exists()  # no half-written store
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(src), "--root", str(root), "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped 3" in r.output
    st = open_store(root / "prepared" / "toy" / "test")
    assert len(st) == 10 and st.index["info"]["skipped"] == 3


def test_resume_reuses_finished_shards(tmp_path, monkeypatch):
    src, m = _setup(tmp_path, 12)
    root = tmp_path / "r"
    mf = manifest.load(str(m))
    import repro.data.prepare as prep

    real = prep.load_item
    calls = {"n": 0}

    def flaky(item, spec):
        calls["n"] += 1
        if calls["n"] > 6:  # die in the middle of the second shard
            raise KeyboardInterrupt
        return real(item, spec)

    monkeypatch.setattr(prep, "load_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(mf, root, from_path=src, workers=1)
    out = root / "prepared" / "toy" / "test"
    assert not out.exists() and (out.parent / "test.partial" / "shard-00000.npy").exists()
    monkeypatch.setattr(prep, "load_item", real)
    calls["n"] = 0
    [s] = prepare(mf, root, from_path=src, workers=1)
    assert s["reused_shards"] == 1 and s["count"] == 12
    fresh = tmp_path / "fresh"
    prepare(mf, fresh, from_path=src)
    a, b = open_store(out), open_store(fresh / "prepared" / "toy" / "test")
    assert [r["sha256"] for r in a.records] == [r["sha256"] for r in b.records]


def test_missing_inputs_and_require_store(tmp_path):
    src, m = _setup(tmp_path)
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--root", str(tmp_path / "r")])
    assert r.exit_code == 1 and "fetch" in r.output  # local source never recorded
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(empty), "--root", str(tmp_path / "r")])
    assert r.exit_code == 1 and "matches no image" in r.output
    with pytest.raises(ReproError, match=r"repro data prepare toy --root"):
        require_store("toy", "test", tmp_path / "r")
    assert resolve_dataset("toy", "test", tmp_path / "r") == tmp_path / "r" / "prepared" / "toy" / "test"
    assert resolve_dataset(str(m), "test", tmp_path / "r") == tmp_path / "r" / "prepared" / "toy" / "test"


def test_fetch_local_records_source(tmp_path):
    src, m = _setup(tmp_path)
    root = tmp_path / "r"
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--from", str(src), "--root", str(root)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--root", str(root)])
    assert r.exit_code == 0, r.output
    assert len(require_store(str(m), "test", root)) == 10


def test_videos_one_per_video_and_every_k(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    for i in range(3):
        make_video(vids / f"v{i}.avi", n_frames=9)
    make_images(vids / "stills", 2)
    m = write_manifest(tmp_path / "yt.toml", "yt", kind="local", role="unlabeled",
                       sources=[{"split": "train", "label": -1, "glob": "**/*"}])
    root = tmp_path / "r"
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(vids), "--root", str(root)])
    assert r.exit_code == 0, r.output
    st = open_store(root / "prepared" / "yt" / "train")
    assert len(st) == 5 and (st.labels == -1).all()
    vid = [i for i, r in enumerate(st.records) if r["source"].endswith(".avi")]
    assert len(vid) == 3
    assert all(abs(float(st.image(i).mean()) - 100) < 8 for i in vid)  # the middle frame (4 of 0..8)
    m.write_text(m.read_text().replace("seed = 0", "seed = 0\nvideo_every = 4"))
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(vids), "--root", str(root)])
    assert r.exit_code == 0, r.output
    st = open_store(root / "prepared" / "yt" / "train")
    assert len(st) == 3 * 3 + 2  # frames 0, 4, 8 of each video


def test_corrupt_video(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    make_video(vids / "good.avi")
    (vids / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    m = write_manifest(tmp_path / "yt.toml", "yt", kind="local", role="unlabeled",
                       sources=[{"split": "train", "label": -1, "glob": "*"}])
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(vids), "--root", str(tmp_path / "r")])
    assert r.exit_code == 1 and "bad.mp4" in r.output and "corrupt video" in r.output
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(vids), "--root", str(tmp_path / "r"),
                                 "--skip-bad"])
    assert r.exit_code == 0 and "skipped 1" in r.output


def test_cat_head_crop_from_landmarks(tmp_path):
    import cv2

    src = tmp_path / "CAT_00"
    src.mkdir()
    img = np.zeros((100, 120), np.uint8)
    img[40:60, 50:70] = 255  # the "head": a white square inside the landmarks' box
    cv2.imwrite(str(src / "00000001_000.jpg"), img)
    pts = [50, 40, 70, 40, 60, 60, 50, 45, 52, 41, 55, 42, 65, 42, 68, 41, 70, 45]
    (src / "00000001_000.jpg.cat").write_text("9 " + " ".join(map(str, pts)) + " ")
    cv2.imwrite(str(src / "00000002_000.jpg"), img)  # no landmark file
    m = write_manifest(tmp_path / "cats.toml", "cats", kind="local", extra_prepare='crop = "cat-head"',
                       sources=[{"split": "test", "label": 1, "glob": "CAT_0*/*.jpg"}])
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(tmp_path), "--root", str(tmp_path / "r")])
    assert r.exit_code == 1 and "00000002_000.jpg.cat" in r.output
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--from", str(tmp_path), "--root", str(tmp_path / "r"),
                                 "--skip-bad"])
    assert r.exit_code == 0, r.output
    st = open_store(tmp_path / "r" / "prepared" / "cats" / "test")
    assert len(st) == 1 and st.image(0)[8, 8] > 200 and st.image(0).mean() > 100  # mostly the head


def test_prepare_memory_bounded_by_one_shard(tmp_path, monkeypatch):
    """Records go to disk shard by shard: the preparing process's traced memory does not grow with the
    number of images (a leak of every record would be ~0.5 MB here), and finish loads no record."""
    import builtins
    import io
    import tracemalloc

    import repro.data.prepare as prep
    from repro.data.store import StoreWriter

    n, long = 800, "x" * 180
    src = tmp_path / "src"
    (src / "pos").mkdir(parents=True)
    for i in range(n):
        (src / "pos" / f"{long}{i:04d}.png").touch()  # never decoded: load_item is replaced below
    m = write_manifest(tmp_path / "big.toml", "big", kind="local",
                       sources=[{"split": "test", "label": 1, "glob": "pos/*"}])
    monkeypatch.setattr(prep, "load_item", lambda item, spec: [np.full((16, 16), len(item.path) % 251, np.uint8)])
    samples: list[int] = []
    finish_opened: list[str] = []
    real_write, real_finish = StoreWriter.write_shard, StoreWriter.finish

    def write_shard(self, i, images, records):
        res = real_write(self, i, images, records)
        samples.append(tracemalloc.get_traced_memory()[0])
        return res

    def finish(self, *a, **kw):  # renames sidecars and reads per-shard labels: opens no record sidecar
        real_open = builtins.open

        def spy(file, *args, **kwargs):
            finish_opened.append(str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)
        monkeypatch.setattr(io, "open", spy)
        try:
            return real_finish(self, *a, **kw)
        finally:
            monkeypatch.setattr(builtins, "open", real_open)
            monkeypatch.setattr(io, "open", real_open)

    # a tiny prepare first, so one-time lazy imports are not counted as growth
    (tmp_path / "warm" / "pos").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "warm" / "pos" / f"w{i}.png").touch()
    prepare(manifest.load(str(m)), tmp_path / "warmroot", workers=1, from_path=tmp_path / "warm")
    monkeypatch.setattr(StoreWriter, "write_shard", write_shard)
    monkeypatch.setattr(StoreWriter, "finish", finish)
    tracemalloc.start()
    try:
        [s] = prepare(manifest.load(str(m)), tmp_path / "root", workers=1, from_path=src)
    finally:
        tracemalloc.stop()
    assert s["count"] == n and len(samples) == n // 4
    growth = samples[-1] - samples[20]  # 720 images written between the two samples
    assert growth < 100_000, (growth, samples[20], samples[-1])
    assert finish_opened and not [f for f in finish_opened if "jsonl" in f], finish_opened
    st = open_store(tmp_path / "root" / "prepared" / "big" / "test")
    assert len(st) == n and len(st.shards) == n // 4 and st.verify() == []
    assert sorted(r["source"] for r in st.records) == sorted(f"pos/{long}{i:04d}.png" for i in range(n))


def test_inputs_digest_is_the_whole_list_hash():
    """The streamed digest equals the hash of the whole JSON list (stores prepared before keep
    resuming), including paths that JSON escapes."""
    import hashlib
    import json

    from repro.data.prepare import Item, inputs_digest

    for items in ([], [Item("a.jpg", 0)], [Item('d/"q"\\ü.png', 1), Item("b.jpg", 0), Item("c", 2)]):
        whole = hashlib.sha256(json.dumps([(it.path, it.label) for it in items]).encode()).hexdigest()
        assert inputs_digest(items) == whole
