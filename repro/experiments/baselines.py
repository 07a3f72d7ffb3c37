"""The baselines of Le et al.'s Table 1 beside the best neuron: linear filters and a one-layer network.

Linear filters, in both readings of "100,000 filters sampled randomly from the training set" (the
paper does not give their size):

* ``patch``: a receptive-field-sized patch (the first stage's window, all channels) cut at a random
  position of a random training image, applied at that same position of the test image;
* ``image``: a whole training image, the size of the test images, applied to the whole test image.

Either filter is cut from training images prepared as the network prepares its input (per image
zero mean and unit std, then the config's input contrast normalisation, if any: the filters compete
with neurons that see exactly that), made zero mean and unit norm, and meets the test image
prepared the same way. Images, positions and filters come
from ``seed`` alone; filters are scored in fixed chunks of global indices shared out over ranks,
so every rank count computes each filter alike.

The one-layer network is the config's first stage alone, trained greedily with the same settings on
the run's own training data. It is cached in ``one-layer/`` beside the reports and reused only while
both its config and its training store (:meth:`repro.data.store.Store.fingerprint`) are unchanged.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from repro.engine.comm import World
from repro.errors import ReproError
from repro.experiments.scoring import (N_THRESHOLDS, Scores, accuracy_at, auc, held_out_split,
                                       stratified_halves, threshold_scores)
from repro.experiments.run import Session
from repro.experiments.testset import as_float
from repro.experiments.train import train
from repro.model.config import NetworkConfig
from repro.model.network import Network, load_checkpoint, standardize

FILTER_CHUNK = 256  # linear filters per unit of work (global, so any rank count computes alike)
READINGS = ("patch", "image")


def _zero_mean_unit_norm(out: np.ndarray) -> np.ndarray:
    """In place per filter; a flat filter stays all zero (it scores the guessing rate, never more)."""
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    norm = np.sqrt((out.astype(np.float64) ** 2).sum(axis=(1, 2, 3), keepdims=True))
    out /= np.maximum(norm, 1e-8).astype(np.float32)
    return out


def sample_patches(store: Any, k: int, size: int, seed: int, prep: Callable | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """K zero-mean unit-norm patches (K, C, f, f) float32 of prepared training images, and their
    positions (K, 2) [row, col]. ``prep``: how the network prepares its input (default: none)."""
    H, W = store.shape[:2]
    if size > min(H, W):
        raise ReproError(f"linear filters of {size}x{size} do not fit {H}x{W} training images")
    rng = np.random.default_rng([seed, 1])
    img = rng.integers(0, len(store), size=k)
    pos = np.stack([rng.integers(0, H - size + 1, size=k), rng.integers(0, W - size + 1, size=k)], axis=1)
    uniq, inv = np.unique(img, return_inverse=True)
    C = store.shape[2] if len(store.shape) == 3 else 1
    out = np.empty((k, C, size, size), np.float32)
    for lo in range(0, len(uniq), 1024):  # read each needed image once, in chunks
        x = as_float(store.images(uniq[lo:lo + 1024]))
        if prep is not None:
            x = np.asarray(prep(x), np.float32)
        for j in np.nonzero((inv >= lo) & (inv < lo + 1024))[0]:
            r, c = pos[j]
            out[j] = x[inv[j] - lo, :, r:r + size, c:c + size]
    return _zero_mean_unit_norm(out), pos


def image_indices(store: Any, k: int, seed: int) -> np.ndarray:
    """Which training images serve as whole-image filters (without repeats while the store has enough)."""
    rng = np.random.default_rng([seed, 3])
    return rng.permutation(len(store))[:k] if k <= len(store) else rng.integers(0, len(store), size=k)


def image_filters(store: Any, idx: np.ndarray, prep: Callable | None = None) -> np.ndarray:
    """(K, C, H, W) float32 whole prepared training images, zero mean and unit norm."""
    order = np.argsort(idx, kind="stable")
    x = np.empty((len(idx),) + tuple(as_float(store.images(idx[:1])).shape[1:]), np.float32)
    got = as_float(store.images(idx[order]))
    x[order] = got if prep is None else np.asarray(prep(got), np.float32)
    return _zero_mean_unit_norm(x)


def filter_responses(x_std: np.ndarray, patches: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(B, K) dot products of each standardised image with each filter at the filter's position."""
    f = patches.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x_std, (f, f), axis=(2, 3))  # (B, C, H-f+1, W-f+1, f, f)
    w = win[:, :, pos[:, 0], pos[:, 1]]  # (B, C, K, f, f) (a copy: fancy indexing)
    return np.einsum("bckij,kcij->bk", w, patches, optimize=True).astype(np.float32)


