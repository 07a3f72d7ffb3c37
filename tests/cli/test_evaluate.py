"""``repro evaluate``: the 20-threshold protocol against a slow loop, the baselines' pieces, the
whole command on a tiny run (1 rank and 2 ranks give the same numbers), and one-line bad-input errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from repro.experiments import evaluate as ev
from repro.model.network import standardize
from repro.engine.comm import world

from support.cli import invoke, one_line_error, train_tiny_run
from support.mpi import run_mpi


# ---------------------------------------------------------------- pure functions vs slow loops
def slow_best(F: np.ndarray, y: np.ndarray, n: int = 20) -> tuple[int, float, float]:
    """The paper's protocol written as plainly as possible."""
    best = (-1, -1.0, 0.0)
    for j in range(F.shape[1]):
        a = F[:, j]
        for t in np.linspace(float(a.min()), float(a.max()), n):
            acc = float(np.mean((a >= t) == y))
            if acc > best[1]:
                best = (j, acc, float(t))
    return best


def test_threshold_protocol_matches_loop() -> None:
    rng = np.random.default_rng(3)
    N, J = 61, 17
    y = rng.random(N) < 0.35
    F = rng.standard_normal((N, J)).astype(np.float32)
    F[:, 4] += 2.5 * y  # a good neuron
    F[:, 9] = 1.0  # a dead neuron (min == max)
    F[:, 11] = np.round(F[:, 11])  # many ties
    s = ev.threshold_scores(F, y, max_bytes=N * 20 * 3)  # several column chunks
    for j in range(J):
        jj, acc, t = slow_best(F[:, j:j + 1], y)
        assert s.accuracy[j] == pytest.approx(acc)
        assert s.threshold[j] == pytest.approx(t, rel=1e-6, abs=1e-6)
    j, acc, t = slow_best(F, y)
    b = ev.best_neuron(F, y)
    assert (b["index"], b["accuracy"]) == (j, pytest.approx(acc))
    assert b["index"] == 4 and b["threshold"] == pytest.approx(t)
    assert s.accuracy[9] == pytest.approx(y.mean())  # dead neuron: "always yes"
    assert b["min"] == pytest.approx(F[:, 4].min()) and b["max"] == pytest.approx(F[:, 4].max())


def test_ties_pick_lowest_index_and_guessing() -> None:
    y = np.array([1, 0, 0, 1, 0], bool)
    F = np.tile(y[:, None].astype(np.float32), (1, 3))
    assert ev.best_neuron(F, y)["index"] == 0
    assert ev.best_neuron(F, y)["accuracy"] == 1.0
    assert ev.guessing(y) == pytest.approx(0.6)


def test_held_out_halves_and_subsample() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(101) < 0.3
    A, B = ev.stratified_halves(y, seed=5)
    assert len(np.intersect1d(A, B)) == 0 and len(A) + len(B) == len(y)
    assert abs(int(y[A].sum()) - int(y[B].sum())) <= 1
    F = rng.standard_normal((101, 6)).astype(np.float32) + 1.5 * y[:, None] * (np.arange(6) == 2)
    h = ev.held_out(F, y, seed=5)
    b = ev.best_neuron(F[A], y[A])
    assert h["a_to_b"]["index"] == b["index"]
    assert h["a_to_b"]["accuracy"] == pytest.approx(np.mean((F[B, b["index"]] >= b["threshold"]) == y[B]))
    assert h["accuracy"] == pytest.approx((h["a_to_b"]["accuracy"] + h["b_to_a"]["accuracy"]) / 2)
    sub = ev.balanced_subsample(y, seed=1)
    assert int(y[sub].sum()) == int((~y[sub]).sum()) == int(y.sum())


def test_filter_responses_match_loop() -> None:
    rng = np.random.default_rng(1)
    x = standardize(rng.random((4, 2, 9, 8)).astype(np.float32))
    P = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    pos = np.array([[0, 0], [6, 5], [2, 3], [4, 1], [6, 0]])
    got = ev.filter_responses(x, P, pos)
    for k, (r, c) in enumerate(pos):
        want = (x[:, :, r:r + 3, c:c + 3] * P[k]).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-5)


