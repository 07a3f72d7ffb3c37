"""What a sweep's measurements become: efficiencies, the JSON documents, the Markdown table and the plot.

Pure functions of the measured points (no MPI, no timing), so they can be checked on made-up points.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from repro import atomic
from repro.report import figure_format


def add_efficiency(points: list[dict[str, Any]]) -> None:
    """Weak: t(fewest ranks) / t(n) with the model grown in proportion. Strong: speedup and speedup
    per added rank, per size. ``throughput_x``: LC work per second relative to the reference run.

    With repeated launches (``runs``), ``efficiency`` is the median over rounds of each round's
    ratio (the two launches of a round ran minutes apart at most), ``efficiency_rounds`` every
    round's; without, the ratio of the two update times."""
    for p in points:
        same = [q for q in points if q["mode"] == p["mode"] and (p["mode"] == "weak" or q["size"] == p["size"])]
        r0 = min(same, key=lambda q: q["ranks"])
        p["throughput_x"] = (p["flops_per_update"] / p["update_s"]) / (r0["flops_per_update"] / r0["update_s"])
        per_rank = r0["ranks"] / p["ranks"]
        t0s = [r["update_s"] for r in r0.get("runs", [{"update_s": r0["update_s"]}])]
        ts = [r["update_s"] for r in p.get("runs", [{"update_s": p["update_s"]}])]
        if len(t0s) != len(ts):  # not from one round-robin sweep: compare the medians only
            t0s, ts = [r0["update_s"]], [p["update_s"]]
        rounds = [a / b * (1.0 if p["mode"] == "weak" else per_rank) for a, b in zip(t0s, ts)]
        p["efficiency"] = float(np.median(rounds))
        if len(rounds) > 1 and p is not r0:
            p["efficiency_rounds"] = rounds
        if p["mode"] == "weak":
            # the grown model is only about n x the reference (valid layers shrink): per unit of work
            p["efficiency_work"] = p["efficiency"] * (p["flops_per_update"] / r0["flops_per_update"]) * per_rank
        else:
            p["speedup"] = p["efficiency"] / per_rank


def host_info() -> str:
    return f"{platform.node() or 'host'} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def sweep_document(points: list[dict[str, Any]], family: str, batch: int, steps: int, repeat: int,
                   threads: int) -> dict[str, Any]:
    """sweep.json: the points (efficiencies added) and what they ran on, with the load at the end."""
    load = os.getloadavg()
    return {"family": family, "device": points[0]["device"], "batch": batch, "steps": steps, "repeat": repeat,
            "threads_per_rank": threads, "when": now(), "host": host_info(), "points": points,
            "load_average": list(load),
            "notes": f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load)} "
                     f"on {os.cpu_count()} CPUs (other processes share them: timings are noisy)."}


def largest_document(points: list[dict[str, Any]], family: str, batch: int, steps: int, threads: int
                     ) -> dict[str, Any]:
    """largest.json: the largest network per rank count, and what it ran on."""
    return {"family": family, "device": points[0]["device"], "device_name": points[0]["device_name"],
            "batch": batch, "steps": steps, "threads_per_rank": threads, "when": now(), "host": host_info(),
            "points": points, "load_average": list(os.getloadavg())}


