"""Loader: shapes and scaling, same batches on every model-parallel rank, disjoint replicas, epochs."""
from __future__ import annotations

import numpy as np
import pytest

from repro.data import Loader, open_store
from repro.data.store import write_store
from repro.errors import ReproError


@pytest.fixture()
def store(tmp_path):
    n = 200
    x = (np.arange(n)[:, None, None] + np.zeros((1, 6, 5))).astype(np.uint8)  # image i is filled with i
    recs = [{"label": i % 2, "source": f"img{i}"} for i in range(n)]
    return open_store(write_store(tmp_path / "s", x, recs, "toy", "train", {}, shard_size=25))


def _ids(batch: np.ndarray) -> list[int]:
    return [int(round(v * 255)) for v in batch[:, 0, 0, 0]]


def test_batches_shape_dtype_scale(store, tmp_path):
    ld = Loader(store, 16, seed=0)
    batches = list(ld)
    assert len(batches) == len(ld) == 200 // 16 and ld.epoch == 1
    b = batches[0]
    assert b.shape == (16, 1, 6, 5) and b.dtype == np.float32 and 0.0 <= b.min() and b.max() <= 1.0
    seen = sum((_ids(b) for b in batches), [])
    assert len(set(seen)) == len(seen) == 192
    assert ld.images_per_s > 0
    xs, ys = next(iter(Loader(store, 8, seed=0, with_labels=True)))
    assert ys.tolist() == [i % 2 for i in _ids(xs)]
    rgb = np.random.default_rng(0).integers(0, 256, (10, 4, 3, 3), dtype=np.uint8)
    st = open_store(write_store(tmp_path / "rgb", rgb, [{"label": -1, "source": str(i)} for i in range(10)],
                                "c", "train", {}))
    b = next(iter(Loader(st, 5, seed=0, shuffle=False)))
    assert b.shape == (5, 3, 4, 3) and np.allclose(b[1], rgb[1].transpose(2, 0, 1) / 255.0)


def test_model_parallel_ranks_get_identical_batches(store):
    a = [b.copy() for b in Loader(store, 10, seed=3, replica=1, n_replicas=2)]
    b = [b.copy() for b in Loader(store, 10, seed=3, replica=1, n_replicas=2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) > 0


def test_replicas_disjoint_shards_and_epochs(store):
    lds = [Loader(store, 10, seed=0, replica=r, n_replicas=3) for r in range(3)]
    per = [set(sum((_ids(b) for b in ld), [])) for ld in lds]
    assert not (per[0] & per[1]) and not (per[1] & per[2]) and not (per[0] & per[2])
    assert len({len(ld) for ld in lds}) == 1  # equal step counts per epoch
    shard_of = {i: i // 25 for i in range(200)}
    assert all(len({shard_of[i] for i in p} & {shard_of[i] for i in q}) == 0
               for p, q in [(per[0], per[1]), (per[1], per[2])])
    ld = Loader(store, 10, seed=0)
    assert not np.array_equal(ld.order(0), ld.order(1))
    ld.set_epoch(5)
    assert _ids(next(iter(ld))) == Loader(store, 10, seed=0).order(5)[:10].tolist()
    many = Loader(store, 16, seed=0)
    assert sum(1 for _ in many.steps(30)) == 30 and many.epoch >= 2
    # more replicas than shards: images are strided, still disjoint
    lds = [Loader(store, 5, seed=0, replica=r, n_replicas=16) for r in range(16)]
    sets = [set(ld.indices.tolist()) for ld in lds]
    assert sum(len(s) for s in sets) == 200 and len(set().union(*sets)) == 200


def test_loader_errors(store):
    with pytest.raises(ReproError):
        Loader(store, 0, seed=0)
    with pytest.raises(ReproError):
        Loader(store, 10, seed=0, replica=2, n_replicas=2)
    with pytest.raises(ReproError, match="fewer than one batch"):
        Loader(store, 500, seed=0)


def test_loader_streams_ahead(store):
    """The reader thread is far faster than any training step on this data (reported, not timed)."""
    ld = Loader(store, 50, seed=0, prefetch=2)
    for _ in ld.steps(20):
        pass
    assert ld.images_per_s > 1000


def test_bench_command_and_manifest_env(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from support.data import cli, make_images, write_manifest

    make_images(tmp_path / "src" / "a", 8)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write_manifest(mdir / "toy.toml", "toy", kind="local", role="unlabeled",
                   sources=[{"split": "train", "label": -1, "glob": "a/*.png"}])
    monkeypatch.setenv("REPRO_MANIFESTS", str(mdir))
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "root"))
    r = CliRunner().invoke(cli, ["data", "bench", "toy", "--batch", "4", "--steps", "3"])
    assert r.exit_code == 1 and "repro data prepare toy" in r.output
    r = CliRunner().invoke(cli, ["data", "prepare", "toy", "--from", str(tmp_path / "src")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "root" / "prepared" / "toy" / "train" / "index.json").is_file()
    r = CliRunner().invoke(cli, ["data", "bench", "toy", "--batch", "4", "--steps", "3"])
    assert r.exit_code == 0 and "images/s" in r.output, r.output
