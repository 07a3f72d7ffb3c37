"""``repro scaling-sweep``: time the fine-tuning update over model sizes and rank counts, or project it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from repro import atomic
from rich.console import Console
from rich.table import Table

from repro.errors import ReproError


def _ints(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter("needs one or more integers >= 1")
    return out


@click.command("scaling-sweep")
@click.option("--ranks", default="1,2", show_default=True, callback=_ints, help="Rank counts, comma-separated.")
@click.option("--sizes", default="1,2", show_default=True, callback=_ints,
              help="Strong scaling: model sizes (x the family base's parameters) each timed on every rank count.")
@click.option("--mode", type=click.Choice(["weak", "strong", "both"]), default="both", show_default=True,
              help="weak: size = ranks x --weak-base; strong: each of --sizes on every rank count.")
@click.option("--weak-base", default=1, show_default=True, type=click.IntRange(1), help="Weak scaling: size per rank.")
@click.option("--family", default="cpu", show_default=True,
              help="Model family: 'cpu' (small 2-stage base), or a config name / .toml whose stages are grown.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1), help="Minibatch size.")
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1), help="Timed updates per point.")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1),
              help="Launch every configuration this many times, round-robin; report the median launch, the "
                   "range, and the median of each round's efficiency (for shared, noisy machines).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="BLAS/kernel threads per rank.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds allowed per configuration.")
@click.option("--out", default="results/scaling", show_default=True, help="Folder for sweep.json / sweep.png.")
@click.option("--breakdown/--no-breakdown", default=True, show_default=True,
              help="Print rank 0's per-stage time breakdown of the largest weak point.")
@click.option("--project", is_flag=True, help="Predict the paper's 1..64-GPU configurations instead of measuring.")
@click.option("--from", "from_json", type=click.Path(exists=True, dir_okay=False),
              help="--project: take the compute rate (and an effective bandwidth) from a sweep JSON.")
@click.option("--gflops", type=float, default=None, help="--project: per-rank GFLOP/s on the LC GEMMs [1000].")
@click.option("--bandwidth-gbps", type=float, default=None, help="--project: link bandwidth, Gbit/s [56, FDR IB].")
@click.option("--latency-us", type=float, default=1.0, show_default=True, help="--project: per-message latency.")
@click.option("--ranks-per-link", default=1, show_default=True, type=click.IntRange(1),
              help="--project: ranks sharing one adapter's bandwidth (paper's servers: 4 GPUs per HCA).")
@click.option("--project-family", default="le2012", show_default=True, help="--project: stage shapes to grow.")
@click.option("--worker", is_flag=True, hidden=True)
@click.option("--size", default=1, type=click.IntRange(1), hidden=True)
@click.option("--worker-json", default=None, hidden=True)
@click.pass_obj
def scaling_sweep(obj, ranks, sizes, mode, weak_base, family, batch, steps, repeat, threads, timeout, out, breakdown,  # noqa: ANN001
                  project, from_json, gflops, bandwidth_gbps, latency_us, ranks_per_link, project_family,
                  worker, size, worker_json) -> None:
    """Weak and strong scaling of the fine-tuning update (each point its own mpiexec launch), or --project."""
    from repro.experiments import scaling as S

    if worker:
        _worker(obj.device, family, size, batch, steps, worker_json)
        return
    con = Console(width=None if sys.stdout.isatty() else 150)  # wide tables also when piped to a file
    outdir = Path(out)
    if project:
        _project(con, outdir, from_json, gflops, bandwidth_gbps, latency_us, ranks_per_link, project_family)
        return
    device = "gpu" if obj.device == "gpu" else "cpu" if obj.device == "cpu" else "auto"
    def progress(r: int, pt) -> None:  # noqa: ANN001
        again = f" (round {r + 1} of {repeat})" if repeat > 1 else ""
        con.print(f"[dim]{pt.mode}: {pt.ranks} rank(s), size x{pt.size}{again} ...[/dim]")

    points = S.sweep(S.plan(ranks, sizes, mode, weak_base), repeat,
                     lambda pt: S.launch(pt, family, batch, steps, threads, device, timeout), progress)
    S.add_efficiency(points)
    doc = {"family": family, "device": points[0]["device"], "batch": batch, "steps": steps, "repeat": repeat,
           "threads_per_rank": threads, "when": S.now(), "host": S.host_info(), "points": points,
           "load_average": list(os.getloadavg()),
           "notes": f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
                    f"on {os.cpu_count()} CPUs (other processes share them: timings are noisy)."}
    S.write_json_atomic(outdir / "sweep.json", doc)
    S.plot(points, outdir / "sweep.png", f"{family} family, {doc['device']}, batch {batch}, {threads} thread(s)/rank")
    atomic.write_text(outdir / "README.md", S.markdown(doc))
    _print_points(con, points)
    if breakdown:
        weak = [p for p in points if p["mode"] == "weak"] or points
        p = max(weak, key=lambda q: (q["ranks"], q["size"]))
        from repro.engine.timing import Breakdown

        b = p["breakdown_rank0"]
        bd = Breakdown([(r["stage"], r["phase"], r["op"], r["seconds"], r["calls"]) for r in b["rows"]],
                       b["update_s"], b["optimizer_s"])
        con.print(bd.table(f"rank 0 of {p['ranks']}, {p['config']} ({p['parameters_W1'] / 1e6:.1f}M W1), "
                           f"batch {batch}: one fine-tuning update"))
    con.print(f"wrote {outdir / 'sweep.json'}, {outdir / 'sweep.png'}, {outdir / 'README.md'}")


def _print_points(con: Console, points: list[dict]) -> None:
    from repro.experiments import scaling as S

    t = Table(title="fine-tuning update: scaling")
    for c in ("mode", "ranks", "size", "W1 params", "ms/update", "images/s", "GFLOP/s/rank", "comm", "peak/rank",
              "est./rank", "efficiency", "weak eff./work"):
        t.add_column(c, justify="left" if c == "mode" else "right")
    for p in points:
        t.add_row(p["mode"], str(p["ranks"]), f"x{p['size']}", f"{p['parameters_W1'] / 1e6:.2f}M",
                  S.fmt_ms(p), f"{p['images_per_s']:.1f}", f"{p['gflops_per_rank']:.2f}",
                  f"{100 * p['comm_share']:.1f}%", f"{p['peak_bytes'] / 2**20:.1f} MiB",
                  f"{p['estimate_bytes'] / 2**20:.1f} MiB", S.fmt_efficiency(p),
                  f"{p['efficiency_work']:.2f}" if "efficiency_work" in p else "")
    con.print(t)


def _worker(device: str, family: str, size: int, batch: int, steps: int, out: str | None) -> None:
    from repro.experiments import scaling as S
    from repro.experiments.run import open_session

    session = open_session(device, run=str(Path(out).parent) if out else ".", create=False)
    cfg = S.sized_config(family, size, batch)
    r = S.measure(cfg, batch, steps, xp=session.xp)
    if session.w.is_root:
        r["family"] = family
        if out:
            S.write_json_atomic(Path(out), r)
        else:
            click.echo(json.dumps(r))


def _project(con: Console, outdir: Path, from_json: str | None, gflops: float | None, bw: float | None,
             latency_us: float, ranks_per_link: int, family: str) -> None:
    from repro.experiments import scaling as S

    source = "given"
    measured = {}
    if from_json:
        try:
            measured = S.link_from_sweep(json.loads(Path(from_json).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise ReproError(f"{from_json}: not a sweep JSON ({exc})") from None
        source = f"from {from_json}"
    link = S.Link(gflops=gflops or measured.get("gflops", 1000.0),
                  bandwidth_gbps=bw or measured.get("bandwidth_gbps", 56.0),
                  latency_us=latency_us, ranks_per_link=ranks_per_link)
    pts = S.project(link, family)
    t = Table(title=f"projected fine-tuning update ({source}: {link.gflops:.1f} GFLOP/s per rank, "
                    f"{link.bandwidth_gbps:.1f} Gbit/s / {link.ranks_per_link}, {link.latency_us:.1f} us)")
    for c in ("ranks", "W1 params", "input", "compute ms", "comm ms", "update ms", "vs 1 rank", "images/s",
              "halo MB/rank", "msgs", "throughput x"):
        t.add_column(c, justify="right")
    for p in pts:
        t.add_row(str(p["ranks"]), f"{p['parameters_W1'] / 1e9:.2f}B", f"{p['input_size'][0]}x{p['input_size'][1]}",
                  f"{p['compute_s'] * 1e3:.1f}", f"{p['comm_s'] * 1e3:.1f}", f"{p['update_s'] * 1e3:.1f}",
                  f"{p['time_vs_1']:.2f}x", f"{p['images_per_s']:.0f}", f"{p['halo_bytes'] / 1e6:.1f}",
                  str(p["messages"]), f"{p['throughput_x']:.1f}")
    con.print(t)
    con.print(f"paper (Coates et al. 2013): 185M parameters on 1 GPU -> 11.2B on 64 GPUs; {S.PAPER['note']}; "
              f"up to {S.PAPER['max_throughput_x']:.0f}x throughput.")
    con.print("[dim]model: compute = the busiest rank's LC GEMM FLOPs / rate (pooling, LCN, elementwise and "
              "optimiser neglected); comm = busiest rank's messages x latency + bytes / bandwidth "
              "(every halo crosses the network, no overlap with compute, no PCIe staging, no contention "
              "beyond --ranks-per-link).[/dim]")
    S.write_json_atomic(outdir / "projection.json", {"link": link.__dict__, "source": source, "family": family,
                                                     "paper": S.PAPER, "points": pts})
    con.print(f"wrote {outdir / 'projection.json'}")
