"""repro.model.memory.estimate against what one fine-tuning update really allocates.

NumPy reports its allocations to tracemalloc, so its peak, traced from before the network is
built through two updates (the second one has the optimiser state already), is the bytes of
arrays a rank holds at its worst moment. The estimate may be generous; it must not be short by
more than 25%.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from support.mpi import run_mpi

MEASURE = textwrap.dedent("""
    import json, sys, tracemalloc
    import numpy as np
    from repro.engine.comm import world
    from repro.model.config import load_config
    from repro.model.memory import estimate
    from repro.model.network import Network, apply_update
    from repro.model.optim import Optimizer

    def measure(name, batch):
        w = world()
        cfg = load_config(name).with_train(batch=batch)
        images = np.random.default_rng(0).standard_normal((batch, cfg.channels, *cfg.input_size)).astype(np.float32)
        tracemalloc.start()
        tracemalloc.reset_peak()
        net, opt = Network.create(cfg, 0, np, world()), Optimizer.from_config(cfg.train)
        for _ in range(2):
            _, grads = net.finetune_loss_and_grads(images)
            apply_update(net, opt, grads)
            del grads
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        est = estimate(cfg, w.size, batch)[w.rank]
        return {"rank": w.rank, "peak": peak, "estimate": est.total, "parts": est.as_dict()}

    if __name__ == "__main__":
        r = world().allgather(measure(sys.argv[1], int(sys.argv[2])))
        if world().rank == 0:
            open(sys.argv[3], "w").write(json.dumps(r))
""")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    p = tmp_path_factory.mktemp("mem") / "measure_memory.py"
    p.write_text(MEASURE)
    return p


@pytest.mark.parametrize("ranks", [1, 2])
def test_measured_peak_within_estimate(ranks, script, tmp_path):
    out = tmp_path / "m.json"
    run_mpi(ranks, [str(script), "mini", "32", str(out)], env={"REPRO_KERNEL_THREADS": "2"})
    for r in json.loads(out.read_text()):
        ratio = r["peak"] / r["estimate"]
        assert ratio <= 1.25, f"rank {r['rank']} of {ranks}: measured {r['peak']} B, estimate {r['estimate']} B"
        assert ratio > 0.3, f"estimate far too generous on rank {r['rank']}: {r}"  # it should still mean something


def test_le2012_fits_an_80GB_gpu_per_rank():
    from repro.model.config import load_config
    from repro.model.memory import estimate

    cfg = load_config("le2012")
    for ranks in (1, 4, 16):
        worst = max(m.total for m in estimate(cfg, ranks, cfg.train.batch))
        assert worst < 80e9, f"{ranks} rank(s): {worst / 2**30:.1f} GiB"
