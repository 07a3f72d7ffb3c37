"""The best-neuron test of Le et al. (2012) on a network, its Table 1 baselines, and what to trust.

One file because it is one step: the distributed reductions and the reports serve only this
orchestration (the protocol's maths is in scoring.py, the baselines in baselines.py).

Protocol (Le et al., section 4.2; :mod:`repro.experiments.scoring`): for every neuron 20 thresholds
between its min and max activation on the test set, "positive" when the activation reaches the
threshold, its best accuracy; the best neuron is the best of all (``best_neuron.accuracy``). The
paper chooses neuron and threshold on the test set itself, which flatters every row alike; so we
also report

* **held out**: neuron and threshold chosen on one stratified half, accuracy and AUC measured on
  the other, both ways, the mean (``held_out``);
* **AUC** of every chosen neuron or filter (``best_neuron.auc``, ``baselines.<name>.auc``):
  threshold-free, so comparable across test sets with other class ratios;
* **transfer** (``--neuron-from``): a neuron and threshold chosen on one test set, applied unchanged
  to another (``transfer``): what a detector built from this network would really score.

"Neurons" are the L2 pooling units of a stage by default (``sublayer="pool"``); ``filter``
(linear responses) and ``lcn`` can be asked for. Neuron j is the flat index of (map, row, col) of
that sublayer's grid, as :func:`repro.model.network.compute_features` defines it.

Baselines (:mod:`repro.experiments.baselines`), all on the same test set with the same rule:
guessing (the majority class), the same config with random weights (its best neuron, same
sublayer), the best of K linear filters in both readings of the paper (receptive-field patches at
their position; whole training images), and the pooling units of a one-stage network trained the
same way on the run's own training data.

Distributed: model parallelism holds for evaluation too. Each rank keeps only its own tile's
neurons (:func:`rank_features`: an (N, J_local) matrix and the neurons' global flat indices) and
scores them; the ranks then agree on the best neuron (:func:`distributed_best`: the highest correct
count, ties to the lowest *global* index, exactly the serial rule). Held out: the neuron and
threshold are chosen on half A across ranks, the owner measures them on half B and broadcasts. The
best column is sent from its owner to rank 0 (histogram, AUC). Per-neuron numbers do not depend on
which other columns a rank holds, so every rank count gives the serial answer bit for bit.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from repro import atomic, report
from repro.data.leak import warn_leak
from repro.engine.comm import World
from repro.errors import ReproError
from repro.experiments.baselines import (FILTER_CHUNK, READINGS, LinearFilters,  # noqa: F401 (re-exported)
                                         filter_responses, image_responses, linear_filter_baseline,
                                         one_layer_config, one_layer_network, sample_patches)
from repro.experiments.scoring import (N_THRESHOLDS, Scores, accuracy_at, auc, balanced_subsample,  # noqa: F401
                                       best_neuron, guessing, held_out, held_out_split, stratified_halves,
                                       threshold_scores, thresholds)
from repro.experiments.testset import TestSet, as_float  # noqa: F401 (re-exported)
from repro.model.config import NetworkConfig
from repro.model.network import Network, compute_features, local_features, neuron_features, preprocess

SUBLAYERS = ("filter", "pool", "lcn")
FORMATS = ("png", "pdf", "svg")


def unit_of(cfg: NetworkConfig, stage: int, sublayer: str, index: int) -> list[int]:
    """Flat neuron index -> [map, row, col] of the sublayer's grid."""
    h, w = cfg.stage_shapes()[stage][sublayer]
    return [int(v) for v in np.unravel_index(index, (cfg.stages[stage].maps, h, w))]


# ---------------------------------------------------------------------------------------------
# Test sets and features
# ---------------------------------------------------------------------------------------------
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

        def measure(ev: np.ndarray) -> tuple[float, float]:
            got = (accuracy_at(F[ev, k], y[ev], b["threshold"]), auc(F[ev, k], y[ev])) if w.rank == owner else None
            return w.bcast(got, root=owner)
        return b, measure

    return held_out_split(y, seed, choose)


