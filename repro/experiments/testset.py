"""The labelled images an evaluation runs on: one or more stores' 0/1 images seen as one set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from repro.data.loader import to_float
from repro.errors import ReproError
from repro.model.config import NetworkConfig


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W[, C]) -> float32 (B, C, H, W) in [0, 1] (as training reads them)."""

    return to_float(images)


@dataclass
class TestSet:
    """The labeled images (label 0 or 1) of one or more stores, seen as one set, in store order."""

    names: list[str]
    stores: list[Any]
    which: np.ndarray  # (N,) store of each image
    local: np.ndarray  # (N,) index inside that store
    y: np.ndarray  # (N,) bool, True = positive
    unlabeled: int = 0  # images with label -1, left out
    split: str = "test"

    @classmethod
    def of(cls, names: Sequence[str], stores: Sequence[Any], split: str = "test") -> "TestSet":
        which, local, y, unl = [], [], [], 0
        shapes = {tuple(s.shape) for s in stores}
        if len(shapes) > 1:
            raise ReproError(f"test stores {', '.join(names)} have different image shapes {sorted(shapes)}")
        for k, s in enumerate(stores):
            lab = np.asarray(s.labels)
            if len(lab) and int(lab.max()) > 1:
                raise ReproError(f"{s.path}: labels go up to {int(lab.max())} (a multi-class store); the test "
                                 "needs one positive class: import it with `repro data import ... --positive CLASS`")
            keep = np.nonzero((lab == 0) | (lab == 1))[0]
            unl += int(len(lab) - len(keep))
            which.append(np.full(len(keep), k, np.int64))
            local.append(keep)
            y.append(lab[keep] == 1)
        return cls(list(names), list(stores), np.concatenate(which), np.concatenate(local),
                   np.concatenate(y).astype(bool), unl, split)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.stores[0].shape)

    def images(self, idx: np.ndarray | range) -> np.ndarray:
        """float32 (B, C, H, W) in [0, 1] for global indices, in the order given."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx),) + self.shape, np.uint8)
        for k, s in enumerate(self.stores):
            sel = np.nonzero(self.which[idx] == k)[0]
            if len(sel):
                out[sel] = s.images(self.local[idx[sel]])
        return as_float(out)

    def face_like(self) -> np.ndarray | None:
        """(N,) bool: distractors flagged face-like (animal faces, drawings, masks) in their records;
        None when no store flags any (or a store is too large to read its records for this)."""
        flags = []
        for k, s in enumerate(self.stores):
            if len(s) > 200_000:
                return None
            recs = s.records
            flags.append(np.asarray([bool(recs[int(i)].get("face_like", False)) for i in self.local[self.which == k]]))
        f = np.concatenate(flags) if flags else np.zeros(0, bool)
        return f if f.any() else None

    def describe(self) -> dict[str, Any]:
        """What the reports say about the test set actually used."""
        return {"stores": [str(s.path) for s in self.stores], "names": list(self.names), "split": self.split,
                "images": len(self), "positives": int(self.y.sum()), "negatives": int((~self.y).sum()),
                "unlabeled_left_out": self.unlabeled, "shape": list(self.shape)}

    def check(self, cfg: NetworkConfig) -> None:
        """One-line errors for a test set we cannot evaluate on."""
        where = " + ".join(str(s.path) for s in self.stores)
        if len(self) == 0:
            raise ReproError(f"{where}: the test set has no labeled images (labels 0/1)")
        n_pos = int(self.y.sum())
        if n_pos == 0 or n_pos == len(self):
            which = "positives" if n_pos == 0 else "negatives"
            raise ReproError(f"{where}: the test set has no {which} ({len(self)} images of one class); "
                             "the test needs both")
        cfg.check_image_shape(tuple(self.shape), where)
