"""README "Bring your own data": the commands of that section, run as written (tiny step counts added)
on a few generated images and a tiny generated video, from a folder of frames to an evaluation on an
imported test set. If the README changes, this test runs the new commands."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np

from support.cli import invoke
from repro.data.store import open_store

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = {"train": ["--layer-steps", "2", "--finetune-steps", "2", "--batch", "8"],
        "evaluate": ["--linear-filters", "20", "--one-layer-steps", "2"]}


def readme_commands() -> list[list[str]]:
    """The `repro ...` lines of the first bash block of README's "### Bring your own data"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Bring your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [shlex.split(ln) for ln in block.splitlines() if ln.strip().startswith("repro ")]


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A structured grey-ish image unlike any other (blurred noise in three channels)."""
    x = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    return cv2.normalize(x, None, 0, 255, cv2.NORM_MINMAX)


def make_inputs(home: Path) -> None:
    rng = np.random.default_rng(18)
    frames = home / "my-frames"
    (frames / "holiday").mkdir(parents=True)
    for i in range(12):
        ext = (".jpg", ".png")[i % 2]
        assert cv2.imwrite(str(frames / ("holiday" if i % 3 else ".") / f"img{i}{ext}"), _blob(rng, 60, 80))
    vw = cv2.VideoWriter(str(frames / "walk.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60), isColor=True)
    assert vw.isOpened()
    scene = _blob(rng, 60, 160)
    for t in range(30):  # a pan across a wider scene: 30 frames
        vw.write(np.ascontiguousarray(scene[:, 2 * t:2 * t + 80]))
    vw.release()
    for c in ("faces", "other"):
        (home / "my-test" / c).mkdir(parents=True)
        for i in range(6):
            assert cv2.imwrite(str(home / "my-test" / c / f"{c}{i}.jpg"), _blob(rng, 50, 50))


def test_readme_bring_your_own_data(tmp_path, monkeypatch):
    cmds = readme_commands()
    assert [c[1:3] if c[1] == "data" else c[1:2] for c in cmds] == [
        ["data", "fetch"], ["data", "prepare"], ["train"], ["data", "import"], ["data", "check-leak"], ["evaluate"]]
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)  # results/ and the default data root data/ land here
    monkeypatch.delenv("REPRO_DATA", raising=False)
    monkeypatch.delenv("REPRO_MANIFESTS", raising=False)
    for cmd in cmds:
        args = [a.replace("~/", f"{tmp_path}/") for a in cmd[1:]] + TINY.get(cmd[1], [])
        r = invoke(*args)
        assert r.exit_code == 0, f"{shlex.join(cmd)}\n{r.output}"
        assert "also in the training data" not in r.output
    st = open_store(tmp_path / "data" / "prepared" / "youtube-frames@32x32" / "train")
    assert st.shape == (32, 32) and len(st) == 12 + 3  # every image, and frames 0, 10, 20 of the video
    assert st.index["params"]["video_every"] == 10
    rec = json.loads((tmp_path / "results" / "mine" / "data.json").read_text())
    assert Path(rec["store"]) == st.path.resolve()
    ev = json.loads((tmp_path / "results" / "mine" / "mytest" / "evaluate-faces.json").read_text())
    assert ev["test_set"]["names"] == ["mytest"] and 0 <= ev["best_neuron"]["accuracy"] <= 1
    mytest = open_store(tmp_path / "data" / "prepared" / "mytest" / "test")
    assert len(mytest) == 12 and int(mytest.labels.sum()) == 6
