"""``repro visualize best-neuron`` / ``invariance``: the ascent, the transforms, the commands end to end
(1 rank and 2 ranks give the same numbers) and one-line bad-input errors."""
from __future__ import annotations

import math

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from repro.experiments import invariance as inv
from repro.experiments import visualize as vis
from repro.model.config import load_config
from repro.model.network import Network, standardize
from repro.engine.comm import world

from support.cli import invoke, one_line_error, train_tiny_run
from support.mpi import run_mpi


# ---------------------------------------------------------------- pieces
def test_ascent_beats_best_image_on_unit_sphere() -> None:
    cfg = load_config("mini")
    net = Network.create(cfg, seed=3, xp=np, w=world())
    h, w = cfg.stage_shapes()[1]["pool"]
    neuron = vis.make_neuron(cfg, 1, "pool", 5 * h * w + (h // 2) * w + w // 2)
    assert neuron.unit == (5, h // 2, w // 2)
    rng = np.random.default_rng(0)
    images = rng.random((6, 1, 32, 32)).astype(np.float32)
    acts = vis.neuron_responses(net, images, neuron)
    best = images[int(np.argmax(acts))]
    f_img, _ = vis.activation(net, vis.unit_norm(np.asarray(standardize(best[None]))), neuron)
    out = vis.optimal_stimulus(net, neuron, best, seed=0, iters=15)
    assert np.linalg.norm(out["x"]) == pytest.approx(1.0, abs=1e-5)
    assert out["activation"] >= f_img
    assert out["activation"] >= out["runs"]["random"]["start_activation"]
    f_x, _ = vis.activation(net, out["x"], neuron)
    assert f_x == pytest.approx(out["activation"], rel=1e-5)
    assert out["iterations"] >= 1


def test_top_k_order_and_neuron_checks() -> None:
    a = np.array([1.0, 3.0, 3.0, 0.5, 2.0])
    assert vis.top_k(a, 3).tolist() == [1, 2, 4]
    cfg = load_config("mini")
    from repro.errors import ReproError

    with pytest.raises(ReproError, match="outside"):
        vis.make_neuron(cfg, 2, "pool", 8 * math.prod(cfg.stage_shapes()[2]["pool"]))
    with pytest.raises(ReproError, match="stages 0..2"):
        vis.make_neuron(cfg, 3, "pool", 0)


def test_transforms() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((2, 1, 32, 32)).astype(np.float32)
    ranges = inv.parameter_ranges((32, 32))
    for kind, ident in inv.IDENTITY.items():
        assert np.any(ranges[kind] == ident), kind
        assert np.array_equal(inv.transform(x, kind, ident), x)
    assert ranges["translation_x"].min() == -8 and ranges["translation_x"].max() == 8
    assert ranges["rotation"].min() == -90 and ranges["rotation"].max() == 90
    t = inv.transform(x, "translation_x", 3)
    np.testing.assert_allclose(t[..., :, 3:], x[..., :, :-3], atol=1e-6)
    np.testing.assert_allclose(t[..., :, 0], x[..., :, 0], atol=1e-6)  # border replicated
    t = inv.transform(x, "translation_y", -2)
    np.testing.assert_allclose(t[..., :-2, :], x[..., 2:, :], atol=1e-6)
    r = inv.transform(x, "rotation", 90)
    np.testing.assert_allclose(r[0, 0], np.rot90(x[0, 0]), atol=1e-5)  # counter-clockwise, about the centre
    s = inv.transform(x, "scale", 0.5)
    assert s.shape == x.shape and not np.allclose(s, x)
    assert inv.parameter_ranges((200, 200))["translation_x"].max() == 50
    colour = rng.random((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(inv.transform(colour, "translation_x", 1)[..., 1:], colour[..., :-1], atol=1e-6)


# ---------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-steps-per-stage mini run, evaluated on faces (small baselines)."""
    run, root = train_tiny_run(tmp_path_factory.mktemp("vis"))
    r = invoke("evaluate", "--concept", "faces", "--checkpoint", str(run), "--root", str(root),
                 "--linear-filters", "64", "--one-layer-steps", "1")
    assert r.exit_code == 0, r.output
    return run, root


def test_best_neuron_and_invariance_one_and_two_ranks(evaluated_run, tmp_path) -> None:
    run, root = evaluated_run
    ev = json.loads((run / "evaluate-faces.json").read_text())
    r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), "--iters", "8")
    assert r.exit_code == 0, r.output
    b = json.loads((run / "visualize-best-neuron.json").read_text())
    assert b["neuron"]["index"] == ev["best_neuron"]["index"] and b["neuron"]["unit"] == ev["best_neuron"]["unit"]
    assert b["top"]["k"] == 48 and len(set(b["top"]["indices"])) == 48
    assert b["top"]["activations"] == sorted(b["top"]["activations"], reverse=True)
    assert b["stimulus"]["norm"] == pytest.approx(1.0, abs=1e-5)
    assert b["stimulus"]["activation"] >= b["best_test_image"]["activation_unit_norm"]
    x = np.load(run / "best-neuron-stimulus.npy", allow_pickle=False)
    assert x.shape == (1, 32, 32) and np.linalg.norm(x) == pytest.approx(1.0, abs=1e-5)
    for f in ("best-neuron-top48.png", "best-neuron-stimulus.png"):
        assert (run / f).read_bytes()[:4] == b"\x89PNG"

    r = invoke("visualize", "invariance", "--checkpoint", str(run), "--root", str(root))
    assert r.exit_code == 0, r.output
    iv = json.loads((run / "invariance.json").read_text())
    assert len(iv["faces"]) == 10
    for kind in ("scale", "translation_x", "translation_y", "rotation"):
        c = iv["curves"][kind]
        k = c["values"].index(inv.IDENTITY[kind])
        assert c["trained"]["relative"][k] == pytest.approx(1.0)
        assert len(c["trained"]["per_face"]) == len(c["values"]) and len(c["random"]["mean"]) == len(c["values"])
    for f in ("scale", "translation", "rotation"):
        assert (run / f"invariance-{f}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run / "invariance-3d-rotation.png").exists()
    # the reference is the random network's best neuron (evaluate's, same seed and test set); thresholds drawn
    rn = ev["baselines"]["random_network"]
    assert iv["random_neuron"]["index"] == rn["index"] and iv["random_threshold"] == pytest.approx(rn["threshold"])
    assert iv["threshold"] == ev["best_neuron"]["threshold"]
    c = iv["curves"]["scale"]
    for net in ("trained", "random"):
        per = np.asarray(c[net]["per_face"])
        t = iv["threshold"] if net == "trained" else iv["random_threshold"]
        np.testing.assert_allclose(c[net]["above_threshold"], (per >= t).mean(axis=1))
        np.testing.assert_allclose(c[net]["q25"], np.percentile(per, 25, axis=1))
    r = invoke("visualize", "invariance", "--checkpoint", str(run), "--root", str(root), "--format", "pdf",
               "--dpi", "72", "--faces", "3")
    assert r.exit_code == 0, r.output
    assert (run / "invariance-scale.pdf").read_bytes()[:4] == b"%PDF"
    r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), "--iters", "2",
               "--format", "svg")
    assert r.exit_code == 0 and (run / "best-neuron-top48.svg").exists() and (run / "best-neuron-stimulus.svg").exists()
    r = invoke("visualize", "invariance", "--checkpoint", str(run), "--root", str(root))  # back to the defaults
    assert r.exit_code == 0, r.output
    iv = json.loads((run / "invariance.json").read_text())

    # 2 ranks: the same neuron, images and curves (to round-off)
    one_b, one_i = dict(b), dict(iv)
    for args in (["best-neuron", "--iters", "8"], ["invariance"]):
        run_mpi(2, ["-m", "repro.cli", "--device", "cpu", "visualize", *args[:1], "--checkpoint", str(run),
                    "--root", str(root), *args[1:]], timeout=120)
    two_b = json.loads((run / "visualize-best-neuron.json").read_text())
    two_i = json.loads((run / "invariance.json").read_text())
    assert two_b["ranks"] == 2 and two_i["ranks"] == 2
    assert two_b["top"]["indices"] == one_b["top"]["indices"]
    np.testing.assert_allclose(two_b["top"]["activations"], one_b["top"]["activations"], rtol=1e-5)
    assert two_b["stimulus"]["activation"] == pytest.approx(one_b["stimulus"]["activation"], rel=1e-3)
    assert two_i["faces"] == one_i["faces"]
    for kind, c in one_i["curves"].items():
        for net in ("trained", "random"):
            np.testing.assert_allclose(two_i["curves"][kind][net]["mean"], c[net]["mean"], rtol=1e-5)


def test_rotating_face_set_is_used_when_prepared(evaluated_run, tmp_path) -> None:
    from repro.data.store import write_store

    run, root = evaluated_run
    rng = np.random.default_rng(0)
    angles = [-60, -30, 0, 30, 60]
    recs = [{"label": 1, "source": f"person{p}/{a}.png"} for p in range(2) for a in angles]
    imgs = (rng.random((len(recs), 32, 32)) * 255).astype(np.uint8)
    write_store(root / "prepared" / "rotating-faces" / "test", imgs, recs, "rotating-faces", "test", {})
    try:
        r = invoke("visualize", "invariance", "--checkpoint", str(run), "--root", str(root), "--faces", "3")
        assert r.exit_code == 0, r.output
        c = json.loads((run / "invariance.json").read_text())["curves"]["rotation_3d"]
        assert c["values"] == angles and c["count"] == [2] * 5
        assert max(c["trained"]["relative"]) == pytest.approx(1.0)
        assert (run / "invariance-3d-rotation.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        shutil.rmtree(root / "prepared" / "rotating-faces")
        (run / "invariance-3d-rotation.png").unlink(missing_ok=True)


def test_bad_inputs(evaluated_run, tmp_path) -> None:
    from repro.data.store import write_store

    run, root = evaluated_run
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints", bare / "checkpoints")
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(bare), "--root", str(root)),
                    f"repro evaluate --concept faces --checkpoint {bare}")
    one_line_error(invoke("visualize", "invariance", "--checkpoint", str(bare), "--root", str(root)),
                    "repro evaluate --concept faces")
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(run), "--config", "le2012",
                             "--root", str(root)), "does not match")
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(tmp_path / "none")),
                    "no such checkpoint")
    over = ["--layer", "2", "--sublayer", "pool", "--index"]
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(bare), "--root", str(root),
                             *over, "999"), "outside")
    one_line_error(invoke("visualize", "invariance", "--checkpoint", str(bare), "--root", str(root),
                             "--concept", "cats", *over, "0"), "repro data prepare cat-heads")
    imgs = np.zeros((4, 32, 32), np.uint8)
    write_store(tmp_path / "one", imgs, [{"label": 1, "source": f"x{i}"} for i in range(4)], "one", "test", {})
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root),
                             "--data", str(tmp_path / "one")), "no negatives")
    write_store(tmp_path / "empty", np.zeros((0, 32, 32), np.uint8), [], "empty", "test", {})
    one_line_error(invoke("visualize", "invariance", "--checkpoint", str(run), "--root", str(root),
                             "--data", str(tmp_path / "empty")), "no labeled images")
    # an evaluation made on another config's checkpoint
    ev = json.loads((run / "evaluate-faces.json").read_text())
    ev["config"]["name"] = "other"
    (bare / "evaluate-faces.json").write_text(json.dumps(ev))
    one_line_error(invoke("visualize", "best-neuron", "--checkpoint", str(bare), "--root", str(root)),
                    "config 'other'")


