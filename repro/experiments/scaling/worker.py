"""The entry point every point of a sweep runs: ``mpiexec -n P python -m repro.experiments.scaling.worker``.

It measures one configuration on the P ranks of its launch and rank 0 writes the result as JSON
(``launch.py`` starts it and reads that file). It is a module of its own, not hidden options of
``repro scaling-sweep``, so that the user's command holds only the user's options and the launcher's
contract with the worker is this file's ``parser``.

Like ``repro`` itself (``repro/cli.py``) it fixes the threads per rank before NumPy loads, and any
error on any rank ends the whole MPI job (``comm.abort_on_error``) rather than leaving the other
ranks waiting in a collective until the sweep's timeout. Bad input is one ``Error:`` line.

    python -m repro.experiments.scaling.worker --family cpu --size 2 --batch 4 --steps 1
    mpiexec -n 2 python -m repro.experiments.scaling.worker --largest --family mini --memory 50000000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from repro.engine import threads

threads.configure()  # before NumPy loads: BLAS reads its thread count once

from repro import atomic  # noqa: E402
from repro.engine import comm  # noqa: E402
from repro.errors import ReproError  # noqa: E402
from repro.experiments.run import open_session  # noqa: E402
from repro.experiments.scaling.growth import base_config, largest_config, rank_memory_bytes, sized_config  # noqa: E402
from repro.experiments.scaling.measure import measure_update  # noqa: E402


def _at_least(lo: float, kind: type) -> Any:
    def parse(text: str) -> Any:
        v = kind(text)
        if v < lo:
            raise argparse.ArgumentTypeError(f"needs a number >= {lo}, got {text}")
        return v
    return parse


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.05 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"needs a fraction in [0.05, 1], got {text}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.experiments.scaling.worker",
                                description="Time the fine-tuning update of one configuration on the ranks of "
                                            "this MPI job; rank 0 writes the result (one scaling-sweep point).")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="Array backend [auto].")
    p.add_argument("--family", default="cpu", help="Model family: 'cpu', or a config name / .toml [cpu].")
    p.add_argument("--size", type=_at_least(1, int), default=1, help="x the family base's W1 weights [1].")
    p.add_argument("--batch", type=_at_least(1, int), default=16, help="Minibatch size [16].")
    p.add_argument("--steps", type=_at_least(1, int), default=3, help="Timed updates after one warm-up [3].")
    p.add_argument("--out", default=None, help="JSON file for rank 0's result [print it on stdout].")
    p.add_argument("--largest", action="store_true",
                   help="Time the largest input of --family whose memory estimate fits each rank (ignores --size).")
    p.add_argument("--memory", type=_at_least(1, int), default=None,
                   help="--largest: bytes per rank [the GPU's free memory, or the node's available memory "
                        "shared among its ranks].")
    p.add_argument("--fill", type=_fraction, default=0.8, help="--largest: fraction of it the estimate may take [0.8].")
    return p


def run(args: argparse.Namespace) -> None:
    """Measure the configuration ``args`` name on this job's ranks; rank 0 writes or prints the result."""
    session = open_session(args.device, run=str(Path(args.out).parent) if args.out else ".", create=False)
    if not args.largest:
        cfg, fit = sized_config(args.family, args.size, args.batch), {}
    else:
        budget = args.memory or rank_memory_bytes(session.xp, session.w)
        base = base_config(args.family).with_train(batch=args.batch)
        cfg, need = largest_config(base, session.w.size, args.batch, int(budget * args.fill), session.backend.is_gpu,
                                   f"{base.name}-largest")
        fit = {"memory_bytes": int(budget), "memory_source": "given" if args.memory else "measured",
               "fill": args.fill, "estimate_chosen_bytes": need}
    r = measure_update(cfg, args.batch, args.steps, xp=session.xp)
    if session.w.is_root:
        r["family"] = args.family
        r.update(fit)
        if args.out:
            atomic.write_json(Path(args.out), r)
        else:
            print(json.dumps(r))


def main(argv: list[str] | None = None) -> None:
    """Any error on any rank ends every rank; a ``ReproError`` is one ``Error:`` line, as in ``repro``."""
    with comm.abort_on_error():
        args = parser().parse_args(argv)
        try:
            run(args)
        except ReproError as exc:
            comm.report_and_abort(f"Error: {exc.message}", exc.exit_code)


if __name__ == "__main__":
    main()