def slow_auc(a: np.ndarray, y: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos, neg = a[y], a[~y]
    return float(np.mean([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos]))


def test_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(4)
    for n, ties in ((40, False), (57, True), (9, True)):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        a = rng.standard_normal(n) + y
        if ties:
            a = np.round(a)
        assert ev.auc(a, y) == pytest.approx(slow_auc(a, y))
    y = np.array([0, 0, 1, 1], bool)
    assert ev.auc(np.array([1.0, 2, 3, 4]), y) == 1.0 and ev.auc(np.array([4.0, 3, 2, 1]), y) == 0.0
    assert ev.auc(np.ones(4), y) == 0.5
    with pytest.raises(ValueError):
        ev.auc(np.ones(3), np.ones(3, bool))


def test_held_out_reports_auc_of_the_chosen_neuron() -> None:
    rng = np.random.default_rng(6)
    y = rng.random(80) < 0.4
    F = rng.standard_normal((80, 5)).astype(np.float32) + 1.2 * y[:, None] * (np.arange(5) == 3)
    h = ev.held_out(F, y, seed=2)
    A, B = ev.stratified_halves(y, 2)
    j = h["a_to_b"]["index"]
    assert h["a_to_b"]["auc"] == pytest.approx(slow_auc(F[B, j], y[B]))
    assert h["auc"] == pytest.approx((h["a_to_b"]["auc"] + h["b_to_a"]["auc"]) / 2)


class _Store:
    """A stand-in training store of uint8 images (what the linear filters sample from)."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.shape = x.shape[1:]

    def __len__(self) -> int:
        return len(self.x)

    def images(self, idx):
        return self.x[np.asarray(idx, np.int64)]


def test_both_linear_filter_readings_match_a_slow_search() -> None:
    """Patch reading: a f x f patch at its own position; image reading: a whole training image."""
    from repro.engine.comm import world

    rng = np.random.default_rng(7)
    train = _Store(rng.integers(0, 256, (50, 12, 12), dtype=np.uint8))
    tx = rng.integers(0, 256, (40, 12, 12), dtype=np.uint8)
    y = rng.random(40) < 0.4
    y[:2] = [True, False]

    class TS:
        shape = (12, 12)

        def __init__(self):
            self.y = y

        def __len__(self):
            return 40

        def images(self, idx):
            return ev.as_float(tx[np.asarray(list(idx))])

    xs = standardize(ev.as_float(tx))
    for reading in ("patch", "image"):
        lf = ev.LinearFilters(reading, train, 30, 5, seed=3)
        got = ev.linear_filter_baseline(TS(), lf, world(), batch=16)
        best = (-1.0, -1)
        resps = []
        for k in range(30):
            if reading == "patch":
                (r, c), P = lf.pos[k], lf.patches[k]
                resp = (xs[:, :, r:r + 5, c:c + 5] * P).sum(axis=(1, 2, 3))
            else:
                f = ev.as_float(train.x[lf.idx[k]:lf.idx[k] + 1])[0]
                f = f - f.mean()
                f = f / np.sqrt((f.astype(np.float64) ** 2).sum())
                resp = (xs * f).sum(axis=(1, 2, 3))
            resps.append(resp)
            acc = slow_best(resp[:, None], y)[1]
            if acc > best[0]:
                best = (acc, k, resp)
        assert got["index"] == best[1] and got["accuracy"] == pytest.approx(best[0]), reading
        assert got["auc"] == pytest.approx(slow_auc(best[2], y), abs=1e-6), reading
        assert got["reading"] == reading and got["filters"] == 30
        # held out: chosen on one half by the protocol, measured on the other
        A, B = ev.stratified_halves(y, 0)
        accs = []
        for sel, other in ((A, B), (B, A)):
            pick = (-1.0, -1, 0.0)
            for k in range(30):
                j, acc, t = slow_best(resps[k][sel][:, None], y[sel])
                if acc > pick[0]:
                    pick = (acc, k, t)
            accs.append(np.mean((resps[pick[1]][other] >= pick[2]) == y[other]))
        assert got["held_out"] == pytest.approx(np.mean(accs)), reading
    assert len(set(ev.LinearFilters("image", train, 30, 5, seed=3).idx)) == 30  # no repeats while enough images


# ---------------------------------------------------------------- the command, end to end
def _obj():
    import types

    return types.SimpleNamespace(device="cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-steps-per-stage mini run and its data root (built once for this module)."""
    return train_tiny_run(tmp_path_factory.mktemp("ev"))


def _eval_args(run: Path, root: Path, *more: str) -> list[str]:
    return ["evaluate", "--concept", "faces", "--checkpoint", str(run), "--root", str(root),
            "--linear-filters", "300", "--one-layer-steps", "3", *more]


KEYS = ["best_neuron.accuracy", "best_neuron.auc", "best_neuron.layer", "best_neuron.index", "baselines.guessing",
        "baselines.random_network.auc", "baselines.linear_filter.auc", "baselines.linear_filter_image.auc",
        "baselines.one_layer.auc", "held_out.accuracy", "held_out.auc", "n_positive", "n_negative",
        "test_set.split", "training_data.fingerprint"]


def _get(d: dict, key: str):
    for k in key.split("."):
        d = d[k]
    return d


def test_evaluate_end_to_end_one_and_two_ranks(tiny_run, tmp_path) -> None:
    run, root = tiny_run
    r = invoke(*_eval_args(run, root))
    assert r.exit_code == 0, r.output
    res = json.loads((run / "evaluate-faces.json").read_text())
    for k in KEYS:
        _get(res, k)
    assert (res["n_positive"], res["n_negative"]) == (100, 200)
    assert res["baselines"]["guessing"] == pytest.approx(200 / 300)
    assert res["best_neuron"]["layer"] == 2 and res["best_neuron"]["sublayer"] == "pool"
    assert res["paper"]["le2012"]["best_neuron"] == 81.7
    assert (run / "evaluate-faces.md").read_text().count("|") > 20
    assert (run / "histogram-faces.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "one-layer" / "train.json").exists() and (run / "one-layer" / "data.json").exists()
    assert "mini (test): 100 positives, 200 negatives" in (run / "evaluate-faces.md").read_text()
    # the best neuron's numbers follow from its features by the protocol
    from repro.model.network import load_checkpoint

    net, _ = load_checkpoint(run, None, np, world())
    ts = ev.TestSet.of(["mini"], [__import__("repro.data.prepare", fromlist=["x"]).require_store("mini", "test", root)])
    F = ev.features(net, ts, 2)
    j, acc, _ = slow_best(F, ts.y)
    assert (res["best_neuron"]["index"], res["best_neuron"]["accuracy"]) == (j, pytest.approx(acc))

    # 2 ranks, reports elsewhere: the same numbers; the one-layer network is reused, not retrained
    out2 = tmp_path / "two"
    run_mpi(2, ["-m", "repro.cli", "--device", "cpu", *_eval_args(run, root, "--out", str(out2))], timeout=120)
    res2 = json.loads((out2 / "evaluate-faces.json").read_text())
    assert res2["ranks"] == 2 and res2["baselines"]["one_layer"]["reused"] is True
    for k in ("best_neuron", "held_out"):
        assert res2[k]["accuracy"] == res[k]["accuracy"]
    assert res2["best_neuron"]["index"] == res["best_neuron"]["index"]
    assert res2["best_neuron"]["threshold"] == pytest.approx(res["best_neuron"]["threshold"], rel=1e-5)
    for k in ("random_network", "linear_filter", "linear_filter_image", "one_layer"):
        assert res2["baselines"][k]["accuracy"] == res["baselines"][k]["accuracy"], k
        assert res2["baselines"][k]["index"] == res["baselines"][k]["index"], k
        assert res2["baselines"][k]["auc"] == pytest.approx(res["baselines"][k]["auc"], abs=1e-12), k
    assert res2["best_neuron"]["auc"] == res["best_neuron"]["auc"] and res2["held_out"] == res["held_out"]


def test_evaluate_three_ranks_equals_serial(tiny_run, tmp_path) -> None:
    """Every rank keeps only its tile's neurons; the reduced answers are the serial ones exactly."""
    run, root = tiny_run
    one = tmp_path / "one"
    r = invoke(*_eval_args(run, root, "--out", str(one)))
    assert r.exit_code == 0, r.output
    res = json.loads((one / "evaluate-faces.json").read_text())
    out3 = tmp_path / "three"
    run_mpi(3, ["-m", "repro.cli", "--device", "cpu", *_eval_args(run, root, "--out", str(out3))], timeout=180)
    res3 = json.loads((out3 / "evaluate-faces.json").read_text())
    assert res3["ranks"] == 3
    assert res3["best_neuron"]["neurons"] == res["best_neuron"]["neurons"] == 8 * 3 * 3
    for k in ("index", "accuracy", "threshold", "min", "max", "unit"):
        assert res3["best_neuron"][k] == res["best_neuron"][k], k
    assert res3["held_out"] == res["held_out"]
    for k in ("random_network", "one_layer"):
        for f in ("index", "accuracy", "threshold"):
            assert res3["baselines"][k][f] == res["baselines"][k][f], (k, f)
    assert res3["baselines"]["random_network"]["held_out"] == res["baselines"]["random_network"]["held_out"]
    assert res3["baselines"]["linear_filter"]["accuracy"] == res["baselines"]["linear_filter"]["accuracy"]
    assert (out3 / "histogram-faces.png").read_bytes() == (one / "histogram-faces.png").read_bytes()


def test_bad_inputs(tiny_run, tmp_path) -> None:
    from repro.data.store import write_store

    run, root = tiny_run
    one_line_error(invoke(*_eval_args(run, root, "--config", "le2012")), "does not match")
    one_line_error(invoke("evaluate", "--concept", "cats", "--checkpoint", str(run), "--root", str(root)),
                    "repro data prepare cat-heads")
    one_line_error(invoke(*_eval_args(tmp_path / "nothing", root)), "no such checkpoint")
    imgs = np.zeros((4, 32, 32), np.uint8)
    write_store(tmp_path / "one", imgs, [{"label": 1, "source": f"x{i}"} for i in range(4)], "one", "test", {})
    one_line_error(invoke(*_eval_args(run, root, "--data", str(tmp_path / "one"))), "no negatives")
    write_store(tmp_path / "unl", imgs, [{"label": -1, "source": f"x{i}"} for i in range(4)], "unl", "test", {})
    one_line_error(invoke(*_eval_args(run, root, "--data", str(tmp_path / "unl"))), "no labeled images")
    write_store(tmp_path / "big", np.zeros((4, 40, 40), np.uint8),
                [{"label": i % 2, "source": f"x{i}"} for i in range(4)], "big", "test", {})
    one_line_error(invoke(*_eval_args(run, root, "--data", str(tmp_path / "big"))), "40x40")
    one_line_error(invoke(*_eval_args(run, root, "--layer", "7")), "--layer 7")
