"""``repro export``: every parameter of a checkpoint, gathered, as a plain .npz keyed by name."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from repro import atomic
from repro.engine.comm import world
from repro.errors import ReproError
from repro.model import checkpoint as ckpt
from repro.model.network import param_names
from repro.options import out_console


@click.command("export")
@click.option("--checkpoint", required=True, help="Checkpoint folder, or a run / checkpoints folder (its latest).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option("--with-optimizer", is_flag=True, help="Include the optimizer state too.")
def export(checkpoint: str, out_path: str, with_optimizer: bool) -> None:
    """Write W1 and W2 of every stage (stageN.W1 ...) as whole arrays, from a checkpoint of any rank count."""
    if world().rank != 0:  # one writer, however the command was launched
        return
    path, manifest = ckpt.read_manifest(checkpoint)
    cfg = ckpt.config_of(path)
    names = [n for n in manifest["shapes"] if with_optimizer or n in param_names(cfg)]
    wanted = {n: (0, manifest["shapes"][n][0], 0, manifest["shapes"][n][1]) for n in names}
    arrays, _ = ckpt.load_tiles(path, wanted)
    out = Path(out_path)
    if out.suffix != ".npz":
        raise ReproError(f"{out}: the output file must end in .npz")
    try:
        with atomic.target(out) as tmp:
            np.savez(tmp, **arrays)
    except OSError as exc:
        raise ReproError(f"{out}: cannot write ({exc.strerror})") from None
    n = sum(a.size for k, a in arrays.items() if k in param_names(cfg))
    out_console().print(f"wrote {out}: {len(arrays)} arrays, {n:,} parameters, step {manifest['step']}")
