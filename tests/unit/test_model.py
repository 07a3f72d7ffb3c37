"""The model: configs, exact RICA gradients (finite differences, float64), optimisers, init."""
from __future__ import annotations

import numpy as np
import pytest

from support.scenarios import SMALL, WINDOW, images
from repro.errors import ReproError
from repro.model.config import from_dict, load_config
from repro.model.network import Network, apply_update, init_tile
from repro.model.optim import Optimizer
from repro.engine.comm import world


def small_net(seed=1):
    return Network.create(from_dict(SMALL), seed=seed, dtype=np.float64, xp=np, w=world())


def _fd_check(net, loss_fn, grads, name, n_coords=6, h=1e-5, seed=0):
    rng = np.random.default_rng(seed)
    P = net.params[name]
    for _ in range(n_coords):
        idx = tuple(int(rng.integers(s)) for s in P.shape)
        old = P[idx]
        P[idx] = old + h
        lp = loss_fn()
        P[idx] = old - h
        lm = loss_fn()
        P[idx] = old
        fd = (lp - lm) / (2 * h)
        assert grads[name][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, idx)


@pytest.mark.parametrize("stage", [0, 1])
def test_layerwise_rica_gradient(stage):
    net = small_net()
    x = images().astype(np.float64)
    loss, grads = net.layer_loss_and_grads(x, stage)
    assert set(grads) == {f"stage{stage}.W1", f"stage{stage}.W2"}
    for name in grads:
        _fd_check(net, lambda: net.layer_loss_and_grads(x, stage)[0], grads, name)


def test_finetune_gradient_flows_through_all_stages():
    net = small_net(seed=2)
    x = images().astype(np.float64)
    loss, grads = net.finetune_loss_and_grads(x)
    assert set(grads) == set(net.params)
    for name in grads:
        _fd_check(net, lambda: net.finetune_loss_and_grads(x)[0], grads, name, n_coords=4)
    # the joint loss is the sum of the stage losses
    parts = sum(net.layer_loss_and_grads(x, i)[0] for i in range(2))
    assert loss == pytest.approx(parts, rel=1e-12)