def column_to_root(w: World, F: np.ndarray, owner: int, column: int) -> np.ndarray | None:
    """One neuron's (N,) activations, sent from its owner to rank 0 (None elsewhere)."""
    if owner == 0:
        return np.ascontiguousarray(F[:, column]) if w.is_root else None
    if w.rank == owner:
        w.comm.send(np.ascontiguousarray(F[:, column]), dest=0, tag=7301)
        return None
    return w.comm.recv(source=owner, tag=7301) if w.is_root else None




def column_auc(w: World, F: np.ndarray, owner: int, column: int, y: np.ndarray) -> tuple[float, np.ndarray | None]:
    """AUC of one neuron's column (the same on every rank) and the column itself on rank 0."""
    col = column_to_root(w, F, owner, column)
    return w.bcast(auc(col, y) if w.is_root else None), col


# ---------------------------------------------------------------------------------------------
# Transfer: a neuron and threshold chosen elsewhere
# ---------------------------------------------------------------------------------------------
def read_neuron(source: str | Path, concept: str, cfg: NetworkConfig) -> dict[str, Any]:
    """``best_neuron`` (layer, sublayer, index, threshold) of an evaluation JSON or a run folder's
    ``evaluate-<concept>.json``, checked against this network's shapes (one line otherwise)."""
    p = Path(source)
    path = p / f"evaluate-{concept}.json" if p.is_dir() else p
    try:
        ev = json.loads(path.read_text())
        b = ev["best_neuron"]
        n = {"layer": int(b["layer"]), "sublayer": str(b["sublayer"]), "index": int(b["index"]),
             "threshold": float(b["threshold"])}
    except FileNotFoundError:
        raise ReproError(f"{path}: no such evaluation (run `repro evaluate` there first)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReproError(f"{path}: not a repro evaluation ({e.__class__.__name__}: {e})") from None
    made = ev.get("config", {})
    mine = cfg.as_json()
    if not isinstance(made, dict) or (made.get("stages"), made.get("input_size"), made.get("channels")) != (
            mine["stages"], mine["input_size"], mine["channels"]):
        raise ReproError(f"{path}: its neuron belongs to a network of another shape (config "
                         f"{made.get('name') if isinstance(made, dict) else '?'!r}, this one {cfg.name!r})")
    if n["sublayer"] not in SUBLAYERS or not 0 <= n["layer"] < len(cfg.stages):
        raise ReproError(f"{path}: best_neuron layer/sublayer {n['layer']}/{n['sublayer']} do not exist here")
    h, wd = cfg.stage_shapes()[n["layer"]][n["sublayer"]]
    if not 0 <= n["index"] < cfg.stages[n["layer"]].maps * h * wd:
        raise ReproError(f"{path}: best_neuron index {n['index']} is outside its sublayer")
    n["source"] = str(path)
    n["chosen_on"] = ev.get("test_set", {})
    return n


def transfer_score(net: Network, ts: TestSet, neuron: dict[str, Any], batch: int = 256) -> dict[str, Any]:
    """Accuracy of the neuron at its own threshold, and its AUC, on this test set (collective)."""
    acts = np.concatenate([neuron_features(net, ts.images(range(lo, min(len(ts), lo + batch))), neuron["layer"],
                                           neuron["sublayer"], neuron["index"], batch)
                           for lo in range(0, len(ts), batch)])
    return {"neuron": {k: neuron[k] for k in ("layer", "sublayer", "index")},
            "unit": unit_of(net.cfg, neuron["layer"], neuron["sublayer"], neuron["index"]),
            "threshold": neuron["threshold"], "accuracy": accuracy_at(acts, ts.y, neuron["threshold"]),
            "auc": auc(acts, ts.y), "source": neuron["source"], "chosen_on": neuron["chosen_on"]}


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
    linear_readings: tuple[str, ...] = READINGS
    one_layer_steps: int | None = None  # None: the run's train.layer_steps
    histogram_bins: int = 30
    neuron_from: str | None = None  # an evaluation JSON or run folder whose best neuron is applied here
    dpi: int = 150
    formats: tuple[str, ...] = ("png",)


def _false_alarms(acts: np.ndarray | None, y: np.ndarray, flags: np.ndarray | None, t: float) -> dict[str, Any] | None:
    """How the chosen neuron treats the flagged face-like distractors (None without flags)."""
    if flags is None or acts is None:
        return None
    sel = flags & ~y
    return {"count": int(sel.sum()), "called_positive": float(np.mean(acts[sel] >= t)) if sel.any() else None}


def evaluate(session: Any, net: Network, checkpoint: Path, step: int, ts: TestSet, train_store: Any,
             opt: EvalOptions, console: Any = None, out: Path | None = None) -> dict[str, Any]:
    """Run the protocol and every baseline; rank 0 writes JSON, Markdown and the histogram into ``out``
    (default: the run folder), which also receives the one-layer baseline's run."""

    t0 = time.perf_counter()
    w, cfg = session.w, net.cfg
    ts.check(cfg)
    if w.is_root:  # test images that are also training images flatter every score: say so
        warn_leak(ts.stores, train_store, console)
    y = ts.y
    out = Path(out) if out is not None else session.run
    transfer_neuron = read_neuron(opt.neuron_from, opt.concept, cfg) if opt.neuron_from else None
    flags = ts.face_like()
    n_tasks = 3 + len(opt.linear_readings) + (transfer_neuron is not None)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not w.is_root or console is None)
    with progress:
        task = progress.add_task("features: trained network", total=n_tasks)
        LF = rank_features(net, ts, opt.stage, opt.sublayer, opt.batch)
        best, owner, col = distributed_best(w, LF.F, LF.index, y)
        ho = distributed_held_out(w, LF.F, LF.index, y, opt.seed)
        best["auc"], best_acts = column_auc(w, LF.F, owner, col, y)
        n_neurons = LF.total
        del LF
        progress.update(task, advance=1, description="features: random network")

        rnet = Network.create(cfg, seed=opt.seed, xp=session.xp, w=w)
        RF = rank_features(rnet, ts, opt.stage, opt.sublayer, opt.batch)
        rbest, rowner, rcol = distributed_best(w, RF.F, RF.index, y)
        rbest["auc"] = column_auc(w, RF.F, rowner, rcol, y)[0]
        rho = distributed_held_out(w, RF.F, RF.index, y, opt.seed)
        rbest["held_out"], rbest["held_out_auc"] = rho["accuracy"], rho["auc"]  # the fair comparison with held_out
        del RF, rnet
        progress.update(task, advance=1, description="one-layer network")

        steps = cfg.train.layer_steps if opt.one_layer_steps is None else opt.one_layer_steps
        cfg1 = one_layer_config(cfg, steps)
        onet, reused, orun = one_layer_network(session, cfg1, train_store, out, console=console,
                                               reuse_from=(session.run / "one-layer",))
        OF = rank_features(onet, ts, 0, "pool", opt.batch)
        obest, oowner, ocol = distributed_best(w, OF.F, OF.index, y)
        obest["auc"] = column_auc(w, OF.F, oowner, ocol, y)[0]
        oho = distributed_held_out(w, OF.F, OF.index, y, opt.seed)
        obest["held_out"], obest["held_out_auc"] = oho["accuracy"], oho["auc"]
        del OF, onet

        linear = {}
        for reading in opt.linear_readings:
            progress.update(task, advance=1, description=f"linear filters, {reading} reading ({opt.linear_filters})")
            lf = LinearFilters(reading, train_store, opt.linear_filters, cfg.stages[0].filter, opt.seed,
                               prep=lambda x: preprocess(x, cfg))
            linear[reading] = linear_filter_baseline(ts, lf, w, opt.batch, seed=opt.seed)
        transfer = None
        if transfer_neuron is not None:
            progress.update(task, advance=1, description="transferred neuron")
            transfer = transfer_score(net, ts, transfer_neuron, opt.batch)
        progress.update(task, advance=1, description="done")


    best.update({"layer": opt.stage, "sublayer": opt.sublayer, "unit": unit_of(cfg, opt.stage, opt.sublayer,
                                                                               best["index"]),
                 "neurons": int(n_neurons)})
    rbest.update({"layer": opt.stage, "sublayer": opt.sublayer, "seed": opt.seed})
    obest.update({"layer": 0, "sublayer": "pool", "steps": steps, "run": str(orun), "reused": reused,
                  "unit": unit_of(cfg1, 0, "pool", obest["index"])})
    baselines: dict[str, Any] = {"guessing": guessing(y), "random_network": rbest, "one_layer": obest}
    for reading, lf in linear.items():
        baselines["linear_filter" if reading == "patch" else f"linear_filter_{reading}"] = lf
    result = {
        "concept": opt.concept,
        "test_set": ts.describe(),
        "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
        "protocol": {"thresholds": N_THRESHOLDS, "rule": "activation >= threshold -> positive",
                     "threshold_grid": "linspace(min, max, 20) of each neuron on the test set",
                     "selection": "on the test set (as Le et al.); see held_out for a split, transfer for another set"},
        "best_neuron": best,
        "baselines": baselines,
        "held_out": ho,
        "paper": report.paper_numbers(opt.concept),
        "config": cfg.to_dict(),
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(step),
        "training_data": {"store": str(train_store.path), "fingerprint": train_store.fingerprint()},
        "ranks": w.size, "device": session.backend.name, "seed": opt.seed,
    }
    if transfer is not None:
        result["transfer"] = transfer
    if w.is_root:
        fa = _false_alarms(best_acts, y, flags, best["threshold"])
        if fa is not None:
            best["face_like_distractors"] = fa
    result["best_neuron"] = w.bcast(best)
    result["seconds"] = time.perf_counter() - t0
    if w.is_root:
        out.mkdir(parents=True, exist_ok=True)
        write_reports(out, result, best_acts, y, opt)
    return result


