"""The best-neuron test of Le et al. (2012), its Table 1 baselines, and a held-out variant.

Protocol (Le et al., section 4.2; what we report as ``best_neuron.accuracy``):
    For every neuron j, with activations a_j (N,) on the labeled test set: 20 thresholds
    ``linspace(min a_j, max a_j, 20)``; predict "positive" when ``a_j >= t``; keep the best accuracy
    over the 20 thresholds. The best neuron is the argmax over neurons. Ties: the lowest threshold,
    then the lowest neuron index. Only this polarity is tried (the paper's rule: a concept neuron
    fires *more* on the concept); a neuron that fires less on faces does not count.

"Neurons" are the L2 pooling units of a stage by default (``sublayer="pool"``): those are the
outputs Le et al. histogram and threshold; ``filter`` (linear responses) and ``lcn`` can be asked for.
Neuron j is the flat index of (map, row, col) of that sublayer's grid, as
:func:`repro.model.network.compute_features` defines it.

Baselines (Table 1), all on the same test set with the same 20-threshold rule:
    guessing         the fraction of the majority class (always say "no").
    random_network   the same config with random weights (``Network.create(cfg, seed)``), same sublayer.
    linear_filter    the best of K linear filters. Filter k is a ``f x f`` patch (``f`` = the first
                     stage's receptive field, all input channels) cut at a random position (y_k, x_k)
                     of a random *training* image (pixels in [0, 1]), made zero-mean and unit-norm.
                     Its response on a test image is the dot product with the test image, standardised
                     as the network standardises its input (per image zero mean, unit std), at the same
                     position (y_k, x_k). Positions, images and filters come from ``seed`` alone.
                     Le et al. sample 100,000; we default to fewer (the command's ``--linear-filters``).
    one_layer        the pooling units of a one-stage network (the config's first stage) trained
                     greedily with the same settings on the same training data.

Held-out: the paper chooses neuron and threshold on the test set itself, so its numbers are
optimistic. We also split the test set into two halves (a seeded permutation within each class),
choose neuron + threshold on one half, measure on the other, both ways; ``held_out.accuracy`` is the
mean of the two directions.

Distributed: model parallelism holds for evaluation too. Each rank keeps only its own tile's
neurons (:func:`rank_features`: an (N, J_local) matrix and the neurons' global flat indices, from
:func:`repro.model.network.local_features`) and scores them with :func:`threshold_scores`; the
ranks then agree on the best neuron (:func:`distributed_best`: the highest correct count, ties to
the lowest *global* index, exactly the serial rule). Held out: the neuron and threshold are chosen
on half A across ranks, the owner measures them on half B and broadcasts the accuracy. The
histogram's column is sent from its owner to rank 0. Per-neuron numbers do not depend on which
other columns a rank holds, so every rank count gives the serial answer bit for bit. Memory per
rank: about ``N * J / P * 4`` bytes of features (plus the same again, briefly, while scoring).
The linear filters are split over ranks in fixed chunks of global filter indices (so every filter
is computed the same way on any rank count) and gathered.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from repro import atomic
from repro.engine.comm import World
from repro.errors import ReproError
from repro.model.config import NetworkConfig
from repro.model.network import Network, compute_features, local_features, standardize

N_THRESHOLDS = 20
SUBLAYERS = ("filter", "pool", "lcn")
FILTER_CHUNK = 256  # linear filters per unit of work (global, so any rank count computes alike)


# ---------------------------------------------------------------------------------------------
# The protocol: pure functions on a feature matrix F (N images, J neurons) and labels y (N,) bool
# ---------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per neuron: correct count and accuracy at its best threshold, that threshold, min and max."""

    correct: np.ndarray  # (J,) int64
    accuracy: np.ndarray  # (J,) float64
    threshold: np.ndarray  # (J,) float64
    lo: np.ndarray  # (J,) min activation
    hi: np.ndarray  # (J,) max activation

    def best(self) -> dict[str, Any]:
        j = int(np.argmax(self.correct))  # first maximum: lowest index wins ties
        return {"index": j, "accuracy": float(self.accuracy[j]), "threshold": float(self.threshold[j]),
                "min": float(self.lo[j]), "max": float(self.hi[j])}

    @staticmethod
    def concat(parts: Sequence["Scores"]) -> "Scores":
        return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("correct", "accuracy", "threshold", "lo", "hi")))


