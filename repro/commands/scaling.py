"""``repro scaling-sweep``: time the fine-tuning update over model sizes and rank counts, or project it.

Each point runs in its own ``mpiexec`` launch of ``python -m repro.experiments.scaling.worker``
(``repro/experiments/scaling/``); this command plans, launches, and prints and writes the results.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from repro import atomic
from repro.errors import ReproError
from repro.experiments.breakdown import Breakdown
from repro.experiments.scaling import (PAPER, Link, Point, add_efficiency, fmt_efficiency, fmt_ms,
                                       largest_document, launch_point, link_from_sweep, markdown, plan, plot,
                                       sweep, sweep_document)
from repro.experiments.scaling import project as project_paper  # the command's --project flag is "project"
from repro.model.memory import human
from repro.options import device_option, figure_options, out_console, print_table


def _ints(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter("needs one or more integers >= 1")
    return out


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """'80GB', '16GiB', '512MiB' or a plain number of bytes."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise click.BadParameter(f"a size such as 80GB, 16GiB or 512MiB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[unit])


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
@click.option("--largest", is_flag=True,
              help="Time the largest network of --family that fits the memory of each rank (per rank count in "
                   "--ranks; by repro's memory estimate) instead of a sweep; writes largest.json.")
@click.option("--memory", "memory", default=None, callback=_bytes,
              help="--largest: bytes per rank, e.g. 80GB or 16GiB [the GPU's free memory, or the node's available "
                   "memory shared among its ranks].")
@click.option("--fill", default=0.8, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="--largest: fraction of that memory the estimate may take (a measured update may exceed its "
                   "estimate; allocators fragment).")
@figure_options
@device_option
@click.pass_obj
def scaling_sweep(obj, ranks, sizes, mode, weak_base, family, batch, steps, repeat, threads, timeout, out, breakdown,  # noqa: ANN001
                  project, from_json, gflops, bandwidth_gbps, latency_us, ranks_per_link, project_family,
                  largest, memory, fill, dpi, formats) -> None:
    """Weak and strong scaling of the fine-tuning update (each point its own mpiexec launch), or --project.

    \b
    Examples:
      repro scaling-sweep --ranks 1,2,4 --sizes 1,2 --out results/scaling
      repro scaling-sweep --largest --ranks 1,2 --memory 16GiB
      repro scaling-sweep --project --from results/scaling/sweep.json
    """
    con = out_console()
    outdir = Path(out)
    if project:
        _project(con, outdir, from_json, gflops, bandwidth_gbps, latency_us, ranks_per_link, project_family)
        return
    device = "gpu" if obj.device == "gpu" else "cpu" if obj.device == "cpu" else "auto"
    if largest:
        _largest(con, outdir, ranks, family, batch, steps, threads, device, timeout, memory, fill)
        return

    def progress(r: int, pt) -> None:  # noqa: ANN001
        again = f" (round {r + 1} of {repeat})" if repeat > 1 else ""
        con.print(f"[dim]{pt.mode}: {pt.ranks} rank(s), size x{pt.size}{again} ...[/dim]")

    points = sweep(plan(ranks, sizes, mode, weak_base), repeat,
                   lambda pt: launch_point(pt, family, batch, steps, threads, device, timeout), progress)
    add_efficiency(points)
    doc = sweep_document(points, family, batch, steps, repeat, threads)
    atomic.write_json(outdir / "sweep.json", doc)
    for fmt in dict.fromkeys(formats):
        plot(points, outdir / f"sweep.{fmt}", f"{family} family, {doc['device']}, batch {batch}, {threads} thread(s)/rank",
             dpi=dpi)
    atomic.write_text(outdir / "README.md", markdown(doc))
    _print_points(con, points, outdir)
    if breakdown:
        weak = [p for p in points if p["mode"] == "weak"] or points
        p = max(weak, key=lambda q: (q["ranks"], q["size"]))
        b = p["breakdown_rank0"]
        bd = Breakdown([(r["stage"], r["phase"], r["op"], r["seconds"], r["calls"]) for r in b["rows"]],
                       b["update_s"], b["optimizer_s"])
        print_table(con, bd.table(f"rank 0 of {p['ranks']}, {p['config']} ({p['parameters_W1'] / 1e6:.1f}M W1), "
                           f"batch {batch}: one fine-tuning update"))
    con.print(f"wrote {outdir / 'sweep.json'}, {outdir / 'sweep.png'}, {outdir / 'README.md'}")