def summary_rows(r: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None, float | None]]:
    """(row, ours, our AUC, Le et al. %, Coates et al. %) for the report table."""
    le, co = r["paper"]["le2012"], r["paper"]["coates2013"]
    b = r["baselines"]
    bn = r["best_neuron"]
    rows = [
        ("guessing (all negative)", b["guessing"], 0.5, le.get("guessing"), None),
        ("random network (same config)", b["random_network"]["accuracy"], b["random_network"].get("auc"), None,
         co.get("random_network")),
    ]
    for key, what in (("linear_filter", "patches at their position"), ("linear_filter_image", "whole training images")):
        if key in b:
            lf = b[key]
            rows.append((f"best linear filter, {what} (of {lf['filters']:,}; paper: 100,000)", lf["accuracy"],
                         lf.get("auc"), le.get("linear_filter"), None))
    rows += [
        ("best neuron of a one-layer network", b["one_layer"]["accuracy"], b["one_layer"].get("auc"),
         le.get("one_layer"), None),
        (f"best neuron (layer {bn['layer']}, {bn['sublayer']})", bn["accuracy"], bn.get("auc"),
         le.get("best_neuron"), co.get("best_neuron")),
        ("best neuron, held out (chosen on one half, measured on the other)", r["held_out"]["accuracy"],
         r["held_out"].get("auc"), None, None),
        ("random network, held out (the same split)", b["random_network"].get("held_out"),
         b["random_network"].get("held_out_auc"), None, None),
        ("one-layer network, held out (the same split)", b["one_layer"].get("held_out"),
         b["one_layer"].get("held_out_auc"), None, None),
    ]
    for key, what in (("linear_filter", "patches"), ("linear_filter_image", "whole images")):
        if key in b and "held_out" in b[key]:
            rows.append((f"best linear filter ({what}), held out (the same split)", b[key]["held_out"],
                         b[key].get("held_out_auc"), None, None))
    if "transfer" in r:
        t = r["transfer"]
        where = ", ".join(t["chosen_on"].get("names", [])) or Path(t["source"]).name
        split = t["chosen_on"].get("split")
        rows.append((f"neuron {t['neuron']['index']} and threshold chosen on {where}" + (f" ({split})" if split else ""),
                     t["accuracy"], t["auc"], None, None))
    return rows


