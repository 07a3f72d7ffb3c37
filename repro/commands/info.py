"""``repro info``: a network's layers and parameter counts, and the bytes each rank will need."""
from __future__ import annotations

import math

import click
from rich.table import Table

from repro import atomic
from repro.engine.backend import gpu_available
from repro.model.config import load_config
from repro.model.memory import binary_unit, estimate, flops_per_update
from repro.options import device_option, out_console, print_table

def _in(n: float, scale: int) -> str:
    x = n / scale
    return f"{x:,.1f}" if x >= 0.1 or x == 0 else f"{x:.1g}"


@click.command("info")
@click.option("--config", "config_name", default="faces32", show_default=True, help="Built-in config name (faces32, mini, le2012) or a .toml path.")
@click.option("--ranks", default=1, show_default=True, type=click.IntRange(1), help="MPI ranks to plan for.")
@click.option("--batch", default=None, type=click.IntRange(1), help="Minibatch size (default: the config's).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the figures as JSON (bytes, not rounded).")
@device_option
@click.pass_context
def info(ctx: click.Context, config_name: str, ranks: int, batch: int | None, json_out: str | None) -> None:
    """Layers, parameter counts, and per-rank bytes of parameters, optimizer state, activations and halos.

    --device gpu plans for the GPU kernels' workspace (nothing runs: no GPU is needed).

    \b
    Examples:
      repro info --config le2012 --ranks 16
      repro info --config my.toml --ranks 4 --batch 32 --device gpu --json plan.json
    """
    cfg = load_config(config_name)
    batch = batch or cfg.train.batch
    con = out_console()
    t = Table(title=f"{cfg.name}: {cfg.notes}" if cfg.notes else cfg.name)
    for col in ("stage", "sublayer", "maps x H x W", "window/stride", "W1 params"):
        t.add_column(col, justify="right" if col == "W1 params" else "left")
    layers = []
    H, W = cfg.input_size
    if cfg.input_lcn:  # the input's contrast normalisation keeps its size
        t.add_row("input", "LCN (same size)", f"{cfg.channels} x {H} x {W}",
                  f"{cfg.input_lcn}x{cfg.input_lcn}, sigma {cfg.input_lcn_sigma:g}, eps {cfg.input_lcn_eps:g}", "")
    for i, (s, shp) in enumerate(zip(cfg.stages, cfg.stage_shapes())):
        n = math.prod(cfg.weight_shape(i))
        rows = [("filter (LC)", shp["filter"], f"{s.filter}x{s.filter} / {s.stride}", n),
                ("L2 pool", shp["pool"], f"{s.pool}x{s.pool} / {s.pool_stride}", 0),
                ("LCN", shp["lcn"], f"{s.lcn}x{s.lcn} / 1" if s.lcn else "none", 0)]
        for name, (h, w), win, params in rows:
            t.add_row(str(i), name, f"{s.maps} x {h} x {w}", win, f"{params:,}" if params else "")
            layers.append({"stage": i, "sublayer": name, "maps": s.maps, "height": h, "width": w, "parameters": params})
    total = sum(cfg.parameter_counts())
    t.add_row("", "total", "", "", f"{total:,}")
    print_table(con, t)
    con.print(f"input {cfg.channels} x {H} x {W}; decoder "
              + ("tied: W1 transposed, no W2" if cfg.rica.tied else f"W2: another {total:,} parameters"))

    gpu = ctx.obj.device == "gpu" or (ctx.obj.device == "auto" and gpu_available())
    mem = estimate(cfg, ranks, batch, gpu=gpu)
    shown = mem if ranks <= 16 else [max(mem, key=lambda r: r.total), min(mem, key=lambda r: r.total)]
    scale, unit = binary_unit(max(r.total for r in shown))  # one unit per table, named in its title
    m = Table(title=f"{unit} per rank: {ranks} rank(s), batch {batch}, float32, one fine-tuning update, "
                    f"{'GPU' if gpu else 'CPU'} kernels")
    for col in ("rank", "tile", "params", "grads", "optim", "activ.", "halos", "work", "total"):
        m.add_column(col, justify="right")
    for r in shown:
        y0, y1, x0, x1 = r.tile
        m.add_row(str(r.rank), f"{y0}:{y1}, {x0}:{x1}", *(_in(v, scale) for v in (
            r.parameters, r.gradients, r.optimizer, r.activations, r.halos, r.workspace, r.total)))
    print_table(con, m)
    con.print("tile = the rank's part of the first filter layer (y0:y1, x0:x1); halos are part of activ.; "
              "work = largest kernel temporary")
    if ranks > 16:
        con.print("(largest and smallest rank shown)")
    gf = flops_per_update(cfg, batch)
    con.print(f"LC work per fine-tuning update: {gf / 1e9:,.1f} GFLOP ({gf / 1e9 / ranks:,.1f} per rank)")
    if json_out:
        out = {"config": cfg.name, "ranks": ranks, "batch": batch, "device": "gpu" if gpu else "cpu", "parameters_W1": total, "layers": layers,
               "flops_per_update": gf, "per_rank": [r.as_dict() for r in mem]}
        atomic.write_json(json_out, out)
