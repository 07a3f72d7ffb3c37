"""The store format (version 2): opening reads only index.json + labels.npy; records are per-shard
sidecars read on demand; version-1 stores (records inline in index.json) are still read."""
from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest

from repro.data import Loader, open_store
from repro.data.store import Records, write_store
from repro.errors import ReproError


def _toy(n: int, size: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    recs = [{"label": int(i % 3) - 1, "source": f"img{i}.png", "extra": i} for i in range(n)]
    return x, recs


def test_open_reads_no_sidecar(tmp_path, monkeypatch):
    x, recs = _toy(20000)
    path = write_store(tmp_path / "big", x, recs, "toy", "train", {"k": 1}, shard_size=1000)
    idx_bytes = (path / "index.json").stat().st_size
    assert idx_bytes < 10_000  # no per-image data in the index
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)  # pathlib opens through io.open
    st = open_store(path)
    assert len(st) == 20000 and len(st.shards) == 20
    imgs = st.images([0, 19999, 1234])
    assert st.labels[[0, 1, 2]].tolist() == [-1, 0, 1]
    assert not [f for f in opened if f.endswith(".jsonl")], opened
    monkeypatch.undo()
    assert any(f.endswith("index.json") for f in opened) and any(f.endswith("labels.npy") for f in opened)
    np.testing.assert_array_equal(imgs, x[[0, 19999, 1234]])
    # with every sidecar gone, labels, images, shard layout and the Loader still work
    for f in path.glob("*.records.jsonl"):
        f.unlink()
    st = open_store(path)
    np.testing.assert_array_equal(st.labels, [r["label"] for r in recs])
    np.testing.assert_array_equal(st.images(np.arange(5000, 5010)), x[5000:5010])
    assert st.shard_indices(3).tolist() == list(range(3000, 4000))
    xs, ys = next(iter(Loader(st, 32, seed=0, n_replicas=2, replica=1, with_labels=True)))
    assert xs.shape == (32, 1, 4, 4) and ys.shape == (32,)
    with pytest.raises(ReproError, match="sidecar missing"):
        st.records[0]
    assert any("sidecar missing" in p for p in st.verify())


def test_records_round_trip_lazily(tmp_path):
    x, recs = _toy(257, size=6, seed=1)
    st = open_store(write_store(tmp_path / "s", x, recs, "toy", "test", {}, shard_size=50))
    assert isinstance(st.records, Records) and len(st.records) == 257 and len(st.shards) == 6
    assert [s["count"] for s in st.shards] == [50] * 5 + [7]
    got = list(st.records)
    assert [r["source"] for r in got] == [r["source"] for r in recs]
    assert [r["extra"] for r in got] == list(range(257))
    assert st.records[-1]["source"] == "img256.png" and st.records[np.int64(60)]["shard"] == 1
    assert st.records[60]["offset"] == 10 and [r["extra"] for r in st.records[48:52]] == [48, 49, 50, 51]
    with pytest.raises(IndexError):
        st.records[257]
    assert st.shard_records(5)[0]["extra"] == 250
    assert st.labels.dtype == np.int64 and st.labels.tolist() == [r["label"] for r in recs]
    np.testing.assert_array_equal(st.images(np.arange(257)), x)
    assert st.verify() == []
    # a wrong label in a sidecar and a wrong pixel hash are reported
    side = st.path / st.shards[1]["records"]
    lines = side.read_text().splitlines()
    r = json.loads(lines[0])
    r["label"], r["sha256"] = 7, "0" * 64
    side.write_text("\n".join([json.dumps(r)] + lines[1:]) + "\n")
    probs = open_store(st.path).verify()
    assert len(probs) == 2 and any("sha256" in p for p in probs) and any("labels.npy" in p for p in probs)


