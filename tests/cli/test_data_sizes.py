"""A data set at several sizes side by side, prepared for a config, resolved by the config's size; the
source given once; every k-th video frame from the command line; counts against the manifest's."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.cli import invoke, one_line_error
from repro.data.store import open_store
from support.data import make_images, make_video, write_manifest


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A 'local' manifest `toy` (16x16 grey, train + test splits) found by name, and its image folder."""
    src = tmp_path / "src"
    make_images(src / "a", 8, seed=1)
    make_images(src / "b", 6, seed=2, prefix="b", ext=".jpg")
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write_manifest(mdir / "toy.toml", "toy", kind="local", role="test",
                   sources=[{"split": "train", "label": -1, "glob": "a/*"}, {"split": "test", "label": 1, "glob": "b/b00*"},
                            {"split": "test", "label": 0, "glob": "a/img00[0-2]*"}],
                   expected="images = 20\ntrain = 8")
    monkeypatch.setenv("REPRO_MANIFESTS", str(mdir))
    return src, tmp_path / "data"


def test_sizes_side_by_side_and_listed(toy):
    src, root = toy
    assert invoke("data", "prepare", "toy", "--from", src, "--root", root).exit_code == 0
    r = invoke("data", "prepare", "toy", "--size", 8, 8, "--root", root)  # no --from: it was recorded
    assert r.exit_code == 0, r.output
    r = invoke("data", "prepare", "toy", "--for-config", "mini", "--root", root)
    assert r.exit_code == 0, r.output
    assert "toy@32x32" in r.output
    shapes = {p: open_store(root / "prepared" / p / "train").shape for p in ("toy", "toy@8x8", "toy@32x32")}
    assert shapes == {"toy": (16, 16), "toy@8x8": (8, 8), "toy@32x32": (32, 32)}
    # preparing the first size again is a no-op: nothing was replaced
    r = invoke("data", "prepare", "toy", "--root", root)
    assert r.exit_code == 0 and "already prepared" in r.output
    r = invoke("data", "list", "--root", root)
    assert r.exit_code == 0, r.output
    row = r.output[r.output.index("toy"):]
    for cell in ("train 16x16: 8", "train 8x8: 8", "train 32x32: 8", "test 16x16: 9", "from "):
        assert cell in row, r.output
    # a size given by name
    r = invoke("data", "bench", "toy@8x8", "--batch", 2, "--steps", 2, "--root", root)
    assert r.exit_code == 0 and "toy@8x8" in r.output, r.output


def test_for_config_bad_input(toy):
    src, root = toy
    one_line_error(invoke("data", "prepare", "toy", "--from", src, "--for-config", "mini", "--size", 8, 8,
                          "--root", root), "--for-config mini", "disagree")
    one_line_error(invoke("data", "prepare", "toy", "--from", src, "--for-config", "mini", "--colour",
                          "--root", root), "disagree")
    one_line_error(invoke("data", "prepare", "toy", "--from", src, "--for-config", "nope", "--root", root),
                   "unknown config 'nope'")
    one_line_error(invoke("data", "prepare", "mini", "--size", 8, 8, "--root", root), "built-in", "32x32 only")
    assert not (root / "prepared").exists()


def test_training_picks_the_config_size_and_names_the_fix(toy, tmp_path):
    """Training on a data set prepared at another size: one line naming the exact command; run it,
    then training finds the store of its size by the data set's name."""
    src, root = toy
    assert invoke("data", "prepare", "toy", "--from", src, "--root", root).exit_code == 0
    args = ("train", "--config", "mini", "--data", "toy", "--root", root, "--layer-steps", 1, "--batch", 4)
    msg = one_line_error(invoke(*args, "--out", tmp_path / "run"), "images are 16x16x1",
                         "config 'mini' wants 32x32x1", f"repro data prepare toy --for-config mini --root {root}")
    assert not (tmp_path / "run").exists()
    fix = re.search(r"`repro (data prepare [^`]*)`", msg)[1].split()
    assert invoke(*fix).exit_code == 0
    r = invoke(*args, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "run" / "data.json").read_text())
    assert Path(rec["store"]) == (root / "prepared" / "toy@32x32" / "train").resolve()
    assert open_store(root / "prepared" / "toy" / "train").shape == (16, 16)  # the first size stays
    # a store folder of the wrong size: the config's check names --for-config too
    one_line_error(invoke("train", "--config", "mini", "--data", root / "prepared" / "toy" / "train", "--root", root,
                          "--out", tmp_path / "run2"), "wants 32x32x1", "--for-config mini")


def test_prepare_from_is_remembered_for_downloads_too(tmp_path):
    """`prepare --from` on a download manifest (nothing fetched) is recorded; the next prepare reuses it."""
    src = tmp_path / "src"
    make_images(src / "lfw" / "p1", 3)
    mdir = tmp_path / "m"
    mdir.mkdir()
    m = write_manifest(mdir / "dl.toml", "dl", files=[{"name": "dl.tgz", "url": "", "sha256": ""}],
                       sources=[{"split": "test", "label": 1, "glob": "lfw/**/*.png"}])
    root = tmp_path / "data"
    one_line_error(invoke("data", "prepare", m, "--root", root), "raw files missing")
    assert invoke("data", "prepare", m, "--from", src, "--root", root).exit_code == 0
    rec = json.loads((root / "raw" / "dl" / "source.json").read_text())
    assert rec["path"] == str(src.resolve()) and rec["recorded_by"] == "prepare --from"
    r = invoke("data", "prepare", m, "--size", 8, 8, "--root", root)
    assert r.exit_code == 0, r.output
    assert len(open_store(root / "prepared" / "dl@8x8" / "test")) == 3


