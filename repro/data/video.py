"""Frames from videos with OpenCV: one per video (Le et al.'s rule for YouTube) or every k-th.

Why OpenCV: ``cv2.VideoCapture`` reads the common containers without a separate ffmpeg install,
and it is already a dependency for the face filter.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


class BadVideo(ValueError):
    """The file cannot be opened as a video or yields no frame."""


def read_frames(path: str | Path, every: int = 0) -> list[np.ndarray]:
    """BGR uint8 frames of a video.

    ``every = 0``: one frame, the middle one (the paper takes one frame per video; the middle avoids
    title cards and fades). ``every = k``: frames 0, k, 2k, ... (streamed; the video is never held
    whole in memory).
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BadVideo("cannot open as a video")
        frames: list[np.ndarray] = []
        if every <= 0:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            want = max(n // 2, 0)
            if want > 0:
                cap.set(cv2.CAP_PROP_POS_FRAMES, want)
                ok, fr = cap.read()
                if ok and fr is not None:
                    return [fr]
                cap.release()
                cap = cv2.VideoCapture(str(path))
            # seek failed or length unknown: read sequentially up to the wanted frame
            i, last = 0, None
            while True:
                ok, fr = cap.read()
                if not ok or fr is None:
                    break
                last = fr
                if i >= want:
                    break
                i += 1
            if last is None:
                raise BadVideo("no decodable frame")
            return [last]
        i = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if i % every == 0:
                ok, fr = cap.retrieve()
                if ok and fr is not None:
                    frames.append(fr)
            i += 1
        if not frames:
            raise BadVideo("no decodable frame")
        return frames
    finally:
        cap.release()
