"""The control experiment's face filter: drop every training image in which OpenCV finds a face.

Le et al. removed faces from the training frames with an OpenCV face detector and still found a
(weaker) face neuron (72.5%). We use the Haar cascade that opencv-python 4.x ships
(``cv2.data.haarcascades``; 5.0 removed it, hence the ``<5`` pin).

Parameters and why: the frontal-face cascade's window is 24x24 and it misses faces that fill a
tiny image, so images are first upscaled (bilinear) until the short side is ``upscale_to`` = 128 px.
``min_face`` = 0.3 (fraction of the short side) and ``min_neighbors`` = 3, ``scale_factor`` = 1.1
were chosen on the *training* frames of ``mini`` only (never on a test set): there they remove about
80% of the frames with a pasted face and about 1-2% of the frames without one (see
``tests/cli/test_data_mini.py``, which prints the figures). For 200x200 frames with small faces,
lower ``min_face``.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from repro.data.store import Store, StoreWriter, open_store
from repro.errors import ReproError

CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceDetector:
    """Settings of ``cv2.CascadeClassifier.detectMultiScale`` (kept in the output store's index)."""

    upscale_to: int = 128
    min_face: float = 0.3
    scale_factor: float = 1.1
    min_neighbors: int = 3
    cascade: str = CASCADE

    def classifier(self) -> cv2.CascadeClassifier:
        path = os.path.join(cv2.data.haarcascades, self.cascade)
        cc = cv2.CascadeClassifier(path)
        if cc.empty():
            raise ReproError(f"{path}: cannot load the OpenCV Haar cascade (opencv-python 4.x ships it; 5.0 does not)")
        return cc

    def count(self, cc: cv2.CascadeClassifier, img: np.ndarray) -> int:
        """Number of faces found in one uint8 image (grey or RGB)."""
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        short = min(img.shape[:2])
        f = max(1.0, self.upscale_to / short)
        if f > 1.0:
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        ms = max(24, int(self.min_face * short * f))
        found = cc.detectMultiScale(np.ascontiguousarray(img), scaleFactor=self.scale_factor,
                                    minNeighbors=self.min_neighbors, minSize=(ms, ms))
        return len(found)


def detect(images: np.ndarray, det: FaceDetector | None = None, workers: int | None = None) -> np.ndarray:
    """Boolean mask: True where at least one face is detected. Threads (OpenCV releases the GIL)."""
    det = det or FaceDetector()
    workers = workers or max(1, os.cpu_count() or 1)
    chunks = np.array_split(np.arange(len(images)), max(1, min(len(images), workers * 4)))

    def run(idx: np.ndarray) -> np.ndarray:
        cc = det.classifier()  # one per thread: CascadeClassifier is not documented thread-safe
        return np.array([det.count(cc, images[i]) > 0 for i in idx], dtype=bool)

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(run, chunks))
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def filter_faces(src: str | os.PathLike | Store, out: str | os.PathLike, det: FaceDetector | None = None,
                 workers: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Write ``out``: the store ``src`` without images that contain a detected face (shard by shard).

    Returns a summary (also saved as ``info.face_filter`` in the new store's index).
    """
    det = det or FaceDetector()
    store = src if isinstance(src, Store) else open_store(src)
    out = Path(out)
    if out.resolve() == store.path.resolve():
        raise ReproError(f"{out}: the filtered store must go to a different folder than its source")
    plan = {"filter": "faces", "source": str(store.path.resolve()), "source_count": len(store),
            "detector": asdict(det)}
    writer = StoreWriter(out, plan)
    results, removed = [], 0
    known = {"with_face": 0, "with_face_removed": 0, "without_face": 0, "without_face_removed": 0}
    labelled = True  # every record says whether a face was placed in it (built-in sets): recall is measurable
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]face filter"), BarColumn(), MofNCompleteColumn(), console=console) as prog:
        task = prog.add_task("filter", total=len(store))
        for s in range(len(store.shards)):
            gidx = store.shard_indices(s)
            res = writer.done(s)
            srecs = store.shard_records(s)  # one shard's sidecar, not the whole index
            if res is None:
                imgs = store.images(gidx)
                has = detect(imgs, det, workers)
                keep = np.nonzero(~has)[0]
                recs = [{k: v for k, v in srecs[int(i)].items() if k not in ("shard", "offset", "sha256")}
                        for i in keep]
                res = writer.write_shard(s, imgs[keep], recs)
            else:  # resumed shard: which frames were kept is in its written records
                kept_src = {r.get("sha256") for r in _written_records(writer, s)}
                has = np.asarray([r.get("sha256") not in kept_src for r in srecs])
            if labelled and all("face" in r for r in srecs):
                face = np.asarray([bool(r["face"]) for r in srecs])
                known["with_face"] += int(face.sum())
                known["with_face_removed"] += int((face & has).sum())
                known["without_face"] += int((~face).sum())
                known["without_face_removed"] += int((~face & has).sum())
            else:
                labelled = False
            removed += len(gidx) - res.count
            results.append(res)
            prog.update(task, advance=len(gidx))
    summary = {"source": str(store.path), "source_count": len(store), "removed": removed,
               "kept": len(store) - removed, "detector": asdict(det)}
    if labelled and known["with_face"]:
        # measured against the faces the data set placed in its frames (their records say so)
        summary.update(known, recall=known["with_face_removed"] / known["with_face"],
                       false_positive_rate=known["without_face_removed"] / max(1, known["without_face"]))
    info = dict(store.index.get("info", {}))
    info["face_filter"] = summary
    writer.finish(store.shape, results, store.name, store.split, store.index.get("params", {}), info)
    return summary


def _written_records(writer: StoreWriter, s: int) -> list[dict[str, Any]]:
    """The records already written for shard ``s`` of a resumed filter run."""

    for name in (f"shard-{s:05d}.wip.jsonl", f"shard-{s:05d}.records.jsonl"):
        p = writer.tmp / name
        if p.is_file():
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return []