# ---------------------------------------------------------------- smoothness prior (--prior smooth)
def test_blur_and_schedule() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(vis.gaussian_blur(x, 0.0), x)
    np.testing.assert_allclose(vis.gaussian_blur(np.full((1, 1, 8, 8), 3.0, np.float32), 1.5), 3.0, rtol=1e-5)
    assert vis.high_frequency_share(vis.gaussian_blur(x, 1.0)) < 0.3 * vis.high_frequency_share(x)
    s = vis.sigma_schedule(5, 2.0, 0.5)
    assert s[0] == pytest.approx(2.0) and s[-1] == pytest.approx(0.5) and np.all(np.diff(s) < 0)
    assert vis.sigma_schedule(1, 2.0, 0.5).tolist() == [0.5]


def test_smooth_stimulus_has_less_high_frequency_energy() -> None:
    cfg = load_config("mini")
    net = Network.create(cfg, seed=3, xp=np, w=world())
    h, w = cfg.stage_shapes()[1]["pool"]
    neuron = vis.make_neuron(cfg, 1, "pool", 5 * h * w + (h // 2) * w + w // 2)
    best = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    plain = vis.optimal_stimulus(net, neuron, best, seed=0, iters=15)
    smooth = vis.smooth_stimulus(net, neuron, best, seed=0, iters=15)
    assert np.linalg.norm(smooth["x"]) == pytest.approx(1.0, abs=1e-5)
    for end in smooth["ends"].values():
        assert np.linalg.norm(end) == pytest.approx(1.0, abs=1e-5)
    hf_plain, hf_smooth = vis.high_frequency_share(plain["x"]), vis.high_frequency_share(smooth["x"])
    assert hf_smooth < 0.5 * hf_plain, (hf_smooth, hf_plain)
    assert smooth["iterations"] == 15 and set(smooth["runs"]) == {"random", "best_image"}
    f_x, _ = vis.activation(net, smooth["x"], neuron)
    assert f_x == pytest.approx(smooth["activation"], rel=1e-5)
    assert smooth["activation"] > smooth["runs"]["random"]["start_activation"]  # it ascends


def test_best_neuron_prior_option(evaluated_run, tmp_path) -> None:
    src, root = evaluated_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), "--iters", "6")
    assert r.exit_code == 0, r.output
    plain = json.loads((run / "visualize-best-neuron.json").read_text())
    x_plain = np.load(run / "best-neuron-stimulus.npy", allow_pickle=False)
    assert plain["prior"] == "none" and "stimulus_smooth" not in plain
    assert plain["files"] == ["best-neuron-top48.png", "best-neuron-stimulus.png", "best-neuron-stimulus.npy"]
    assert not (run / "best-neuron-stimulus-smooth.png").exists()
    tf = plain["top_face"]
    assert plain["top"]["activations"][0] >= tf["activation"] > 0

    r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), "--iters", "6",
               "--prior", "smooth")
    assert r.exit_code == 0, r.output
    b = json.loads((run / "visualize-best-neuron.json").read_text())
    np.testing.assert_array_equal(np.load(run / "best-neuron-stimulus.npy", allow_pickle=False), x_plain)
    assert b["stimulus"] == plain["stimulus"] and b["top_face"] == tf  # the paper's stimulus is untouched
    s = b["stimulus_smooth"]
    assert s["norm"] == pytest.approx(1.0, abs=1e-5) and (s["sigma_start"], s["sigma_end"]) == (2.0, 0.5)
    assert s["high_frequency_share"] < b["stimulus"]["high_frequency_share"]
    assert b["responses_unit_norm"] == {"stimulus": b["stimulus"]["activation"], "stimulus_smooth": s["activation"],
                                        "best_test_image": b["best_test_image"]["activation_unit_norm"],
                                        "top_face": tf["activation_unit_norm"]}
    xs = np.load(run / "best-neuron-stimulus-smooth.npy", allow_pickle=False)
    assert xs.shape == (1, 32, 32) and np.linalg.norm(xs) == pytest.approx(1.0, abs=1e-5)
    assert (run / "best-neuron-stimulus-smooth.png").read_bytes()[:4] == b"\x89PNG"
    assert "best-neuron-stimulus-smooth.png" in b["files"]
    r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), "--iters", "3",
               "--prior", "smooth", "--blur-sigma", "1", "1")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "visualize-best-neuron.json").read_text())["stimulus_smooth"]["sigma_start"] == 1.0

    for args, words in ((("--prior", "blurry"), ("Invalid value for '--prior'", "'blurry'")),
                        (("--blur-sigma", "1", "1"), ("--blur-sigma needs --prior smooth",)),
                        (("--prior", "smooth", "--blur-sigma", "-1", "1"), ("Invalid value for '--blur-sigma'",))):
        r = invoke("visualize", "best-neuron", "--checkpoint", str(run), "--root", str(root), *args)
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]  # Click's usage error
        assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output
        assert all(w in errors[0] for w in words), r.output
