"""``repro export``: every parameter of a checkpoint, gathered, as a plain .npz keyed by name, with
the config and the axis order of every array inside (``__meta__.json``), so that the file is usable
without repro and without pickles."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from repro import atomic
from repro.engine.comm import world
from repro.errors import ReproError
from repro.model import checkpoint as ckpt
from repro.model.network import param_names
from repro.options import out_console

META = "__meta__.json"  # the member that describes the others; np.load(f)[META].item() is its JSON text
# ARCHITECTURE.md's contract: y[b, f, oy, ox] = sum_{c,ky,kx} W[oy, ox, f, c, ky, kx] * x[b, c, oy*s + ky, ox*s + kx]
WEIGHT_AXES = ["oy", "ox", "f", "c", "ky", "kx"]
AXIS_MEANING = {"oy": "output row", "ox": "output column", "f": "map (filter) at that location",
                "c": "input channel (map of the stage below)", "ky": "window row", "kx": "window column"}


def meta(cfg, manifest: dict, arrays: dict[str, np.ndarray]) -> dict:  # noqa: ANN001
    """What a reader needs besides the numbers: the config, the step, how the decoder is made, and the
    axes of every array (the optimizer's state has its parameter's axes)."""
    return {
        "format": "repro-export", "version": 1, "step": int(manifest["step"]), "config": cfg.as_json(),
        "decoder": "tied: W2 = W1 (only W1 is stored; the decoder applies W1 transposed)" if cfg.rica.tied
                   else "untied: stageN.W2 is the decoder, laid out as W1",
        "formula": "y[b, f, oy, ox] = sum over c, ky, kx of W[oy, ox, f, c, ky, kx] * x[b, c, oy*s + ky, ox*s + kx], "
                   "s = config.stages[N].stride, x = the stage's input (the stage below's output maps)",
        "axis_meaning": AXIS_MEANING,
        "arrays": {n: {"axes": WEIGHT_AXES, "shape": list(a.shape), "dtype": str(a.dtype)}
                   for n, a in arrays.items()},
    }


@click.command("export")
@click.option("--checkpoint", required=True, help="Checkpoint folder, or a run / checkpoints folder (its latest).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option("--with-optimizer", is_flag=True,
              help="Include the optimizer state too (stageN.W1.velocity for sgd, .sumsq for adagrad).")
def export(checkpoint: str, out_path: str, with_optimizer: bool) -> None:
    """Write every stage's weights as whole arrays, from a checkpoint of any rank count, to a plain .npz.

    \b
    Inside (np.load(FILE) reads it; nothing is pickled):
      stageN.W1      encoding weights, axes (oy, ox, f, c, ky, kx), float32
      stageN.W2      decoding weights, same axes; absent when tied (W2 = W1)
      __meta__.json  JSON text: np.load(FILE)["__meta__.json"].item(); the
                     config, the step, the decoder, each array's axes

    \b
    Example:
      repro export --checkpoint results/faces32 --out faces32.npz
    """
    if world().rank != 0:  # one writer, however the command was launched
        return
    out = Path(out_path)
    if out.suffix != ".npz":
        raise ReproError(f"{out}: the output file must end in .npz")
    path, manifest = ckpt.read_manifest(checkpoint)
    cfg = ckpt.config_of(path)
    names = [n for n in manifest["shapes"] if with_optimizer or n in param_names(cfg)]
    wanted = {n: (0, manifest["shapes"][n][0], 0, manifest["shapes"][n][1]) for n in names}
    arrays, _ = ckpt.load_tiles(path, wanted)
    text = json.dumps(meta(cfg, manifest, arrays), indent=1)
    try:
        with atomic.target(out) as tmp:
            np.savez(tmp, **arrays, **{META: np.array(text)})  # a str array: loads with allow_pickle=False
    except OSError as exc:
        raise ReproError(f"{out}: cannot write ({exc.strerror})") from None
    n = sum(a.size for k, a in arrays.items() if k in param_names(cfg))
    out_console().print(f"wrote {out}: {len(arrays)} arrays and {META}, {n:,} parameters, step {manifest['step']}"
                        + (" (decoder tied: W2 = W1, not stored)" if cfg.rica.tied else ""))
