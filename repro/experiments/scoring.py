"""The best-neuron protocol of Le et al. (2012) as pure functions on a feature matrix.

``F`` is (N images, J neurons), ``y`` (N,) bool with True = positive. For every neuron: 20
thresholds ``linspace(min, max, 20)`` of its activations, "positive" when ``a >= t``, its best
accuracy; the best neuron is the argmax. Ties: the lowest threshold, then the lowest index. Only
this polarity counts (a concept neuron fires *more* on the concept).

Beside the paper's accuracy we report the ROC AUC of a chosen neuron: threshold-free, so it does
not reward a threshold fitted to the test set, and comparable across test sets whose class ratios
differ. Nothing here knows about ranks or networks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from repro.errors import ReproError

N_THRESHOLDS = 20


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


def auc(a: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of "positive when ``a`` is high": the chance that a random positive scores above a
    random negative, ties counting one half (the Mann-Whitney U statistic over P*N)."""
    a = np.asarray(a, np.float64).reshape(-1)
    y = np.asarray(y, bool).reshape(-1)
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        raise ValueError("auc needs at least one positive and one negative")
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = ends - (counts - 1) / 2.0  # average 1-based rank of each distinct value
    ranks = mid[inv]
    return float((ranks[y].sum() - P * (P + 1) / 2.0) / (P * N))


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


Measure = Callable[[np.ndarray], tuple[float, float]]


def held_out_split(y: np.ndarray, seed: int, choose: Callable[[np.ndarray], tuple[dict[str, Any], Measure]]
                   ) -> dict[str, Any]:
    """The held-out split, both ways. ``choose(sel)`` picks neuron and threshold on images ``sel`` and
    returns (its best_neuron dict, ``measure(ev) -> (accuracy, auc)`` on other images)."""
    y = np.asarray(y, dtype=bool)
    A, B = stratified_halves(y, seed)
    out: dict[str, Any] = {"seed": seed, "halves": [int(len(A)), int(len(B))]}
    accs, aucs = [], []
    for name, sel, ev in (("a_to_b", A, B), ("b_to_a", B, A)):
        if len(np.unique(y[sel])) < 2 or len(np.unique(y[ev])) < 2:
            raise ReproError("held-out split: a half of the test set lacks positives or negatives "
                             "(the test set is too small)")
        b, measure = choose(sel)
        acc, area = measure(ev)
        out[name] = {"index": b["index"], "threshold": b["threshold"], "selection_accuracy": b["accuracy"],
                     "accuracy": acc, "auc": area}
        accs.append(acc)
        aucs.append(area)
    out["accuracy"] = float(np.mean(accs))
    out["auc"] = float(np.mean(aucs))
    return out


def held_out(F: np.ndarray, y: np.ndarray, seed: int, n: int = N_THRESHOLDS) -> dict[str, Any]:
    """Choose neuron and threshold on one half, measure accuracy and AUC on the other; both ways; the mean."""
    y = np.asarray(y, dtype=bool)

    def choose(sel: np.ndarray) -> tuple[dict[str, Any], Measure]:
        b = best_neuron(F[sel], y[sel], n)
        col = F[:, b["index"]]
        return b, lambda ev: (accuracy_at(col[ev], y[ev], b["threshold"]), auc(col[ev], y[ev]))

    return held_out_split(y, seed, choose)


def balanced_subsample(y: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices of a 1:1 subsample (all of the smaller class, as many drawn from the larger)."""
    y = np.asarray(y, dtype=bool)
    pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
    m = min(len(pos), len(neg))
    rng = np.random.default_rng([seed, 2])
    return np.sort(np.concatenate([rng.permutation(pos)[:m], rng.permutation(neg)[:m]]))