def test_video_every_from_the_command_line(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    make_video(vids / "v.avi", n_frames=9)
    m = write_manifest(tmp_path / "yt.toml", "yt", kind="local", role="unlabeled",
                       sources=[{"split": "train", "label": -1, "glob": "*"}])
    root = tmp_path / "data"
    assert invoke("data", "prepare", m, "--from", vids, "--root", root).exit_code == 0
    assert len(open_store(root / "prepared" / "yt" / "train")) == 1  # the paper's one frame per video
    r = invoke("data", "prepare", m, "--video-every", 2, "--root", root)
    assert r.exit_code == 0, r.output
    st = open_store(root / "prepared" / "yt" / "train")
    assert len(st) == 5 and st.index["params"]["video_every"] == 2  # frames 0, 2, 4, 6, 8
    r = invoke("data", "prepare", m, "--video-every", -1, "--root", root)
    assert r.exit_code == 2 and "--video-every" in r.output


def test_shortfall_against_expected_counts(toy):
    """toy expects 20 images and 8 training images; 17 are there: a warning, or with --strict an error
    before anything is decoded."""
    src, root = toy
    msg = one_line_error(invoke("data", "prepare", "toy", "--from", src, "--strict", "--root", root),
                         "17 images found, the manifest expects 20 (3 short", "--strict; nothing prepared")
    assert "toy.toml" in msg and not (root / "prepared").exists()
    r = invoke("data", "prepare", "toy", "--from", src, "--root", root)
    assert r.exit_code == 0, r.output
    assert "warning: toy: 17 images prepared, the manifest expects 20 (3 short" in r.output
    assert [ln for ln in r.output.splitlines() if "warning" in ln and "train" in ln] == []  # train has its 8
    # counted again from the stores when they are already there
    r = invoke("data", "prepare", "toy", "--root", root)
    assert r.exit_code == 0 and "3 short" in r.output


def test_data_help_texts():
    """Every option says what it does; --root names $REPRO_DATA; each command shows an example;
    prepare lists the known data sets; the group documents $REPRO_MANIFESTS."""
    from repro.commands.data import data

    for name, cmd in data.commands.items():
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert p.help, f"data {name} {p.opts}: no help"
        text = invoke("data", name, "--help").output
        assert "Example" in text, name
        if any(p.name == "root" for p in cmd.params):
            assert "$REPRO_DATA" in text and "REPRO_DATA" in text, name
    text = invoke("data", "prepare", "--help").output
    assert "Known data sets" in text and "lfw" in text and "youtube-frames" in text
    assert "--for-config" in text and "--video-every" in text and "--strict" in text
    text = invoke("data", "--help").output
    assert "$REPRO_MANIFESTS" in text and "NAME@HxW" in text
    assert "disk" in invoke("data", "bench", "--help").output


def test_the_fix_names_every_step_that_is_missing(toy, tmp_path):
    """Nothing given yet: the command includes --from FOLDER (a local set) or the fetch before it (a
    download); a built-in set made at another size points to your own frames instead."""
    from repro.data.builtin import ensure_mini
    from repro.data.prepare import require_store
    from repro.errors import ReproError

    src, root = toy
    one_line_error(invoke("train", "--config", "mini", "--data", "toy", "--root", root, "--out", tmp_path / "r"),
                   f"run `repro data prepare toy --from FOLDER --for-config mini --root {root}`")
    write_manifest(Path(src).parent / "manifests" / "dl.toml", "dl", files=[{"name": "dl.tgz", "url": "", "sha256": ""}],
                   sources=[{"split": "train", "label": -1, "glob": "*.png"}])
    one_line_error(invoke("train", "--config", "mini", "--data", "dl", "--root", root, "--out", tmp_path / "r"),
                   f"`repro data fetch dl --root {root} && repro data prepare dl --for-config mini --root {root}`")
    ensure_mini(root)
    with pytest.raises(ReproError) as e:
        require_store("mini", "train", root, shape=(200, 200), config="le2012")
    assert "images are 32x32x1, config 'le2012' wants 200x200x1" in e.value.message
    assert "repro data prepare youtube-frames --from FOLDER --for-config le2012" in e.value.message
    assert "built-in 'mini' is made at 32x32 only" in e.value.message


def test_face_filtered_copies_of_two_sizes_sit_side_by_side(toy):
    """filter-faces on NAME@HxW writes NAME-noface@HxW: the copy of one size never replaces another's."""
    src, root = toy
    assert invoke("data", "prepare", "toy", "--from", src, "--root", root).exit_code == 0
    assert invoke("data", "prepare", "toy", "--size", 24, 24, "--root", root).exit_code == 0
    for name, want in (("toy", "toy-noface"), ("toy@24x24", "toy-noface@24x24")):
        r = invoke("data", "filter-faces", name, "--root", root)
        assert r.exit_code == 0, r.output
        assert f"prepared/{want}/train" in r.output.replace("\n", ""), r.output
    assert open_store(root / "prepared" / "toy-noface" / "train").shape == (16, 16)
    assert open_store(root / "prepared" / "toy-noface@24x24" / "train").shape == (24, 24)