def thresholds(F: np.ndarray, n: int = N_THRESHOLDS) -> np.ndarray:
    """(n, J) float64: ``linspace(min_j, max_j, n)`` per column (the last one is exactly the max)."""
    F = np.asarray(F)
    return np.linspace(F.min(axis=0).astype(np.float64), F.max(axis=0).astype(np.float64), n, axis=0)


def threshold_scores(F: np.ndarray, y: np.ndarray, n: int = N_THRESHOLDS, max_bytes: int = 32 << 20) -> Scores:
    """Every neuron's best accuracy under the rule ``a >= t`` -> positive, over its n thresholds.

    Vectorised over (images, thresholds, neurons) in column chunks of at most ``max_bytes`` of
    booleans. Counts are integers, so ties are exact and the argmax does not depend on round-off
    of the accuracies themselves.
    """
    F = np.asarray(F)
    y = np.asarray(y, dtype=bool)
    N, J = F.shape
    if N == 0 or J == 0:
        raise ValueError("threshold_scores needs at least one image and one neuron")
    T = thresholds(F, n)  # (n, J)
    pos, neg = F[y], F[~y]
    n_neg = len(neg)
    step = max(1, int(max_bytes // max(1, N * n)))
    correct = np.empty(J, np.int64)
    best_t = np.empty(J, np.float64)
    for c0 in range(0, J, step):
        c = slice(c0, min(J, c0 + step))
        tp = (pos[:, None, c] >= T[None, :, c]).sum(axis=0)  # (n, Jc) positives called positive
        fp = (neg[:, None, c] >= T[None, :, c]).sum(axis=0)  # (n, Jc) negatives called positive
        ok = tp + (n_neg - fp)  # (n, Jc) correct decisions per threshold
        k = np.argmax(ok, axis=0)  # lowest threshold among the best
        cols = np.arange(ok.shape[1])
        correct[c] = ok[k, cols]
        best_t[c] = T[k, np.arange(c.start, c.stop)]
    return Scores(correct, correct / N, best_t, T[0].copy(), T[-1].copy())


def best_neuron(F: np.ndarray, y: np.ndarray, n: int = N_THRESHOLDS) -> dict[str, Any]:
    """The protocol's answer: ``{"index", "accuracy", "threshold", "min", "max"}``."""
    return threshold_scores(F, y, n).best()


def accuracy_at(a: np.ndarray, y: np.ndarray, t: float) -> float:
    """Accuracy of the rule ``a >= t`` -> positive."""
    a, y = np.asarray(a), np.asarray(y, dtype=bool)
    return float(np.mean((a >= t) == y))


def guessing(y: np.ndarray) -> float:
    """Always answer the majority class (the paper's "always say no face")."""
    y = np.asarray(y, dtype=bool)
    return float(max(y.mean(), 1.0 - y.mean()))


def stratified_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted index sets, each holding half of every class (the odd one goes to A)."""
    y = np.asarray(y, dtype=bool)
    a, b = [], []
    for cls in (False, True):
        idx = np.nonzero(y == cls)[0]
        perm = idx[np.random.default_rng([seed, int(cls)]).permutation(len(idx))]
        h = (len(idx) + 1) // 2
        a.append(perm[:h])
        b.append(perm[h:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def _held_out(y: np.ndarray, seed: int, choose: Callable[[np.ndarray], tuple[dict[str, Any], Callable]]
              ) -> dict[str, Any]:
    """The held-out split, both ways. ``choose(sel)`` picks neuron and threshold on images ``sel`` and
    returns (its best_neuron dict, ``measure(ev) -> accuracy`` on other images)."""
    y = np.asarray(y, dtype=bool)
    A, B = stratified_halves(y, seed)
    out: dict[str, Any] = {"seed": seed, "halves": [int(len(A)), int(len(B))]}
    accs = []
    for name, sel, ev in (("a_to_b", A, B), ("b_to_a", B, A)):
        if len(np.unique(y[sel])) < 2 or len(ev) == 0:
            raise ReproError("held-out split: a half of the test set lacks positives or negatives "
                             "(the test set is too small)")
        b, measure = choose(sel)
        acc = measure(ev)
        out[name] = {"index": b["index"], "threshold": b["threshold"], "selection_accuracy": b["accuracy"],
                     "accuracy": acc}
        accs.append(acc)
    out["accuracy"] = float(np.mean(accs))
    return out


def held_out(F: np.ndarray, y: np.ndarray, seed: int, n: int = N_THRESHOLDS) -> dict[str, Any]:
    """Choose neuron and threshold on one half, measure on the other; both ways; the mean."""
    y = np.asarray(y, dtype=bool)

    def choose(sel: np.ndarray) -> tuple[dict[str, Any], Callable]:
        b = best_neuron(F[sel], y[sel], n)
        return b, lambda ev: accuracy_at(F[ev, b["index"]], y[ev], b["threshold"])

    return _held_out(y, seed, choose)


def balanced_subsample(y: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices of a 1:1 subsample (all of the smaller class, as many drawn from the larger)."""
    y = np.asarray(y, dtype=bool)
    pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
    m = min(len(pos), len(neg))
    rng = np.random.default_rng([seed, 2])
    return np.sort(np.concatenate([rng.permutation(pos)[:m], rng.permutation(neg)[:m]]))


def unit_of(cfg: NetworkConfig, stage: int, sublayer: str, index: int) -> list[int]:
    """Flat neuron index -> [map, row, col] of the sublayer's grid."""
    h, w = cfg.stage_shapes()[stage][sublayer]
    return [int(v) for v in np.unravel_index(index, (cfg.stages[stage].maps, h, w))]


# ---------------------------------------------------------------------------------------------
# Test sets and features
# ---------------------------------------------------------------------------------------------
def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W[, C]) -> float32 (B, C, H, W) in [0, 1] (as training reads them)."""
    from repro.data.loader import to_float

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

    @classmethod
    def of(cls, names: Sequence[str], stores: Sequence[Any]) -> "TestSet":
        which, local, y, unl = [], [], [], 0
        shapes = {tuple(s.shape) for s in stores}
        if len(shapes) > 1:
            raise ReproError(f"test stores {', '.join(names)} have different image shapes {sorted(shapes)}")
        for k, s in enumerate(stores):
            lab = np.asarray(s.labels)
            keep = np.nonzero((lab == 0) | (lab == 1))[0]
            unl += int(len(lab) - len(keep))
            which.append(np.full(len(keep), k, np.int64))
            local.append(keep)
            y.append(lab[keep] == 1)
        return cls(list(names), list(stores), np.concatenate(which), np.concatenate(local),
                   np.concatenate(y).astype(bool), unl)

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


def features(net: Network, ts: TestSet, stage: int, sublayer: str = "pool", batch: int = 256) -> np.ndarray:
    """(N, J) float32 activations of a sublayer on the whole test set; collective, same on every rank.

    The whole matrix on every rank: for tests and small layers only; :func:`evaluate` uses
    :func:`rank_features` (this rank's neurons only).
    """
    parts = [compute_features(net, ts.images(range(lo, min(len(ts), lo + batch))), stage, sublayer, batch)
             for lo in range(0, len(ts), batch)]
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass
class LocalFeatures:
    """One rank's share of a sublayer's activations on the test set."""

    F: np.ndarray  # (N, J_local) float32, this rank's neurons only
    index: np.ndarray  # (J_local,) int64 global flat (map, row, col) index of each column
    total: int  # J, the neurons over all ranks


def rank_features(net: Network, ts: TestSet, stage: int, sublayer: str = "pool", batch: int = 256) -> LocalFeatures:
    """This rank's columns of :func:`features` (collective; nothing is gathered)."""
    F: np.ndarray | None = None
    idx = np.zeros(0, np.int64)
    for lo in range(0, len(ts), batch):
        hi = min(len(ts), lo + batch)
        part, idx = local_features(net, ts.images(range(lo, hi)), stage, sublayer, batch)
        if F is None:
            F = np.empty((len(ts), part.shape[1]), np.float32)
        F[lo:hi] = part
    if F is None:
        F = np.zeros((0, 0), np.float32)
    total = sum(net.w.allgather(int(len(idx))))
    return LocalFeatures(F, idx, int(total))


def _local_best(F: np.ndarray, index: np.ndarray, y: np.ndarray, n: int) -> tuple | None:
    """(correct, global index, column, accuracy, threshold, min, max) of this rank's best neuron."""
    if F.shape[1] == 0:
        return None
    s = threshold_scores(F, y, n)
    top = s.correct.max()
    cols = np.flatnonzero(s.correct == top)
    k = int(cols[np.argmin(index[cols])])  # lowest global index among this rank's ties
    return (int(top), int(index[k]), k, float(s.accuracy[k]), float(s.threshold[k]), float(s.lo[k]),
            float(s.hi[k]))


def distributed_best(w: World, F: np.ndarray, index: np.ndarray, y: np.ndarray, n: int = N_THRESHOLDS
                     ) -> tuple[dict[str, Any], int, int]:
    """The protocol's answer over every rank's neurons: (``best_neuron``'s dict, owner rank, its column there).

    Each rank scores its own columns; the winner is the highest correct count, ties to the lowest
    global index (the serial rule of :meth:`Scores.best`). Collective; the same answer on every rank.
    """
    win = None
    for rank, c in enumerate(w.allgather(_local_best(F, index, np.asarray(y, bool), n))):
        if c is not None and (win is None or (c[0], -c[1]) > (win[1][0], -win[1][1])):
            win = (rank, c)
    if win is None:
        raise ValueError("distributed_best needs at least one neuron")
    rank, (_, j, k, acc, t, lo, hi) = win
    return {"index": j, "accuracy": acc, "threshold": t, "min": lo, "max": hi}, rank, k


def distributed_held_out(w: World, F: np.ndarray, index: np.ndarray, y: np.ndarray, seed: int,
                         n: int = N_THRESHOLDS) -> dict[str, Any]:
    """:func:`held_out` on rank-local columns: choose on one half across ranks, the owner measures on the other."""
    y = np.asarray(y, dtype=bool)

    def choose(sel: np.ndarray) -> tuple[dict[str, Any], Callable]:
        b, owner, k = distributed_best(w, F[sel], index, y[sel], n)

        def measure(ev: np.ndarray) -> float:
            acc = accuracy_at(F[ev, k], y[ev], b["threshold"]) if w.rank == owner else None
            return w.bcast(acc, root=owner)
        return b, measure

    return _held_out(y, seed, choose)


def column_to_root(w: World, F: np.ndarray, owner: int, column: int) -> np.ndarray | None:
    """One neuron's (N,) activations, sent from its owner to rank 0 (None elsewhere)."""
    if owner == 0:
        return np.ascontiguousarray(F[:, column]) if w.is_root else None
    if w.rank == owner:
        w.comm.send(np.ascontiguousarray(F[:, column]), dest=0, tag=7301)
        return None
    return w.comm.recv(source=owner, tag=7301) if w.is_root else None


# ---------------------------------------------------------------------------------------------
# Linear filter baseline
# ---------------------------------------------------------------------------------------------
def sample_patches(store: Any, k: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K standardised patches (K, C, f, f) float32 and their positions (K, 2) [row, col].

    Image, row and column of every patch come from one seeded generator; each patch is made zero
    mean and unit L2 norm (a flat patch stays all zero: it scores the guessing rate, never more).
    """
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
        for j in np.nonzero((inv >= lo) & (inv < lo + 1024))[0]:
            r, c = pos[j]
            out[j] = x[inv[j] - lo, :, r:r + size, c:c + size]
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    norm = np.sqrt((out.astype(np.float64) ** 2).sum(axis=(1, 2, 3), keepdims=True))
    out /= np.maximum(norm, 1e-8).astype(np.float32)
    return out, pos


def filter_responses(x_std: np.ndarray, patches: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(B, K) dot products of each standardised image with each filter at the filter's position."""
    f = patches.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x_std, (f, f), axis=(2, 3))  # (B, C, H-f+1, W-f+1, f, f)
    w = win[:, :, pos[:, 0], pos[:, 1]]  # (B, C, K, f, f) (a copy: fancy indexing)
    return np.einsum("bckij,kcij->bk", w, patches, optimize=True).astype(np.float32)


def linear_filter_baseline(ts: TestSet, patches: np.ndarray, pos: np.ndarray, w: World, batch: int = 256,
                           n: int = N_THRESHOLDS, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Best filter under the protocol; filter chunks are shared out over ranks and gathered."""
    K = len(patches)
    chunks = list(range(0, K, FILTER_CHUNK))
    mine: dict[int, Scores] = {}
    xs = None
    if len(ts) * int(np.prod(ts.shape)) * 4 <= (512 << 20):  # small test sets: standardise once
        xs = [standardize(ts.images(range(lo, min(len(ts), lo + batch)))) for lo in range(0, len(ts), batch)]
    for ci, c0 in enumerate(chunks):
        if ci % w.size != w.rank:
            continue
        sl = slice(c0, min(K, c0 + FILTER_CHUNK))
        resp = []
        for bi, lo in enumerate(range(0, len(ts), batch)):
            x = xs[bi] if xs is not None else standardize(ts.images(range(lo, min(len(ts), lo + batch))))
            resp.append(filter_responses(x, patches[sl], pos[sl]))
        mine[ci] = threshold_scores(np.concatenate(resp), ts.y, n)
        if progress is not None:
            progress(sl.stop - sl.start)
    allp: dict[int, Scores] = {}
    for d in w.allgather(mine):
        allp.update(d)
    scores = Scores.concat([allp[ci] for ci in range(len(chunks))])
    best = scores.best()
    best.update({"filters": K, "size": int(patches.shape[-1]), "position": [int(v) for v in pos[best["index"]]]})
    return best


# ---------------------------------------------------------------------------------------------
# One-layer network baseline
# ---------------------------------------------------------------------------------------------
def one_layer_config(cfg: NetworkConfig, steps: int) -> NetworkConfig:
    """The config's first stage alone, trained greedily for ``steps`` steps, no fine-tuning."""
    return replace(cfg, name=f"{cfg.name}-one-layer", stages=cfg.stages[:1],
                   train=replace(cfg.train, layer_steps=steps, finetune_steps=0))


def one_layer_network(session: Any, cfg1: NetworkConfig, store: Any, console: Any = None) -> tuple[Network, bool]:
    """Train (or reuse) the one-stage network in ``RUN/one-layer``; returns it and whether it was reused."""
    import json

    from repro.experiments.run import Session
    from repro.experiments.train import train
    from repro.model.network import load_checkpoint

    run = session.run / "one-layer"
    if session.w.is_root:
        run.mkdir(parents=True, exist_ok=True)
    session.w.barrier()
    sub = Session(session.w, session.backend, run)
    reused = False
    if session.w.is_root:
        try:
            done = json.loads((run / "train.json").read_text()).get("finished") is True
            same = json.loads((run / "config.json").read_text()) == json.loads(json.dumps(cfg1.to_dict()))
            reused = done and same and (run / "checkpoints" / "latest.json").exists()
        except (OSError, ValueError):
            reused = False
    reused = session.w.bcast(reused)
    if not reused:
        if session.w.is_root and (run / "checkpoints").exists():
            import shutil

            shutil.rmtree(run / "checkpoints")  # another config's or an unfinished run: start over
            (run / "train-log.jsonl").unlink(missing_ok=True)
        session.w.barrier()
        train(sub, cfg1, store, console=console, keep=1)
    net, _ = load_checkpoint(run / "checkpoints", cfg1, session.xp, session.w)
    return net, reused


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    concept: str
    stage: int
    sublayer: str = "pool"
    seed: int = 0
    batch: int = 256
    linear_filters: int = 10000
    one_layer_steps: int | None = None  # None: the run's train.layer_steps
    histogram_bins: int = 30


def evaluate(session: Any, net: Network, checkpoint: Path, step: int, ts: TestSet, train_store: Any,
             opt: EvalOptions, console: Any = None, out: Path | None = None) -> dict[str, Any]:
    """Run the protocol and every baseline; rank 0 writes JSON, Markdown and the histogram."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    w, cfg = session.w, net.cfg
    ts.check(cfg)
    y = ts.y
    out = Path(out) if out is not None else session.run
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not w.is_root or console is None)
    with progress:
        task = progress.add_task("features: trained network", total=4)
        LF = rank_features(net, ts, opt.stage, opt.sublayer, opt.batch)
        best, owner, col = distributed_best(w, LF.F, LF.index, y)
        ho = distributed_held_out(w, LF.F, LF.index, y, opt.seed)
        best_acts = column_to_root(w, LF.F, owner, col)
        n_neurons = LF.total
        del LF
        progress.update(task, advance=1, description="features: random network")

        rnet = Network.create(cfg, seed=opt.seed, xp=session.xp, w=w)
        RF = rank_features(rnet, ts, opt.stage, opt.sublayer, opt.batch)
        rbest = distributed_best(w, RF.F, RF.index, y)[0]
        # the fair comparison with held_out
        rbest["held_out"] = distributed_held_out(w, RF.F, RF.index, y, opt.seed)["accuracy"]
        del RF
        del rnet
        progress.update(task, advance=1, description="one-layer network")

        steps = cfg.train.layer_steps if opt.one_layer_steps is None else opt.one_layer_steps
        cfg1 = one_layer_config(cfg, steps)
        onet, reused = one_layer_network(session, cfg1, train_store, console=console)
        OF = rank_features(onet, ts, 0, "pool", opt.batch)
        obest = distributed_best(w, OF.F, OF.index, y)[0]
        del OF, onet
        progress.update(task, advance=1, description=f"linear filters ({opt.linear_filters})")

        patches, pos = sample_patches(train_store, opt.linear_filters, cfg.stages[0].filter, opt.seed)
        lf = linear_filter_baseline(ts, patches, pos, w, opt.batch)
        progress.update(task, advance=1, description="done")

    from repro import report

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    best.update({"layer": opt.stage, "sublayer": opt.sublayer, "unit": unit_of(cfg, opt.stage, opt.sublayer,
                                                                               best["index"]),
                 "neurons": int(n_neurons)})
    rbest.update({"layer": opt.stage, "sublayer": opt.sublayer, "seed": opt.seed})
    obest.update({"layer": 0, "sublayer": "pool", "steps": steps, "run": str(session.run / "one-layer"),
                  "reused": reused, "unit": unit_of(cfg1, 0, "pool", obest["index"])})
    result = {
        "concept": opt.concept,
        "test_set": {"stores": [str(s.path) for s in ts.stores], "names": ts.names, "images": len(ts),
                     "unlabeled_left_out": ts.unlabeled},
        "n_positive": n_pos, "n_negative": n_neg,
        "protocol": {"thresholds": N_THRESHOLDS, "rule": "activation >= threshold -> positive",
                     "threshold_grid": "linspace(min, max, 20) of each neuron on the test set",
                     "selection": "on the test set (as Le et al.); see held_out for a split"},
        "best_neuron": best,
        "baselines": {"guessing": guessing(y), "random_network": rbest, "linear_filter": lf, "one_layer": obest},
        "held_out": ho,
        "paper": report.paper_numbers(opt.concept),
        "config": cfg.to_dict(),
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(step),
        "ranks": w.size, "device": session.backend.name, "seed": opt.seed,
        "seconds": time.perf_counter() - t0,
    }
    if w.is_root:
        out.mkdir(parents=True, exist_ok=True)
        write_reports(out, result, best_acts, y, opt.seed, opt.histogram_bins)
    result["seconds"] = time.perf_counter() - t0
    return result


def summary_rows(r: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """(row, ours, Le et al. %, Coates et al. %) for the report table."""
    le, co = r["paper"]["le2012"], r["paper"]["coates2013"]
    b = r["baselines"]
    return [
        ("guessing (all negative)", b["guessing"], le.get("guessing"), None),
        ("random network (same config)", b["random_network"]["accuracy"], None, co.get("random_network")),
        (f"best linear filter (of {b['linear_filter']['filters']:,}; paper: 100,000)", b["linear_filter"]["accuracy"],
         le.get("linear_filter"), None),
        ("best neuron of a one-layer network", b["one_layer"]["accuracy"], le.get("one_layer"), None),
        (f"best neuron (layer {r['best_neuron']['layer']}, {r['best_neuron']['sublayer']})",
         r["best_neuron"]["accuracy"], le.get("best_neuron"), co.get("best_neuron")),
        ("best neuron, held out (chosen on one half, measured on the other)", r["held_out"]["accuracy"], None, None),
        ("random network, held out (the same split)", b["random_network"].get("held_out"), None, None),
    ]


def write_reports(out: Path, r: dict[str, Any], best_acts: np.ndarray, y: np.ndarray, seed: int, bins: int) -> None:
    """Rank 0: ``evaluate-<concept>.json``, ``evaluate-<concept>.md``, ``histogram-<concept>.png``."""
    from repro import report

    c = r["concept"]
    sub = balanced_subsample(y, seed)
    b = r["best_neuron"]
    png = out / f"histogram-{c}.png"
    report.histogram_png(png, best_acts[sub][y[sub]], best_acts[sub][~y[sub]],
                         f"{c}: best neuron {b['index']} (layer {b['layer']} {b['sublayer']}, unit {b['unit']}), "
                         f"1:1 subsample", threshold=b["threshold"], bins=bins)
    r["histogram"] = {"path": png.name, "per_class": int(len(sub) // 2), "seed": seed, "bins": bins}
    rows = [(name, report.pct(ours), report.paper_pct(le), report.paper_pct(co))
            for name, ours, le, co in summary_rows(r)]
    md = [f"# Evaluation: {c}\n",
          f"Checkpoint `{r['checkpoint']}` (step {r['checkpoint_step']}), config `{r['config']['name']}`; "
          f"test set {', '.join(r['test_set']['names'])}: {r['n_positive']} positives, {r['n_negative']} "
          f"negatives (paper: {report.PAPER_TEST_SETS.get(c, '?')}). {r['ranks']} rank(s), {r['device']}.\n",
          report.markdown_table(["", "ours", "paper (Le et al. 2012)", "Coates et al. 2013"], rows),
          "Protocol: for every neuron, 20 thresholds equally spaced between its min and max activation on "
          "the test set; 'activation >= threshold' means positive; best accuracy per neuron; best over "
          "neurons (chosen on the test set, as in the paper). Held out: neuron and threshold chosen on one "
          "stratified half, accuracy on the other, mean of both directions. Linear filters: patches of "
          f"{r['baselines']['linear_filter']['size']}x{r['baselines']['linear_filter']['size']} "
          "pixels from random positions of random training images, zero mean and unit norm, applied at the "
          "same position of the standardised test image. Guessing on our test set differs from the "
          "paper's 64.8% because the class ratio differs.\n",
          f"![histogram]({png.name})\n"]
    report.write_text_atomic(out / f"evaluate-{c}.md", "\n".join(md))
    atomic.write_json(out / f"evaluate-{c}.json", r)
