"""scaling-sweep: the sweep runs under mpiexec and writes consistent JSON; projections follow their
formula; the timer sees every stage's kernels and exchanges and changes no number; the worker each
launch runs is its own module entry point, not options of the user's command. Timings are not asserted."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from support.mpi import run_mpi
from repro.engine.timing import TIMER, profile_network, timed
from repro.experiments.breakdown import profile_update
from repro.experiments import scaling as S
from repro.experiments.scaling import launch, worker
from repro.errors import ReproError
from repro.model.config import from_dict
from repro.model.memory import flops_per_update
from repro.model.network import Network
from repro.model.optim import Optimizer
from repro.engine.comm import world

SMALL = {
    "name": "t", "input": {"size": [14, 13], "channels": 2},
    "stages": [{"maps": 3, "filter": 4, "pool": 3, "lcn": 3}, {"maps": 2, "filter": 3, "pool": 2, "lcn": 3}],
    "train": {"batch": 4},
}


def test_timed_is_a_no_op_when_disabled():
    TIMER.reset()
    with timed("x"):
        pass
    assert not TIMER.enabled and "x" not in TIMER.seconds


def test_profile_update_sees_every_stage_and_changes_no_number():
    cfg = from_dict(SMALL)
    net, opt = Network.create(cfg, 0, np, world()), Optimizer.from_config(cfg.train)
    imgs = np.random.default_rng(0).standard_normal((4, 2, 14, 13)).astype(np.float32)
    ref_loss, ref_grads = Network.create(cfg, 0, np, world()).finetune_loss_and_grads(imgs)
    with profile_network():
        loss, grads = Network.create(cfg, 0, np, world()).finetune_loss_and_grads(imgs)
    assert loss == ref_loss  # timing changes no number
    for k in grads:
        np.testing.assert_array_equal(grads[k], ref_grads[k])
    bd = profile_update(net, opt, imgs, steps=2)
    assert not TIMER.enabled
    ops = {(s, p, op) for s, p, op, _, _ in bd.rows}
    for st in ("stage0", "stage1"):
        for need in ("LC forward", "L2 pool forward", "LCN forward"):
            assert (st, "fwd", need) in ops
        for need in ("decoder W2 y", "decoder backward", "decoder backward-weights", "LC backward-weights",
                     "L2 pool backward", "halo scatter-add", "loss all-reduce"):
            assert (st, "bwd", need) in ops
    assert ("stage1", "bwd", "LC backward-data") in ops  # stage 0 needs no input gradient
    assert ("stage0", "bwd", "LC backward-data") not in ops
    assert ("stage0", "bwd", "LCN backward") in ops  # gradient from stage 1 flows through stage 0's LCN
    assert bd.optimizer_s > 0 and 0 < bd.accounted_s <= bd.update_s * 1.05


def test_sized_configs_grow_the_parameters_with_the_size():
    p1 = sum(S.sized_config("cpu", 1).parameter_counts())
    for m in (2, 4):
        cfg = S.sized_config("cpu", m)
        gy, gx = S.grid_shape(m)
        h, w = cfg.input_size
        assert abs(w / h - gx / gy) < 0.1
        assert abs(sum(cfg.parameter_counts()) / (m * p1) - 1) < 0.05
        # weak scaling: on m ranks the busiest rank holds the base's share of the work
        assert abs(S.busiest_rank_params(cfg, m) / p1 - 1) < 0.01
    # 29x58, the aspect ratio alone, would give the busiest of 2 ranks 4% more than the base
    assert S.busiest_rank_params(S.resized(S.base_config("cpu"), 29, 58, "x"), 2) / p1 > 1.04


def test_busiest_rank_params_counts_the_largest_tile():
    cfg = S.sized_config("cpu", 1)
    p = cfg.parameter_counts()
    assert S.busiest_rank_params(cfg, 1) == sum(p)
    # 31x31 input: stage filter grids 24x24 and 17x17; 2 ranks split columns 12/12 and 9/8
    assert S.busiest_rank_params(cfg, 2) == p[0] // 2 + p[1] // (17 * 17) * 17 * 9


def test_paper_family_spans_185M_to_11_2B():
    cfgs = S.paper_configs(ranks=(1, 64))
    p = [sum(c.parameter_counts()) for c in cfgs]
    assert abs(p[0] / 185e6 - 1) < 0.02 and abs(p[1] / 11.2e9 - 1) < 0.02


def test_projection_follows_its_formula():
    link = S.Link(gflops=500.0, bandwidth_gbps=10.0, latency_us=3.0, ranks_per_link=2)
    cfg = S.sized_config("cpu", 4, batch=8)
    pt = S.project_point(cfg, 4, 8, link)
    vol = S.comm_volume(cfg, 4, 8)
    comm = max(v["messages"] * 3e-6 + v["bytes"] / (10e9 / 8 / 2) for v in vol)
    # compute: the busiest rank's LC work (6 GEMM passes of 2 x batch x its weights)
    assert pt["compute_s"] == pytest.approx(12 * 8 * S.busiest_rank_params(cfg, 4) / 500e9)
    assert pt["compute_s"] >= flops_per_update(cfg, 8) / 4 / 500e9
    assert pt["comm_s"] == pytest.approx(comm)
    assert pt["update_s"] == pytest.approx(pt["compute_s"] + pt["comm_s"])
    one = S.project_point(cfg, 1, 8, link)
    assert one["comm_s"] == 0 and one["messages"] == 0
    # a 1 x 2 grid of equal tiles: halo bytes = batch x channels x (rows x halo columns) per exchange
    vol2 = S.comm_volume(cfg, 2, 8)
    assert vol2[0]["bytes"] == vol2[1]["bytes"] > 0


def test_sweep_runs_and_writes_consistent_json(tmp_path):
    out = tmp_path / "sc"
    res = CliRunner().invoke(_cli(), ["--device", "cpu", "scaling-sweep", "--ranks", "1,2", "--sizes", "1",
                                      "--mode", "both", "--batch", "4", "--steps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.png").stat().st_size > 0 and (out / "README.md").exists()
    pts = {(p["mode"], p["ranks"], p["size"]): p for p in doc["points"]}
    assert set(pts) == {("weak", 1, 1), ("weak", 2, 2), ("strong", 1, 1), ("strong", 2, 1)}
    for p in pts.values():
        assert p["images_per_s"] == pytest.approx(p["batch"] / p["update_s"])
        assert p["gflops_per_rank"] == pytest.approx(p["flops_per_update"] / p["ranks"] / p["update_s"] / 1e9)
        assert 0 <= p["comm_share"] < 1 and len(p["per_rank"]) == p["ranks"]
        assert p["peak_bytes"] > 0 and p["estimate_bytes"] > 0
    assert pts[("weak", 2, 2)]["parameters_W1"] > 1.8 * pts[("weak", 1, 1)]["parameters_W1"]
    assert pts[("strong", 2, 1)]["parameters_W1"] == pts[("strong", 1, 1)]["parameters_W1"]
    assert pts[("weak", 1, 1)]["efficiency"] == pytest.approx(1.0)
    w2 = pts[("weak", 2, 2)]
    assert w2["efficiency"] == pytest.approx(pts[("weak", 1, 1)]["update_s"] / w2["update_s"])
    # --project from that JSON: the compute rate is the 1-rank measurement
    res = CliRunner().invoke(_cli(), ["scaling-sweep", "--project", "--from", str(out / "sweep.json"),
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    proj = json.loads((out / "projection.json").read_text())
    assert proj["link"]["gflops"] == pytest.approx(max(p["gflops_per_rank"] for p in pts.values() if p["ranks"] == 1))
    assert [p["ranks"] for p in proj["points"]] == list(S.PAPER_RANKS)
    assert all(math.isfinite(p["update_s"]) and p["update_s"] > 0 for p in proj["points"])


def test_largest_config_is_the_largest_input_whose_estimate_fits():
    from repro.model.memory import estimate

    base = from_dict(SMALL, "t")
    budget = 3 << 20

    def need(c):
        return max(e.total for e in estimate(c, 2, 4))

    cfg, est = S.largest_config(base, 2, 4, budget, False, "big")
    h, w = cfg.input_size
    assert w == 2 * h and est == need(cfg) <= budget  # the 1 x 2 grid's aspect ratio
    bigger = S.resized(base, h + 1, 2 * (h + 1), "big")
    assert need(bigger) > budget
    with pytest.raises(ReproError, match="no input size fits"):
        S.largest_config(base, 1, 4, 1000, False, "big")


@pytest.mark.parametrize("text, n", [("80GB", 80 * 10**9), ("16GiB", 16 * 2**30), ("512 MiB", 512 * 2**20),
                                     ("1.5G", 15 * 10**8), ("4096", 4096)])
def test_memory_sizes_parse(text, n):
    from repro.commands.scaling import _bytes

    assert _bytes(None, None, text) == n


def test_largest_runs_the_largest_fitting_network_and_writes_json(tmp_path):
    out = tmp_path / "lg"
    args = ["--device", "cpu", "scaling-sweep", "--largest", "--family", "mini", "--ranks", "1,2", "--memory", "48MiB",
            "--batch", "4", "--steps", "1", "--out", str(out)]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "largest.json").read_text())
    assert [p["ranks"] for p in doc["points"]] == [1, 2] and doc["device_name"]
    for p in doc["points"]:
        assert p["memory_bytes"] == 48 * 2**20 and p["memory_source"] == "given"
        assert p["estimate_bytes"] == p["estimate_chosen_bytes"] <= 0.8 * 48 * 2**20
        assert p["peak_bytes"] <= 1.25 * p["estimate_bytes"]
        assert p["parameters_W1"] > sum(S.base_config("mini").parameter_counts())  # grown past the base
    # two ranks hold about twice the network of one
    assert doc["points"][1]["parameters_W1"] > 1.5 * doc["points"][0]["parameters_W1"]
    bad = CliRunner().invoke(_cli(), args[:-2] + ["--memory", "lots", "--out", str(out)])
    assert bad.exit_code != 0 and "80GB" in bad.output
    small = CliRunner().invoke(_cli(), ["--device", "cpu", "scaling-sweep", "--largest", "--family", "mini",
                                        "--ranks", "1", "--memory", "1MiB", "--out", str(out)])
    assert small.exit_code != 0 and "no input size fits" in small.output
    errors = [ln for ln in small.output.splitlines() if "Error" in ln]
    assert len(errors) == 1 and "Traceback" not in small.output and "mpiexec" not in errors[0]  # one line


def _cli():
    from repro.cli import cli

    return cli


def test_repeated_launches_run_round_robin_and_report_the_median_launch():
    pts = S.plan([1, 2], [1], "both")
    # update times per (point, round): round 1 is a slow spell for every point
    times = {S.Point("weak", 1, 1): [40.0, 60.0, 44.0], S.Point("weak", 2, 2): [50.0, 66.0, 46.0],
             S.Point("strong", 1, 1): [40.0, 58.0, 42.0], S.Point("strong", 2, 1): [25.0, 35.0, 24.0]}
    order: list[tuple[int, S.Point]] = []
    calls = {pt: 0 for pt in pts}

    def run_one(pt):
        i = calls[pt]
        calls[pt] += 1
        t = times[pt][i] / 1e3
        return {"update_s": t, "comm_share": 0.1 * i, "wait_share": 0.01 * i, "flops_per_update": 1e9 * pt.size,
                "ranks": pt.ranks, "mode": pt.mode, "size": pt.size, "launch": i}

    got = S.sweep(pts, 3, run_one, progress=lambda r, pt: order.append((r, pt)))
    assert order == [(r, pt) for r in range(3) for pt in pts]  # every round launches every point once
    by = {(p["mode"], p["ranks"], p["size"]): p for p in got}
    w1, w2 = by[("weak", 1, 1)], by[("weak", 2, 2)]
    assert w1["update_s"] == pytest.approx(0.044) and w1["launch"] == 2  # median launch, all its figures
    assert [r["update_s"] for r in w1["runs"]] == pytest.approx([0.040, 0.060, 0.044])
    assert (w1["update_s_min"], w1["update_s_max"]) == pytest.approx((0.040, 0.060))
    assert w2["update_s"] == pytest.approx(0.050)
    S.add_efficiency(got)
    rounds = [40 / 50, 60 / 66, 44 / 46]
    assert w2["efficiency_rounds"] == pytest.approx(rounds)
    assert w2["efficiency"] == pytest.approx(sorted(rounds)[1])  # median of the paired rounds
    assert w2["efficiency_work"] == pytest.approx(w2["efficiency"] * 2 / 2)
    assert w1["efficiency"] == pytest.approx(1.0) and "efficiency_rounds" not in w1
    s2 = by[("strong", 2, 1)]
    srounds = [40 / 25 / 2, 58 / 35 / 2, 42 / 24 / 2]
    assert s2["efficiency"] == pytest.approx(sorted(srounds)[1])
    assert s2["speedup"] == pytest.approx(2 * s2["efficiency"])
    # an even count takes the faster middle launch
    assert S.median_run([{"update_s": t, "comm_share": 0, "wait_share": 0} for t in (3, 1, 4, 2)])["update_s"] == 2
    md = S.markdown({"family": "cpu", "device": "cpu", "when": "now", "host": "h", "threads_per_rank": 1,
                     "batch": 4, "steps": 1, "repeat": 3,
                     "points": [dict(p, input_size=[1, 1], parameters_W1=1, images_per_s=1, gflops_per_rank=1,
                                     peak_bytes=1, estimate_bytes=1) for p in got]})
    assert "| 50.0 (46.0-66.0) |" in md and f"| {sorted(rounds)[1]:.2f} ({min(rounds):.2f}-{max(rounds):.2f}) |" in md


def test_the_worker_is_a_module_entry_point_not_options_of_the_command(tmp_path):
    """``python -m repro.experiments.scaling.worker`` has its own --help; ``repro scaling-sweep`` neither
    lists nor accepts worker options; the launcher's options for every kind of point parse in the worker."""
    help_ = subprocess.run([sys.executable, "-m", launch.WORKER, "--help"], capture_output=True, text=True,
                           timeout=120)
    assert help_.returncode == 0 and "--largest" in help_.stdout and "--size" in help_.stdout
    res = CliRunner().invoke(_cli(), ["scaling-sweep", "--help"])
    assert res.exit_code == 0 and "--ranks" in res.output
    assert "worker" not in res.output.lower() and "--size " not in res.output
    for hidden in (["--worker"], ["--worker-json", "x.json"], ["--size", "2"]):
        bad = CliRunner().invoke(_cli(), ["scaling-sweep", *hidden])
        assert bad.exit_code == 2 and "No such option" in bad.output, hidden
    out = tmp_path / "p.json"
    for pt, kw in ((S.Point("weak", 2, 2), {}), (S.Point("largest", 1, 1), {"memory": 1 << 26, "fill": 0.5})):
        args = worker.parser().parse_args(launch.worker_args(pt, "mini", 4, 2, "cpu", out, **kw))
        assert (args.family, args.size, args.batch, args.steps, args.device, args.out) == ("mini", pt.size, 4, 2,
                                                                                            "cpu", str(out))
        assert args.largest == (pt.mode == "largest")
        if kw:
            assert (args.memory, args.fill) == (1 << 26, 0.5)


