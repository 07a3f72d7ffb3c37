"""The training-frame generator of ``pypi-faces`` on synthetic scenes: the ``train_min_texture`` knob
makes face-free frames obey val/test's texture rule, and off it changes nothing."""
from __future__ import annotations

import numpy as np

from repro.data.pypifaces import Picture, Source, texture, train_frames


def scenes() -> list[Picture]:
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 128, np.uint8)
    busy = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    src = [Source(id=f"s{i}", package="p", member=f"m{i}", kind="scene", split="train", group=f"g{i}")
           for i in range(2)]
    return [Picture(flat, src[0], "p:flat"), Picture(busy, src[1], "p:busy")]


def flat_share(x: np.ndarray) -> float:
    return float(np.mean([texture(im)[0] < 24 or texture(im)[1] < 6 for im in x]))


def test_train_min_texture_keeps_face_free_frames_textured():
    p = {"frames": 200, "face_fraction": 0.0, "object_fraction": 0.0}
    off, _ = train_frames([], scenes(), p, (32, 32), True, seed=3)
    on, _ = train_frames([], scenes(), {**p, "train_min_texture": True}, (32, 32), True, seed=3)
    assert flat_share(off) > 0.3  # about half the frames are crops of the flat scene
    assert flat_share(on) < 0.02
    again, _ = train_frames([], scenes(), {**p, "train_min_texture": False}, (32, 32), True, seed=3)
    assert np.array_equal(off, again)  # the knob off draws exactly the frames it always drew