def _print_points(con: Console, points: list[dict], outdir: Path) -> None:
    # headers of short words, which wrap, and the rarer columns left to README.md: 80 columns suffice
    t = Table(title="fine-tuning update: scaling")
    for c in ("mode", "ranks", "size", "W1 params", "ms per update", "images per s", "GF/s per rank", "comm",
              "peak MiB per rank", "eff."):
        t.add_column(c, justify="left" if c == "mode" else "right")
    for p in points:
        t.add_row(p["mode"], str(p["ranks"]), f"x{p['size']}", f"{p['parameters_W1'] / 1e6:.2f}M",
                  fmt_ms(p), f"{p['images_per_s']:.1f}", f"{p['gflops_per_rank']:.2f}",
                  f"{100 * p['comm_share']:.1f}%", f"{p['peak_bytes'] / 2**20:.1f}", fmt_efficiency(p))
    print_table(con, t)
    con.print(f"[dim]GF/s = GFLOP/s of the LC GEMMs; comm = share of the update in communication; eff. = "
              f"parallel efficiency; estimated memory and weak efficiency per work: {outdir / 'README.md'}[/dim]")


def _largest(con: Console, outdir: Path, ranks: list[int], family: str, batch: int, steps: int, threads: int,
             device: str, timeout: float, memory: int | None, fill: float) -> None:
    """The largest network of the family that fits each rank count's memory, timed in its own launch."""
    points = []
    for n in ranks:
        con.print(f"[dim]largest {family} network on {n} rank(s) ...[/dim]")
        points.append(launch_point(Point("largest", n, 1), family, batch, steps, threads, device, timeout,
                                   memory=memory, fill=fill))
    doc = largest_document(points, family, batch, steps, threads)
    atomic.write_json(outdir / "largest.json", doc)
    t = Table(title=f"largest {family} network per rank count that fits, {doc['device_name']}, batch {batch}")
    for c in ("ranks", "input", "W1 params", "memory per rank", "est. per rank", "peak per rank", "ms per update",
              "images per s", "GF/s per rank", "comm"):
        t.add_column(c, justify="right")
    for p in points:
        n = p["parameters_W1"]
        t.add_row(str(p["ranks"]), f"{p['input_size'][0]}x{p['input_size'][1]}",
                  f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M",
                  human(p["memory_bytes"]), human(p["estimate_bytes"]), human(p["peak_bytes"]),
                  f"{p['update_s'] * 1e3:.1f}", f"{p['images_per_s']:.1f}", f"{p['gflops_per_rank']:.1f}",
                  f"{100 * p['comm_share']:.1f}%")
    print_table(con, t)
    con.print(f"[dim]memory per rank: {points[0]['memory_source']}; the estimate may take {fill:.0%} of it "
              "(--fill). GF/s: GFLOP/s, the LC GEMM work of one update over its time (x ranks for the whole "
              "job).[/dim]")
    con.print(f"wrote {outdir / 'largest.json'}")


def _project(con: Console, outdir: Path, from_json: str | None, gflops: float | None, bw: float | None,
             latency_us: float, ranks_per_link: int, family: str) -> None:
    source = "given"
    measured = {}
    if from_json:
        try:
            measured = link_from_sweep(json.loads(Path(from_json).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise ReproError(f"{from_json}: not a sweep JSON ({exc})") from None
        source = f"from {from_json}"
    link = Link(gflops=gflops or measured.get("gflops", 1000.0),
                bandwidth_gbps=bw or measured.get("bandwidth_gbps", 56.0),
                latency_us=latency_us, ranks_per_link=ranks_per_link)
    pts = project_paper(link, family)
    t = Table(title=f"projected fine-tuning update ({source}: {link.gflops:.1f} GFLOP/s per rank, "
                    f"{link.bandwidth_gbps:.1f} Gbit/s / {link.ranks_per_link}, {link.latency_us:.1f} us)")
    for c in ("ranks", "W1 params", "input", "compute ms", "comm ms", "update ms", "update vs 1 rank", "images per s",
              "halo MB per rank", "msgs", "images/s vs 1 rank"):
        t.add_column(c, justify="right")
    for p in pts:
        t.add_row(str(p["ranks"]), f"{p['parameters_W1'] / 1e9:.2f}B", f"{p['input_size'][0]}x{p['input_size'][1]}",
                  f"{p['compute_s'] * 1e3:.1f}", f"{p['comm_s'] * 1e3:.1f}", f"{p['update_s'] * 1e3:.1f}",
                  f"{p['time_vs_1']:.2f}x", f"{p['images_per_s']:.0f}", f"{p['halo_bytes'] / 1e6:.1f}",
                  str(p["messages"]), f"{p['throughput_x']:.1f}x")
    print_table(con, t)
    con.print(f"paper (Coates et al. 2013): 185M parameters on 1 GPU -> 11.2B on 64 GPUs; {PAPER['note']}; "
              f"up to {PAPER['max_throughput_x']:.0f}x throughput.")
    con.print("[dim]model: compute = the busiest rank's LC GEMM FLOPs / rate (pooling, LCN, elementwise and "
              "optimiser neglected); comm = busiest rank's messages x latency + bytes / bandwidth "
              "(every halo crosses the network, no overlap with compute, no PCIe staging, no contention "
              "beyond --ranks-per-link).[/dim]")
    atomic.write_json(outdir / "projection.json", {"link": link.__dict__, "source": source, "family": family,
                                                     "paper": PAPER, "points": pts})
    con.print(f"wrote {outdir / 'projection.json'}")
