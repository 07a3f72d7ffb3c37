"""Rerun the reference measurements of results/reference/face-neuron.md through the command line.

    .venv/bin/python scripts/face_neuron_reference.py --work /tmp/face-ref      # about 20 minutes on 2 cores

For each seed: `repro train` (the default config, faces32, on pypi-faces), `repro evaluate` on the
`test` split (the paper's protocol and the held-out variant, every baseline), on `test-aligned` and on
`val`; the paper's ablations (every stage's LCN removed; our input LCN removed; faces removed from the
training frames by the OpenCV filter, `repro control`) with the same seeds; the figures of the first
seed. Writes results/reference/face-neuron-reference.json and .md (mean and range over the seeds).
Choices were made on `val` beforehand; this script only reports.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REPRO = [sys.executable, "-m", "repro.cli", "--device", "cpu"]


def sh(args: list, log: Path) -> None:
    t0 = time.time()
    p = subprocess.run([*REPRO, *map(str, args)], capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ repro {' '.join(map(str, args))}  ({time.time() - t0:.0f} s, exit {p.returncode})\n")
        f.write(p.stdout[-4000:] + p.stderr[-2000:] + "\n")
    if p.returncode != 0:
        raise SystemExit(f"repro {' '.join(map(str, args))} failed:\n{p.stderr[-2000:]}")


def variant_config(work: Path, name: str, change: str) -> Path:
    """faces32 with one ablation applied (a .toml beside the runs)."""
    text = (REPO / "repro" / "configs" / "faces32.toml").read_text()
    if change == "no-lcn":  # every stage's LCN sublayer removed (the paper's "LCN removed")
        text = text.replace("\nlcn = 3\n", "\nlcn = 0\n").replace("lcn = 1 ", "lcn = 0 ")
    elif change == "no-input-lcn":
        text = text.replace("lcn = 13 ", "lcn = 0 ")
    text = text.replace('name = "faces32"', f'name = "{name}"')
    p = work / f"{name}.toml"
    p.write_text(text)
    return p


def metrics(ev: dict) -> dict:
    b = ev["baselines"]
    row = lambda d: {"accuracy": d.get("accuracy"), "auc": d.get("auc"), "held_out": d.get("held_out"),  # noqa: E731
                     "held_out_auc": d.get("held_out_auc")}
    out = {"best_neuron": {**row(ev["best_neuron"]), "held_out": ev["held_out"]["accuracy"],
                           "held_out_auc": ev["held_out"]["auc"], "layer": ev["best_neuron"]["layer"],
                           "sublayer": ev["best_neuron"]["sublayer"], "index": ev["best_neuron"]["index"]},
           "guessing": b["guessing"]}
    for k in ("random_network", "one_layer", "linear_filter", "linear_filter_image"):
        out[k] = row(b[k])
    if "face_like_distractors" in ev["best_neuron"]:
        out["best_neuron"]["face_like_called_face"] = ev["best_neuron"]["face_like_distractors"]["called_positive"]
    return out


def summarise(per_seed: list[dict]) -> dict:
    """Mean, min and max over seeds of every number."""
    def walk(vals: list):
        if isinstance(vals[0], dict):
            return {k: walk([v[k] for v in vals]) for k in vals[0]}
        if isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool) and all(v is not None for v in vals):
            a = np.asarray(vals, float)
            return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "seeds": [float(v) for v in a]}
        return vals
    return walk(per_seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/face-neuron-reference"), help="Folder for the runs (kept).")
    ap.add_argument("--root", type=Path, default=REPO / "data", help="Data root (pypi-faces is built there once).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "reference")
    ap.add_argument("--markdown-only", action="store_true", help="Rewrite the .md from the existing JSON.")
    a = ap.parse_args()
    if a.markdown_only:
        rewrite(a.out)
        return
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "log.txt"
    res: dict = {"seeds": a.seeds, "variants": {}}
    variants = {"faces32": None, "no-lcn": variant_config(a.work, "faces32-no-lcn", "no-lcn"),
                "no-input-lcn": variant_config(a.work, "faces32-no-input-lcn", "no-input-lcn")}
    t0 = time.time()
    for vname, cfg in variants.items():
        splits = ("val", "test", "test-aligned") if vname == "faces32" else ("test",)
        per: dict[str, list] = {s: [] for s in splits}
        for seed in a.seeds:
            run = a.work / vname / f"seed{seed}"
            if run.exists():
                shutil.rmtree(run)
            sh(["train", *(["--config", cfg] if cfg else []), "--seed", seed, "--out", run, "--root", a.root], log)
            for split in splits:
                out = run if split == "test" else run / split
                # on test, the neuron and threshold chosen on val are applied too (`transfer`)
                frm = ["--neuron-from", run / "val"] if split == "test" and "val" in splits else []
                sh(["evaluate", "--checkpoint", run, "--root", a.root, "--split", split, "--seed", seed, *frm,
                    *(["--out", out] if split != "test" else [])], log)
                ev = json.loads((out / "evaluate-faces.json").read_text())
                per[split].append(metrics(ev))
                if "transfer" in ev:
                    per.setdefault("val_to_test", []).append(
                        {k: ev["transfer"][k] for k in ("accuracy", "auc")} | {"neuron": ev["transfer"]["neuron"]["index"]})
            if vname == "faces32":
                sh(["control", "--checkpoint", run, "--root", a.root, "--seed", seed], log)
                c = json.loads((run / "control.json").read_text())
                per.setdefault("faces_removed", []).append(
                    {"best_neuron": {"accuracy": c["faces_removed"]["best_neuron"]["accuracy"],
                                     "auc": c["faces_removed"]["best_neuron"]["auc"],
                                     "held_out": c["faces_removed"]["held_out"],
                                     "held_out_auc": c["faces_removed"]["held_out_auc"]},
                     "face_filter": {k: c["face_filter"].get(k) for k in ("removed", "source_count", "recall",
                                                                           "false_positive_rate")}})
        res["variants"][vname] = {k: summarise(v) for k, v in per.items()}
    first = a.work / "faces32" / f"seed{a.seeds[0]}"
    sh(["visualize", "best-neuron", "--checkpoint", first, "--root", a.root], log)
    sh(["visualize", "invariance", "--checkpoint", first, "--root", a.root], log)
    figs = a.out / "face-neuron"
    figs.mkdir(parents=True, exist_ok=True)
    for f in ("best-neuron-top48.png", "best-neuron-stimulus.png", "histogram-faces.png", "invariance-scale.png",
              "invariance-translation.png", "invariance-rotation.png"):
        shutil.copy(first / f, figs / f)
    res["figures_from"] = str(first)
    res["minutes"] = (time.time() - t0) / 60
    res["machine"] = {"cpus": os.cpu_count()}
    (a.out / "face-neuron-reference.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    (a.out / "face-neuron-reference.md").write_text(markdown(res))
    print(f"wrote {a.out / 'face-neuron-reference.json'} and .md in {res['minutes']:.0f} min")


def rewrite(out: Path) -> None:
    """Only the Markdown again, from the JSON (``--markdown-only``)."""
    (out / "face-neuron-reference.md").write_text(markdown(json.loads((out / "face-neuron-reference.json").read_text())))


def markdown(res: dict) -> str:
    """The tables of the reference: mean (min..max) over the seeds."""
    def cell(d: dict, pct: bool = True) -> str:
        if not isinstance(d, dict) or "mean" not in d:
            return ""
        f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
        return f"{f(d['mean'])} ({f(d['min'])}..{f(d['max'])})"

    lines = [f"# Face neuron: reference runs (seeds {', '.join(map(str, res['seeds']))})\n",
             "Made by `scripts/face_neuron_reference.py`; every number is the mean (min..max) over the seeds. "
             "Accuracy in %, AUC as a fraction. 'Chosen on test' is the paper's protocol; 'held out' chooses "
             "neuron and threshold on one half of the split and measures the other half.\n"]
    v = res["variants"]["faces32"]
    for split in ("test", "test-aligned", "val"):
        t = v[split]
        lines += [f"## faces32, `{split}` split (guessing {cell(t['guessing'])})\n",
                  "| | chosen on the split: accuracy | AUC | held out: accuracy | held-out AUC |",
                  "| --- | --- | --- | --- | --- |"]
        for key, name in (("best_neuron", "best top neuron"), ("random_network", "random network"),
                          ("one_layer", "one-layer network"), ("linear_filter", "linear filter, patches"),
                          ("linear_filter_image", "linear filter, whole images")):
            r = t[key]
            lines.append(f"| {name} | {cell(r['accuracy'])} | {cell(r['auc'], False)} | {cell(r['held_out'])} | "
                         f"{cell(r['held_out_auc'], False)} |")
        lines.append("")
    if "val_to_test" in v:
        tt = v["val_to_test"]
        lines += ["## The neuron and threshold chosen on `val`, applied to `test`\n",
                  f"Accuracy {cell(tt['accuracy'])}, AUC {cell(tt['auc'], False)} (neurons "
                  f"{', '.join(str(int(n)) for n in tt['neuron']['seeds'])}).\n"]
    lines += ["## Ablations on `test` (best top neuron)\n", "| | chosen on test: accuracy | AUC | held out: accuracy | held-out AUC |",
              "| --- | --- | --- | --- | --- |"]
    for name, t in (("faces32", v["test"]["best_neuron"]), ("every stage's LCN removed", res["variants"]["no-lcn"]["test"]["best_neuron"]),
                    ("input LCN removed", res["variants"]["no-input-lcn"]["test"]["best_neuron"]),
                    ("faces removed from training (OpenCV filter)", v["faces_removed"]["best_neuron"])):
        lines.append(f"| {name} | {cell(t['accuracy'])} | {cell(t['auc'], False)} | {cell(t['held_out'])} | "
                     f"{cell(t['held_out_auc'], False)} |")
    f = v["faces_removed"]["face_filter"]
    lines += ["", f"The face filter removed {int(f['removed']['mean']):,} of {int(f['source_count']['mean']):,} frames "
              f"(the same frames for every seed); recall against the faces the data set placed "
              f"{100 * f['recall']['mean']:.1f}%, false positives {100 * f['false_positive_rate']['mean']:.1f}%.\n"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