def test_empty_shards_dropped_and_no_temp_files(tmp_path):
    x, recs = _toy(0)
    st = open_store(write_store(tmp_path / "e", x, recs, "toy", "train", {}))
    assert len(st) == 0 and st.shards == [] and list(st.records) == [] and st.labels.shape == (0,)
    x, recs = _toy(30)
    path = write_store(tmp_path / "s", x, recs, "toy", "train", {}, shard_size=10)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["index.json", "labels.npy"] + [f"shard-{i:05d}{e}" for i in range(3)
                                                    for e in (".npy", ".records.jsonl")]


def _as_v1(path: Path) -> None:
    """Rewrite a version-2 store the way version 1 stored it (records inline, no sidecars)."""
    idx = json.loads((path / "index.json").read_text())
    recs = []
    for s in idx["shards"]:
        recs += [json.loads(line) for line in (path / s.pop("records")).read_text().splitlines()]
        (path / f"{s['file'][:-4]}.records.jsonl").unlink()
    (path / idx.pop("labels")).unlink()
    idx["version"], idx["records"] = 1, recs
    (path / "index.json").write_text(json.dumps(idx))


def test_version1_store_still_read(tmp_path):
    x, recs = _toy(45, seed=2)
    path = write_store(tmp_path / "v1", x, recs, "toy", "train", {"p": 1}, shard_size=20, info={"a": 1})
    _as_v1(path)
    st = open_store(path)
    assert st.version == 1 and len(st) == 45 and st.index["info"] == {"a": 1}
    assert [r["extra"] for r in st.records] == list(range(45))
    assert st.labels.tolist() == [r["label"] for r in recs] and st.shard_indices(2).tolist() == list(range(40, 45))
    np.testing.assert_array_equal(st.images([44, 0, 21]), x[[44, 0, 21]])
    assert st.shard_records(1)[0]["extra"] == 20 and st.verify() == []


def test_bad_versions_and_counts(tmp_path):
    x, recs = _toy(10)
    path = write_store(tmp_path / "s", x, recs, "toy", "train", {}, shard_size=4)
    idx = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**idx, "version": 9}))
    with pytest.raises(ReproError, match="--force"):
        open_store(path)
    (path / "index.json").write_text(json.dumps({**idx, "count": 11}))
    with pytest.raises(ReproError, match="count"):
        open_store(path)
    (path / "index.json").write_text(json.dumps(idx))
    np.save(path / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(ReproError, match="labels"):
        open_store(path)
    (path / "labels.npy").unlink()
    with pytest.raises(ReproError, match="labels"):
        open_store(path)


def test_writer_renumbers_empty_shards_and_resumes_from_disk(tmp_path):
    from repro.data.store import StoreWriter

    x, recs = _toy(9, seed=3)
    plan = {"p": 1}
    w = StoreWriter(tmp_path / "s", plan)
    assert w.write_shard(0, x[:4], [dict(r) for r in recs[:4]]).count == 4
    w.write_shard(1, x[:0], [])  # empty: dropped, the next shard renumbered
    # a new writer with the same plan (resume) sees the shards on disk, nothing held in memory
    w = StoreWriter(tmp_path / "s", plan)
    assert w.done(0).count == 4 and w.done(1).count == 0 and w.done(2) is None
    w.write_shard(2, x[4:], [dict(r) for r in recs[4:]])
    st = open_store(w.finish((4, 4), [4, 0, 5], "toy", "train", {}))
    assert [s["count"] for s in st.shards] == [4, 5] and st.verify() == []
    assert [(r["shard"], r["offset"], r["extra"]) for r in st.shard_records(1)] == [(1, i, 4 + i) for i in range(5)]
    assert st.labels.tolist() == [r["label"] for r in recs]
    np.testing.assert_array_equal(st.images(np.arange(9)), x)
    assert sorted(p.name for p in st.path.iterdir()) == ["index.json", "labels.npy"] + [
        f"shard-{i:05d}{e}" for i in range(2) for e in (".npy", ".records.jsonl")]
    # finish checks the files against the counts it is given
    w = StoreWriter(tmp_path / "t", plan)
    w.write_shard(0, x[:2], [dict(r) for r in recs[:2]])
    with pytest.raises(ReproError, match="shard 0"):
        w.finish((4, 4), [3], "toy", "train", {})