def test_training_lowers_the_objective():
    net = Network.create(from_dict(SMALL), seed=0, xp=np, w=world())
    opt = Optimizer("adagrad", 0.05)
    x = images(b=8)
    first = net.layer_loss_and_grads(x, 0)[0]
    for _ in range(30):
        _, g = net.layer_loss_and_grads(x, 0)
        apply_update(net, opt, g)
    assert net.layer_loss_and_grads(x, 0)[0] < 0.8 * first
    W1 = net.params["stage0.W1"]
    np.testing.assert_allclose(np.sqrt((W1 ** 2).sum(axis=(3, 4, 5))), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
def test_optimizers_match_their_formulas(kind):
    p = {"a": np.array([1.0, -2.0])}
    g = {"a": np.array([0.5, 0.25])}
    opt = Optimizer(kind, lr=0.1, momentum=0.9)
    opt.step(p, g)
    opt.step(p, g)
    if kind == "sgd":  # v1 = -0.1 g, v2 = 0.9 v1 - 0.1 g
        expect = np.array([1.0, -2.0]) - 0.1 * g["a"] - (0.09 + 0.1) * g["a"]
    else:
        h1, h2 = g["a"] ** 2, 2 * g["a"] ** 2
        expect = np.array([1.0, -2.0]) - 0.1 * g["a"] / (np.sqrt(h1) + 1e-8) - 0.1 * g["a"] / (np.sqrt(h2) + 1e-8)
    np.testing.assert_allclose(p["a"], expect)


def test_init_does_not_depend_on_tiling():
    cfg = from_dict(SMALL)
    whole = init_tile(cfg, 0, "W1", (0, 11, 0, 10), seed=4)
    part = init_tile(cfg, 0, "W1", (3, 7, 2, 9), seed=4)
    np.testing.assert_array_equal(whole[3:7, 2:9], part)
    assert not np.allclose(init_tile(cfg, 0, "W2", (3, 7, 2, 9), seed=4), part)


def test_builtin_configs_and_parameter_count():
    le = load_config("le2012")
    assert 0.9e9 < sum(le.parameter_counts()) < 1.1e9  # "about 1 billion connections"
    mini = load_config("mini")
    assert mini.stage_shapes()[-1]["lcn"] == (3, 3)
    f = load_config("faces32")  # the default run: pypi-faces, input LCN, 72 top neurons
    assert f.data == "pypi-faces" and f.input_lcn == 13 and f.stage_shapes()[-1]["pool"] == (3, 3)


@pytest.mark.parametrize("change,msg", [
    ({"stages": [{"filter": 40}]}, "larger than its input"),
    ({"stages": [{"stride": 0}]}, "stride must be >= 1"),
    ({"stages": [{"lcn": 4}]}, "must be odd"),
    ({"input": {"size": 14}, "stages": [{"bogus": 1}]}, "unknown key"),
    ({"input": {"size": [14, 13], "channels": 2, "lcn": 4}}, "input.lcn must be 0"),
    ({"input": {"size": [14, 13], "channels": 2, "lcn": 31}}, "input.lcn must be 0"),
    ({"input": {"size": [14, 13], "channels": 2, "lcn": 3, "lcn_eps": 0}}, "must be positive"),
    ({"rica": {"reconstruct": "patches"}}, "rica.reconstruct must be 'image' or 'window'"),
])
def test_impossible_shapes_are_one_line_errors(change, msg):
    d = {**SMALL, **change}
    with pytest.raises(ReproError, match=msg):
        from_dict(d, "bad.toml")


def test_new_keys_survive_the_run_folder():
    """input.lcn* and rica.reconstruct come back from a run's config.json (resume, evaluate)."""
    import json

    from repro.model.config import from_saved

    cfg = from_dict(WINDOW)
    back = from_saved(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.input_lcn == 3 and back.rica.reconstruct == "window"


def test_unknown_config_names_the_choices():
    with pytest.raises(ReproError, match="unknown config 'nope'.*mini"):
        load_config("nope")


@pytest.mark.parametrize("sublayer", ["filter", "pool", "lcn"])
def test_unit_gradient_matches_finite_differences(sublayer):
    from repro.model.network import standardize, unit_gradient

    net = small_net(seed=3)
    x = standardize(images(b=1).astype(np.float64))
    unit = (1, 1, 1)
    value, grad = unit_gradient(net, x, 1, sublayer, unit)
    rng = np.random.default_rng(0)
    h = 1e-6
    for _ in range(5):
        idx = tuple(int(rng.integers(s)) for s in x.shape)
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        fd = (unit_gradient(net, xp_, 1, sublayer, unit)[0] - unit_gradient(net, xm, 1, sublayer, unit)[0]) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_compute_features_layout():
    from repro.model.network import compute_features

    net = small_net()
    x = images(b=5).astype(np.float64)
    feats = compute_features(net, x, 1, "pool", batch=2)
    c = net.forward(x)[1]
    np.testing.assert_allclose(feats, c.p.reshape(5, -1))


def test_tied_decoder_gradient():
    d = {**SMALL, "rica": {"lambda": 0.1, "eps": 0.01, "tied": True, "normalize_encoder": False}}
    net = Network.create(from_dict(d), seed=1, dtype=np.float64, xp=np, w=world())
    x = images().astype(np.float64)
    loss, grads = net.finetune_loss_and_grads(x)
    assert set(grads) == {"stage0.W1", "stage1.W1"}  # W2 is W1's transpose: no parameter of its own
    for name in grads:
        _fd_check(net, lambda: net.finetune_loss_and_grads(x)[0], grads, name, n_coords=4)


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_written_into_out(tied):
    """The trainer passes the previous step's gradients as ``out``: same values as fresh arrays,
    in the same arrays (tied decoders go through the network's one scratch buffer)."""
    d = {**SMALL, "rica": {"lambda": 0.1, "eps": 0.01, "tied": tied}}
    net = Network.create(from_dict(d), seed=1, dtype=np.float64, xp=np, w=world())
    x, x2 = images().astype(np.float64), images(seed=8).astype(np.float64)
    _, fresh = net.finetune_loss_and_grads(x2)
    prev = {name: np.full_like(g, np.nan) for name, g in net.finetune_loss_and_grads(x)[1].items()}
    loss, grads = net.finetune_loss_and_grads(x2, out=prev)
    assert set(grads) == set(fresh) and all(grads[n] is prev[n] for n in grads)
    for name in grads:
        np.testing.assert_allclose(grads[name], fresh[name], rtol=1e-12, atol=1e-14)
    _, layer = net.layer_loss_and_grads(x2, 1, out=prev)
    assert all(layer[n] is prev[n] for n in layer)
    assert loss == pytest.approx(net.finetune_loss_and_grads(x2)[0], rel=1e-12)


def test_decoder_normalisation():
    d = {**SMALL, "rica": {**SMALL["rica"], "normalize_decoder": True}}
    net = Network.create(from_dict(d), seed=1, xp=np, w=world())
    _, g = net.layer_loss_and_grads(images(), 0)
    apply_update(net, Optimizer("sgd", 0.01), g)
    W2 = net.params["stage0.W2"]
    np.testing.assert_allclose(np.sqrt((W2 ** 2).sum(axis=(3, 4, 5))), 1.0, rtol=1e-5)


@pytest.mark.parametrize("contiguous", [True, False])
def test_normalize_filters_in_place(contiguous):
    from repro.model.network import normalize_filters

    W = np.random.default_rng(0).standard_normal((3, 4, 2, 2, 3, 3))
    if not contiguous:
        W = np.asfortranarray(W)
    out = normalize_filters(W)
    assert out is W
    np.testing.assert_allclose(np.sqrt((W ** 2).sum(axis=(3, 4, 5))), 1.0)


STRIDE2 = {"name": "stride2", "input": {"size": [15, 15], "channels": 1, "lcn": 5, "lcn_sigma": 1.5, "lcn_eps": 0.2},
           "stages": [{"maps": 3, "filter": 5, "stride": 2, "pool": 2, "lcn": 3, "lcn_eps": 0.01},
                      {"maps": 2, "filter": 2, "pool": 1, "lcn": 1, "lcn_eps": 0.01}],
           "rica": {**SMALL["rica"], "reconstruct": "window"}}


@pytest.mark.parametrize("base", [WINDOW, STRIDE2], ids=["stride1", "stride2"])
@pytest.mark.parametrize("tied", [False, True])
def test_window_reconstruction_gradients(base, tied):
    """Every window reconstructing itself: layer-wise and joint gradients against finite differences,
    through the input's contrast normalisation too."""
    d = {**base, "rica": {**base["rica"], "tied": tied, "normalize_encoder": False}}
    net = Network.create(from_dict(d), seed=1, dtype=np.float64, xp=np, w=world())
    C, (H, W) = net.cfg.channels, net.cfg.input_size
    x = np.random.default_rng(3).standard_normal((4, C, H, W))
    for stage in range(len(net.cfg.stages)):
        loss, grads = net.layer_loss_and_grads(x, stage)
        for name in grads:
            _fd_check(net, lambda: net.layer_loss_and_grads(x, stage)[0], grads, name, n_coords=4)
    loss, grads = net.finetune_loss_and_grads(x)
    for name in grads:
        _fd_check(net, lambda: net.finetune_loss_and_grads(x)[0], grads, name, n_coords=4)


def test_window_loss_is_the_sum_over_windows():
    """R = (sum over locations of ||W2_l^T W1_l x_l - x_l||^2 + lambda sum p) / B, written plainly."""
    d = {**STRIDE2, "rica": {**STRIDE2["rica"], "tied": False}}
    net = Network.create(from_dict(d), seed=2, dtype=np.float64, xp=np, w=world())
    x = np.random.default_rng(4).standard_normal((3, 1, 15, 15))
    c = net.forward(x, upto=1)[0]
    W1, W2 = net.params["stage0.W1"], net.params["stage0.W2"]
    loss = net.stages[0].rica(c, W1, W2)[0]
    a, s, k, F = c.a.data, 2, 5, 3
    want = 0.0
    for oy in range(W1.shape[0]):
        for ox in range(W1.shape[1]):
            xl = a[:, :, oy * s:oy * s + k, ox * s:ox * s + k].reshape(len(a), -1)
            r = (xl @ W1[oy, ox].reshape(F, -1).T) @ W2[oy, ox].reshape(F, -1) - xl
            want += (r ** 2).sum()
    want = (want + 0.1 * c.p.sum()) / len(a)
    assert loss == pytest.approx(want, rel=1e-10)


def test_input_lcn_in_forward_and_unit_gradient():
    """The network sees standardised, locally contrast-normalised images; the optimal stimulus's
    gradient goes back through that normalisation (finite differences on the standardised input)."""
    from repro.engine.kernels import lcn_same_forward
    from repro.model.network import preprocess, standardize, unit_gradient

    net = Network.create(from_dict(STRIDE2), seed=5, dtype=np.float64, xp=np, w=world())
    x = np.random.default_rng(6).random((2, 1, 15, 15))
    np.testing.assert_allclose(net.input_array(x).data, lcn_same_forward(standardize(x), 5, 1.5, 0.2))
    np.testing.assert_allclose(preprocess(x, net.cfg), net.input_array(x).data)
    xs = standardize(x[:1])
    for sub in ("filter", "pool", "lcn"):
        v, g = unit_gradient(net, xs, 1, sub, (1, 0, 0))
        rng = np.random.default_rng(0)
        for _ in range(4):
            idx = (0, 0, int(rng.integers(15)), int(rng.integers(15)))
            xp_, xm = xs.copy(), xs.copy()
            xp_[idx] += 1e-6
            xm[idx] -= 1e-6
            fd = (unit_gradient(net, xp_, 1, sub, (1, 0, 0))[0] - unit_gradient(net, xm, 1, sub, (1, 0, 0))[0]) / 2e-6
            assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (sub, idx)


def test_no_lcn_passes_the_pooling_output_through():
    """lcn = 0: the paper's "LCN removed" ablation; gradients still exact, the map keeps its size."""
    d = {**SMALL, "stages": [{**SMALL["stages"][0], "lcn": 0}, SMALL["stages"][1]]}
    net = Network.create(from_dict(d), seed=1, dtype=np.float64, xp=np, w=world())
    shp = net.cfg.stage_shapes()[0]
    assert shp["lcn"] == shp["pool"]
    x = images().astype(np.float64)
    c = net.forward(x)[0]
    np.testing.assert_array_equal(c.z, c.p)
    loss, grads = net.finetune_loss_and_grads(x)
    for name in grads:
        _fd_check(net, lambda: net.finetune_loss_and_grads(x)[0], grads, name, n_coords=4)
    with pytest.raises(ReproError, match="lcn must be >= 0"):
        from_dict({**SMALL, "stages": [{**SMALL["stages"][0], "lcn": -1}, SMALL["stages"][1]]})