def image_responses(x_std: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """(B, K) dot products of each standardised image with each whole-image filter."""
    return (x_std.reshape(len(x_std), -1) @ filters.reshape(len(filters), -1).T).astype(np.float32)


class LinearFilters:
    """K filters of one reading, made chunk by chunk on demand (a chunk is FILTER_CHUNK global indices)."""

    def __init__(self, reading: str, store: Any, k: int, size: int, seed: int, prep: Callable = standardize):
        if reading not in READINGS:
            raise ValueError(f"unknown linear-filter reading {reading!r}")
        self.reading, self.store, self.k, self.size, self.seed, self.prep = reading, store, k, size, seed, prep
        if reading == "patch":
            self.patches, self.pos = sample_patches(store, k, size, seed, prep)
        else:
            self.idx = image_indices(store, k, seed)

    def bank(self, sl: slice) -> np.ndarray:
        """Filters ``sl``, made once per chunk (whole-image filters are read from the store)."""
        return self.patches[sl] if self.reading == "patch" else image_filters(self.store, self.idx[sl], self.prep)

    def responses(self, x_std: np.ndarray, sl: slice, bank: np.ndarray | None = None) -> np.ndarray:
        """(B, K_sl) responses of filters ``sl`` (their ``bank`` if already made) on prepared images."""
        bank = self.bank(sl) if bank is None else bank
        if self.reading == "patch":
            return filter_responses(x_std, bank, self.pos[sl])
        return image_responses(x_std, bank)

    def describe(self, j: int) -> dict[str, Any]:
        if self.reading == "patch":
            return {"size": int(self.size), "position": [int(v) for v in self.pos[j]]}
        H, W = self.store.shape[:2]
        return {"size": [int(H), int(W)], "training_image": int(self.idx[j])}


def linear_filter_baseline(ts: Any, filters: LinearFilters, w: World, batch: int = 256, n: int = N_THRESHOLDS,
                           progress: Callable[[int], None] | None = None, seed: int = 0) -> dict[str, Any]:
    """Best filter under the protocol, with its AUC, and held out like the best neuron (filter and
    threshold chosen on one stratified half, measured on the other, both ways). Filter chunks are
    shared out over ranks and their scores gathered."""
    K = filters.k
    y = np.asarray(ts.y, bool)
    A, B = stratified_halves(y, seed)
    chunks = list(range(0, K, FILTER_CHUNK))
    prep = filters.prep
    xs = None
    if len(ts) * int(np.prod(ts.shape)) * 4 <= (512 << 20):  # small test sets: prepare once
        xs = [np.asarray(prep(ts.images(range(lo, min(len(ts), lo + batch)))), np.float32)
              for lo in range(0, len(ts), batch)]

    def std_batches():
        for bi, lo in enumerate(range(0, len(ts), batch)):
            yield xs[bi] if xs is not None else np.asarray(prep(ts.images(range(lo, min(len(ts), lo + batch)))), np.float32)

    def column(j: int) -> np.ndarray:
        sl = slice(j, j + 1)
        bank = filters.bank(sl)
        return np.concatenate([filters.responses(x, sl, bank)[:, 0] for x in std_batches()])

    mine: dict[int, tuple[Scores, Scores, Scores]] = {}
    for ci, c0 in enumerate(chunks):
        if ci % w.size != w.rank:
            continue
        sl = slice(c0, min(K, c0 + FILTER_CHUNK))
        bank = filters.bank(sl)
        resp = np.concatenate([filters.responses(x, sl, bank) for x in std_batches()])
        mine[ci] = (threshold_scores(resp, y, n), threshold_scores(resp[A], y[A], n), threshold_scores(resp[B], y[B], n))
        if progress is not None:
            progress(sl.stop - sl.start)
    allp: dict[int, tuple[Scores, Scores, Scores]] = {}
    for d in w.allgather(mine):
        allp.update(d)
    whole, on_a, on_b = (Scores.concat([allp[ci][k] for ci in range(len(chunks))]) for k in range(3))
    best = whole.best()
    best.update({"filters": K, "reading": filters.reading, "auc": auc(column(best["index"]), y),
                 **filters.describe(best["index"])})

    def choose(sel: np.ndarray) -> tuple[dict[str, Any], Any]:
        b = (on_a if np.array_equal(sel, A) else on_b).best()  # the same halves as held_out_split draws
        col = column(b["index"])
        return b, lambda ev: (accuracy_at(col[ev], y[ev], b["threshold"]), auc(col[ev], y[ev]))

    ho = held_out_split(y, seed, choose)
    best["held_out"], best["held_out_auc"] = ho["accuracy"], ho["auc"]
    return best


# ---------------------------------------------------------------------------------------------
# One-layer network baseline
# ---------------------------------------------------------------------------------------------
def one_layer_config(cfg: NetworkConfig, steps: int) -> NetworkConfig:
    """The config's first stage alone, trained greedily for ``steps`` steps, no fine-tuning."""
    return replace(cfg, name=f"{cfg.name}-one-layer", stages=cfg.stages[:1],
                   train=replace(cfg.train, layer_steps=steps, finetune_steps=0))


def _finished_on(run: Path, cfg1: NetworkConfig, fingerprint: str) -> bool:
    """A finished one-layer run of this config on the store with this fingerprint?"""
    try:
        done = json.loads((run / "train.json").read_text()).get("finished") is True
        same = json.loads((run / "config.json").read_text()) == cfg1.as_json()
        data = json.loads((run / "data.json").read_text()).get("fingerprint") == fingerprint
        return done and same and data and (run / "checkpoints" / "latest.json").exists()
    except (OSError, ValueError, AttributeError):
        return False


def one_layer_network(session: Any, cfg1: NetworkConfig, store: Any, out: Path, console: Any = None,
                      reuse_from: tuple[Path, ...] = ()) -> tuple[Network, bool, Path]:
    """The one-stage network trained on ``store``: reused from ``reuse_from`` or ``out/one-layer`` when
    one of them holds it finished on the same store, else trained into ``out/one-layer``.
    Returns (network, reused?, its run folder)."""

    w = session.w
    fp = store.fingerprint()
    run = Path(out) / "one-layer"
    found = None
    if w.is_root:
        found = next((str(r) for r in (*reuse_from, run) if _finished_on(r, cfg1, fp)), None)
    found = w.bcast(found)
    trained = found is None
    if trained:
        if w.is_root:
            run.mkdir(parents=True, exist_ok=True)
            for stale in ("checkpoints", "train-log.jsonl", "train.json", "data.json"):
                p = run / stale  # another config's, another store's or an unfinished run: start over
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        w.barrier()
        train(Session(w, session.backend, run), cfg1, store, console=console, keep=1)
        found = str(run)
    net, _ = load_checkpoint(Path(found) / "checkpoints", cfg1, session.xp, w)
    return net, not trained, Path(found)