def test_the_package_loads_no_numpy_before_the_worker_sets_threads():
    """``python -m`` imports the package before the worker's first line, which must run before NumPy loads."""
    code = ("import sys, repro.experiments.scaling as S; assert 'numpy' not in sys.modules; "
            "S.sized_config; assert 'numpy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_worker_measures_under_mpiexec_and_a_failing_job_ends_with_one_line(tmp_path):
    out = tmp_path / "p.json"
    run_mpi(2, ["-m", launch.WORKER, "--device", "cpu", "--size", "2", "--batch", "4", "--steps", "1",
                "--out", str(out)], timeout=300)
    r = json.loads(out.read_text())
    assert r["ranks"] == 2 and r["family"] == "cpu" and len(r["per_rank"]) == 2 and r["update_s"] > 0
    assert r["parameters_W1"] == sum(S.sized_config("cpu", 2, 4).parameter_counts())
    # every rank fails (nothing fits 1 MB): the job ends at once, with one Error line and no traceback
    t0 = time.monotonic()
    bad = run_mpi(2, ["-m", launch.WORKER, "--device", "cpu", "--largest", "--family", "mini", "--memory", "1000000",
                      "--out", str(tmp_path / "q.json")], timeout=120, check=False)
    assert bad.returncode != 0 and time.monotonic() - t0 < 60
    errors = [ln for ln in (bad.stdout + bad.stderr).splitlines() if "Error: " in ln]
    assert len(errors) == 1 and "no input size fits" in errors[0] and "Traceback" not in bad.stderr
    assert launch._ERROR_LINE.fullmatch(errors[0])  # what the launcher reads back as the point's error