def describe_test_set(r: dict[str, Any]) -> str:
    t = r["test_set"]
    return (f"{' + '.join(t['names'])} ({t.get('split', 'test')}): {r['n_positive']:,} positives, "
            f"{r['n_negative']:,} negatives, {'x'.join(map(str, t.get('shape', [])))} images")


def write_reports(out: Path, r: dict[str, Any], best_acts: np.ndarray, y: np.ndarray, opt: EvalOptions) -> None:
    """Rank 0: ``evaluate-<concept>.json``, ``evaluate-<concept>.md``, ``histogram-<concept>.<format>``."""

    c = r["concept"]
    sub = balanced_subsample(y, opt.seed)
    b = r["best_neuron"]
    figs = []
    for fmt in opt.formats:
        path = out / f"histogram-{c}.{fmt}"
        report.histogram_png(path, best_acts[sub][y[sub]], best_acts[sub][~y[sub]],
                             f"{c}: best neuron {100 * b['accuracy']:.1f}% (AUC {b['auc']:.3f}), layer {b['layer']} "
                             f"{b['sublayer']} unit {b['unit']}\n{describe_test_set(r)}; 1:1 subsample shown",
                             threshold=b["threshold"], bins=opt.histogram_bins, dpi=opt.dpi,
                             labels=("faces" if c == "faces" else "positives", "distractors"))
        figs.append(path.name)
    r["histogram"] = {"files": figs, "path": figs[0], "per_class": int(len(sub) // 2), "seed": opt.seed,
                      "bins": opt.histogram_bins}
    rows = [(name, report.pct(ours), None if a is None else f"{a:.3f}", report.paper_pct(le), report.paper_pct(co))
            for name, ours, a, le, co in summary_rows(r)]
    fa = b.get("face_like_distractors")
    md = [f"# Evaluation: {c}\n",
          f"Checkpoint `{r['checkpoint']}` (step {r['checkpoint_step']}), config `{r['config']['name']}`, trained on "
          f"`{r['training_data']['store']}`. Test set: {describe_test_set(r)}; guessing "
          f"{100 * r['baselines']['guessing']:.1f}%. {r['ranks']} rank(s), {r['device']}.\n",
          report.markdown_table(["", "ours", "AUC", "paper (Le et al. 2012)", "Coates et al. 2013"], rows),
          "Protocol: for every neuron, 20 thresholds equally spaced between its min and max activation on "
          "the test set; 'activation >= threshold' means positive; best accuracy per neuron; best over "
          "neurons (chosen on the test set, as in the paper). AUC: of the chosen neuron or filter, "
          "threshold-free. Held out: neuron and threshold chosen on one stratified half, accuracy and AUC on "
          "the other, mean of both directions. Linear filters (the paper does not give their size): patches "
          f"of {r['baselines'].get('linear_filter', {}).get('size', '?')} pixels from random positions of random "
          "training images applied at the same position, and whole training images; zero mean, unit norm, on "
          "the standardised test image. The paper's own test set is "
          f"{report.PAPER_TEST_SETS.get(c, 'not ours')}; guessing differs with the class ratio, AUC does not.\n"]
    if fa is not None:
        md.append(f"Face-like distractors (animal faces, drawings, masks): {fa['count']}; the best neuron calls "
                  f"{100 * fa['called_positive']:.0f}% of them faces.\n")
    md.append(f"![histogram]({figs[0]})\n")
    report.write_text_atomic(out / f"evaluate-{c}.md", "\n".join(md))
    atomic.write_json(out / f"evaluate-{c}.json", r)
