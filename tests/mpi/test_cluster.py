"""Running under a batch system: SIGTERM/SIGUSR1/Ctrl-C checkpoint and exit with a documented code,
progress reaches a log file that is not a terminal, and each rank gets its share of the cores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from support.cli import invoke
from support.mpi import mpiexec_path, run_mpi
from repro.engine import threads
from repro.engine.stop import EXIT_INTERRUPTED, EXIT_STOPPED

TRAIN = ["-m", "repro.cli", "--device", "cpu", "train", "--config", "mini", "--layer-steps", "500", "--finetune-steps",
         "0", "--batch", "16", "--checkpoint-every", "10000", "--optimizer", "sgd", "--lr", "0.0005"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert invoke("data", "prepare", "mini", "--root", root).exit_code == 0
    return root


def env1():
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_steps(run):
    p = run / "train-log.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_sigterm_under_mpiexec_checkpoints_exits_75_and_resume_matches(tmp_path, data_root):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_mpi(2, [*TRAIN, "--out", str(full), "--root", str(data_root)])
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        started = time.monotonic()
        p = subprocess.Popen([mpiexec_path(), "-n", "2", sys.executable, *TRAIN, "--out", str(cut), "--root",
                              str(data_root), "--progress-every", "1"], stdout=subprocess.PIPE, stderr=fh, text=True,
                             env=env1())
        try:
            # a log that is not a terminal gets a plain progress line soon after the start, from rank 0 only
            wait_for(lambda: " step 1/1500 " in err.read_text(), 10, "the first progress line")
            assert time.monotonic() - started < 10
            wait_for(lambda: log_steps(cut) >= 20, 60, "20 logged steps")
            p.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            out, _ = p.communicate(timeout=30)
            assert time.monotonic() - t0 < 5
        finally:
            p.kill()
    text = err.read_text()
    assert p.returncode == EXIT_STOPPED, text
    assert text.count(" step 1/1500 ") == 1
    s = json.loads((cut / "train.json").read_text())
    assert s["stopped_by"] == "SIGTERM" and 20 <= s["steps_done"] < 1500 and not s["finished"]
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["step"] == s["steps_done"]
    assert log_steps(cut) == s["steps_done"]
    assert f"stopped at step {s['steps_done']} of 1500" in text and f"--out {cut} --resume" in text
    run_mpi(2, ["-m", "repro.cli", "--device", "cpu", "train", "--out", str(cut), "--resume", "--root", str(data_root)])
    for run in (full, cut):
        assert invoke("export", "--checkpoint", run, "--out", run / "w.npz").exit_code == 0
    a, b = np.load(full / "w.npz"), np.load(cut / "w.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [g["stopped_by"] for g in json.loads((cut / "train.json").read_text())["segments"] if "stopped_by" in g] \
        == ["SIGTERM"]


@pytest.mark.parametrize("sig,code", [(signal.SIGUSR1, EXIT_STOPPED), (signal.SIGINT, EXIT_INTERRUPTED)])
def test_sigusr1_and_ctrl_c_stop_with_a_checkpoint(tmp_path, data_root, sig, code):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, *TRAIN, "--out", str(run), "--root", str(data_root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env1())
    try:
        wait_for(lambda: log_steps(run) >= 10, 60, "10 logged steps")
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == code, err
    step = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert f"stopped at step {step} of 1500" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.parametrize("env,cores,all_cores,expect", [
    ({}, 8, 8, (8, "8 cores / 1 rank(s) on this node")),
    ({"MPI_LOCALNRANKS": "4"}, 8, 8, (2, "8 cores / 4 rank(s) on this node")),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, 8, 8, (2, "8 cores / 3 rank(s) on this node")),
    ({"MPI_LOCALNRANKS": "16"}, 8, 8, (1, "8 cores / 16 rank(s) on this node")),
    ({"MPI_LOCALNRANKS": "4"}, 2, 8, (2, "the cores this rank is bound to")),
    ({"MPI_LOCALNRANKS": "4", "SLURM_CPUS_PER_TASK": "3"}, 8, 8, (3, "SLURM_CPUS_PER_TASK")),
    ({"MPI_LOCALNRANKS": "4", "OMP_NUM_THREADS": "5"}, 8, 8, (5, "OMP_NUM_THREADS")),
    ({"REPRO_THREADS": "6", "OMP_NUM_THREADS": "5"}, 8, 8, (6, "REPRO_THREADS")),
])
def test_threads_per_rank(env, cores, all_cores, expect):
    assert threads.decide(env, cores, all_cores) == expect


def test_ranks_on_one_node_share_the_cores():
    code = "import repro.cli, os; print(os.environ['OMP_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k not in (*threads.THREAD_VARS, "REPRO_THREADS", "SLURM_CPUS_PER_TASK")}
    p = subprocess.run([mpiexec_path(), "-n", "2", sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(threads.decide(env | {"MPI_LOCALNRANKS": "2"})[0])] * 2
    assert threads.decide(env | {"MPI_LOCALNRANKS": "2"}, 2, 2)[0] == 1  # this machine's case: 2 cores, 2 ranks