def plot(points: list[dict[str, Any]], path: Path, title: str, dpi: int = 110) -> None:
    """Update time and efficiency against ranks, weak and strong (format from the suffix, written atomically)."""
    # imported here: matplotlib is slow to load, and of scaling-sweep's modes only a sweep draws
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("weak", "o"), ("strong", "s")):
        sizes = sorted({p["size"] for p in points if p["mode"] == mode}) if mode == "strong" else [None]
        for m in sizes:
            pts = sorted((p for p in points if p["mode"] == mode and (m is None or p["size"] == m)),
                         key=lambda p: p["ranks"])
            if not pts:
                continue
            lab = "weak (model grows with ranks)" if mode == "weak" else f"strong (size x{m})"
            x = [p["ranks"] for p in pts]
            t = [p["update_s"] * 1e3 for p in pts]
            spread = [[ti - p.get("update_s_min", p["update_s"]) * 1e3 for ti, p in zip(t, pts)],
                      [p.get("update_s_max", p["update_s"]) * 1e3 - ti for ti, p in zip(t, pts)]]
            a.errorbar(x, t, yerr=spread, marker=marker, capsize=3, label=lab)  # range of repeated launches
            e = [p["efficiency"] for p in pts]
            rounds = [p.get("efficiency_rounds", [p["efficiency"]]) for p in pts]
            b.errorbar(x, e, yerr=[[ei - min(r) for ei, r in zip(e, rounds)], [max(r) - ei for ei, r in zip(e, rounds)]],
                       marker=marker, capsize=3, label=lab)
    a.set(xlabel="ranks", ylabel="ms per update", title="fine-tuning update time")
    b.set(xlabel="ranks", ylabel="efficiency", title="scaling efficiency", ylim=(0, 1.2))
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=dpi, format=figure_format(path))


def fmt_ms(p: dict[str, Any]) -> str:
    """Update time in ms, with the range of repeated launches in brackets."""
    ms = f"{p['update_s'] * 1e3:.1f}"
    if len(p.get("runs", [])) > 1:
        ms += f" ({p['update_s_min'] * 1e3:.1f}-{p['update_s_max'] * 1e3:.1f})"
    return ms


def fmt_efficiency(p: dict[str, Any]) -> str:
    """Efficiency, with the range over rounds of repeated launches in brackets."""
    r = p.get("efficiency_rounds")
    return f"{p['efficiency']:.2f}" + (f" ({min(r):.2f}-{max(r):.2f})" if r else "")


def markdown(doc: dict[str, Any]) -> str:
    """The sweep as a Markdown table (results/scaling/README.md, results/reference/scaling-cpu.md)."""
    lines = [f"# Scaling sweep: {doc['family']} family, {doc['device']}", "",
             f"{doc['when']}; {doc['host']}; {doc['threads_per_rank']} thread(s) per rank; batch {doc['batch']}; "
             f"mean of {doc['steps']} updates after 1 warm-up.", "",
             "| mode | ranks | size | input | W1 params | ms/update | images/s | GFLOP/s/rank | comm % | "
             "MPI wait % | peak MiB/rank | est. MiB/rank | efficiency | weak eff. per work |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in doc["points"]:
        per_work = f"{p['efficiency_work']:.2f}" if "efficiency_work" in p else ""
        lines.append(
            f"| {p['mode']} | {p['ranks']} | x{p['size']} | {p['input_size'][0]}x{p['input_size'][1]} | "
            f"{p['parameters_W1'] / 1e6:.2f}M | {fmt_ms(p)} | {p['images_per_s']:.1f} | "
            f"{p['gflops_per_rank']:.2f} | {100 * p['comm_share']:.1f} | {100 * p['wait_share']:.1f} | "
            f"{p['peak_bytes'] / 2**20:.1f} | {p['estimate_bytes'] / 2**20:.1f} | {fmt_efficiency(p)} | {per_work} |")
    repeat = doc.get("repeat", 1)
    lines += ["", "efficiency: weak = t(1 rank) / t(n ranks, n x the model); strong = speedup / n. "
              "Weak, per work: LC FLOP/s per rank at n over the same at 1 rank (the grown model is only "
              "about n x the reference)."]
    if repeat > 1:
        lines += [f"{repeat} launches of every point, round-robin: each row is the median launch (range in "
                  "brackets); efficiency is the median over rounds of each round's ratio (range in brackets)."]
    lines += [
              "comm %: halo fetch + scatter-add + loss all-reduce (window copies included) over the update, "
              "largest rank; MPI wait %: the Waitall part alone.",
              "peak: held parameters/optimiser state/images + tracemalloc peak of one update (CPU); "
              "est.: repro.model.memory.estimate, largest rank.", ""]
    if doc.get("notes"):
        lines += [doc["notes"], ""]
    return "\n".join(lines)
