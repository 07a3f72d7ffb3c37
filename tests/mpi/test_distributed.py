"""Distributed == serial: the same seed gives the same numbers on 1, 2, 3, 4 and 6 ranks."""
from __future__ import annotations

import time

import numpy as np
import pytest

from support.mpi import SCENARIOS, run_mpi

from support import scenarios as S

SCRIPT = str(SCENARIOS)
RANKS = [2, 3, 4, 6]


@pytest.mark.parametrize("n", RANKS)
def test_distarray_fetch_and_adjoint(n, tmp_path):
    out = tmp_path / "r.npz"
    run_mpi(n, [SCRIPT, "distarray", str(out)])
    r = np.load(out)
    assert r["fetch_ok"].all() and len(r["fetch_ok"]) == n
    assert r["adjoint_ok"].all()


@pytest.fixture(scope="module")
def serial_network():
    return S.scenario_network()


@pytest.mark.parametrize("overlap", ["1", "0"])
@pytest.mark.parametrize("n", RANKS)
def test_network_distributed_equals_serial(n, overlap, tmp_path, serial_network):
    """With the halo hidden behind the tile's interior (interior + boundary strips) and without."""
    out = tmp_path / "r.npz"
    run_mpi(n, [SCRIPT, "network", str(out)], env={"REPRO_OVERLAP_HALOS": overlap})
    r = np.load(out)
    assert set(r.files) == set(serial_network)
    for k, v in serial_network.items():
        np.testing.assert_allclose(r[k], v, rtol=2e-4, atol=2e-5, err_msg=f"{k} on {n} ranks")


@pytest.mark.parametrize("n", RANKS)
def test_window_reconstruction_and_input_lcn_distributed_equals_serial(n, tmp_path):
    """Window-by-window reconstruction and the input's contrast normalisation, on any rank count."""
    serial = S.scenario_network("window")
    out = tmp_path / "r.npz"
    run_mpi(n, [SCRIPT, "network", str(out), "window"])
    r = np.load(out)
    assert set(r.files) == set(serial)
    for k, v in serial.items():
        np.testing.assert_allclose(r[k], v, rtol=2e-4, atol=2e-5, err_msg=f"{k} on {n} ranks")


@pytest.mark.parametrize("write_n,read_n", [(4, 1), (1, 3), (6, 4), (2, 2)])
def test_checkpoint_written_on_n_loads_on_m(write_n, read_n, tmp_path):
    ck = tmp_path / "ck"
    w_out, r_out = tmp_path / "w.npz", tmp_path / "r.npz"
    run_mpi(write_n, [SCRIPT, "checkpoint-write", str(w_out), str(ck)])
    run_mpi(read_n, [SCRIPT, "checkpoint-read", str(r_out), str(ck)])
    w, r = np.load(w_out), np.load(r_out)
    for k in w.files:
        np.testing.assert_array_equal(r[k], w[k], err_msg=k)
    ref = np.load(r_out)  # the next step equals the same step taken on one rank
    serial = S.scenario_checkpoint_read(str(ck))
    for k in serial:
        if k.startswith("next."):
            np.testing.assert_allclose(ref[k], serial[k], rtol=2e-4, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("n,bad", [(3, 1), (4, 0)])
def test_failure_on_one_rank_ends_the_job(n, bad):
    t = time.monotonic()
    proc = run_mpi(n, [SCRIPT, "fail", "-", str(bad)], timeout=50, check=False)
    took = time.monotonic() - t
    assert proc.returncode != 0
    assert took < 30, f"job took {took:.1f}s to end"
    assert proc.stderr.count("RuntimeError: deliberate failure") == 1, proc.stderr


def test_bad_input_on_every_rank_is_shown_once():
    """Every rank meets the same bad input: rank 0's one line is shown, its abort ends the others
    before they print theirs."""
    proc = run_mpi(3, ["-m", "repro.cli", "--device", "cpu", "info", "--config", "nosuchconfig", "--ranks", "2"],
                   timeout=60, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("unknown config 'nosuchconfig'") == 1, proc.stderr


@pytest.mark.parametrize("n", [1, 3, 4, 6])
def test_local_features_and_distributed_best(n, tmp_path):
    """Rank-local features cover every neuron once and match the gathered matrix; one neuron's
    column, the best neuron and the held-out split chosen across ranks equal the serial answers,
    with empty tiles on 3 and 6 ranks (a 2x2 top layer)."""
    out = tmp_path / "r.npz"
    run_mpi(n, [SCRIPT, "local-features", str(out)])
    r = np.load(out)
    assert r.files
    for k in r.files:
        if k.endswith("empty_tiles"):
            continue
        assert np.all(r[k]), f"{k} on {n} ranks"
    if n in (3, 6):
        assert int(r["tiny.1.pool.empty_tiles"]) > 0


def test_overlap_policy(monkeypatch):
    import numpy as np

    from repro.engine.comm import world
    from repro.engine.distarray import overlap_halos

    monkeypatch.delenv("REPRO_OVERLAP_HALOS", raising=False)
    assert overlap_halos(world(), np) is False  # one rank: no halo to hide
    monkeypatch.setenv("REPRO_OVERLAP_HALOS", "1")
    assert overlap_halos(world(), np) is True
    monkeypatch.setenv("REPRO_OVERLAP_HALOS", "0")
    assert overlap_halos(world(), np) is False
