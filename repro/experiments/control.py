"""The control experiment of Le et al. (2012): remove the faces from the training frames, train again.

    repro control --checkpoint RUN                  # RUN = a finished `repro train` run
    mpiexec -n 4 repro control --checkpoint RUN --device gpu

Le et al. ran OpenCV's face detector over the training frames, dropped every frame with a face,
trained the same network on the rest, and still found a face neuron, a weaker one: 81.7% -> 72.5%.
Here:

1. the baseline's config (``RUN/config.json``: shapes *and* training settings, seed included) is
   read back, so the control differs from the baseline in one thing only, its data;
2. the training store is filtered with :func:`repro.data.facefilter.filter_faces` into
   ``<root>/prepared/<name>-noface/train`` (rank 0; reused when complete, resumed when not);
3. the same config is trained on it into ``RUN/control/`` (resumed from its checkpoint if present);
4. both runs are evaluated with :func:`repro.experiments.evaluate.evaluate` on the same test set
   (each writes its own ``evaluate-<concept>.json``; the baseline's is reused if it was made on
   the same test set and checkpoint step);
5. ``RUN/control.json`` and ``RUN/control.md`` put the two side by side with the paper's numbers
   and how many frames the filter removed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repro import report
from repro.data.facefilter import filter_faces
from repro.data.locate import copy_name
from repro.data.prepare import prepared_dir
from repro.data.store import is_complete, open_store
from repro.errors import ReproError
from repro.experiments.evaluate import evaluate
from repro.experiments.run import Session
from repro.experiments.train import train
from repro.model import checkpoint as ckpt
from repro.model.network import load_checkpoint


def filtered_store(session: Session, store: Any, root: str, name: str, console: Any = None
                   ) -> tuple[Any, dict[str, Any], bool]:
    """The face-filtered copy of ``store`` (built by rank 0 unless complete); its summary; reused?"""

    out = prepared_dir(Path(root), copy_name(store.path, name, "-noface")) / "train"
    reused = bool(session.w.bcast(is_complete(out) if session.w.is_root else None))
    if not reused and session.w.is_root:
        out.parent.mkdir(parents=True, exist_ok=True)
        filter_faces(store, out, console=console)
    session.w.barrier()
    fs = open_store(out)
    summary = dict(fs.index.get("info", {}).get("face_filter", {}))
    if not summary:
        raise ReproError(f"{out}: not a face-filtered store (no info.face_filter in its index); remove it")
    if Path(summary.get("source", "")).resolve() != Path(store.path).resolve():
        raise ReproError(f"{out}: was filtered from {summary.get('source')}, not {store.path}; remove it")
    return fs, summary, reused


def train_control(session: Session, cfg: Any, store: Any, max_steps: int | None, console: Any) -> dict[str, Any]:
    """Train ``cfg`` on ``store`` into ``RUN/control`` (continuing its checkpoint if there is one)."""

    run = session.run / "control"
    if session.w.is_root:
        run.mkdir(parents=True, exist_ok=True)
    session.w.barrier()
    sub = Session(session.w, session.backend, run)
    resume = (run / "checkpoints" / "latest.json").exists()
    if resume:
        saved = run / "config.json"
        if saved.exists() and json.loads(saved.read_text()) != cfg.as_json():
            raise ReproError(f"{saved}: the control run was started with another config; remove {run}")
    return train(sub, cfg, store, resume=resume, max_steps=max_steps, console=console)


def evaluate_run(session: Session, run: Path, ts: Any, train_store: Any, opt: Any, console: Any,
                 reuse: bool = True) -> dict[str, Any]:
    """``repro evaluate`` on one run folder, or its existing result if made on the same test set and step."""

    sub = Session(session.w, session.backend, Path(run))
    path = Path(run) / f"evaluate-{opt.concept}.json"
    _, manifest = ckpt.read_manifest(run)
    if reuse and path.exists():
        try:
            old = json.loads(path.read_text())
            same = (old["test_set"]["stores"] == [str(s.path) for s in ts.stores]
                    and int(old["checkpoint_step"]) == int(manifest["step"])
                    and old["best_neuron"]["layer"] == opt.stage and old["best_neuron"]["sublayer"] == opt.sublayer
                    and old.get("seed") == opt.seed)
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if session.w.bcast(same if session.w.is_root else None):
            return old
    net, manifest = load_checkpoint(run, None, session.xp, session.w)
    return evaluate(sub, net, ckpt.resolve(run), int(manifest["step"]), ts, train_store, opt, console=console)


def side_by_side(concept: str, base: dict[str, Any], ctrl: dict[str, Any], filt: dict[str, Any],
                 base_train: dict[str, Any], ctrl_train: dict[str, Any]) -> dict[str, Any]:

    le = report.paper_numbers(concept)["le2012"]

    def row(r: dict[str, Any]) -> dict[str, Any]:
        b = r["best_neuron"]
        return {"best_neuron": {k: b.get(k) for k in ("layer", "sublayer", "index", "unit", "accuracy", "threshold",
                                                      "auc")},
                "held_out": r.get("held_out", {}).get("accuracy"),
                "held_out_auc": r.get("held_out", {}).get("auc"),
                "guessing": r.get("baselines", {}).get("guessing"),
                "random_network": r.get("baselines", {}).get("random_network", {}).get("accuracy"),
                "checkpoint_step": r.get("checkpoint_step")}

    return {"concept": concept, "baseline": row(base) | {"train": base_train},
            "faces_removed": row(ctrl) | {"train": ctrl_train},
            "face_filter": filt,
            "drop": base["best_neuron"]["accuracy"] - ctrl["best_neuron"]["accuracy"],  # baseline minus control
            "paper": {"baseline": le.get("best_neuron"), "faces_removed": le.get("no_faces_in_training")},
            "test_set": base["test_set"]}


def markdown(r: dict[str, Any]) -> str:

    b, c, f = r["baseline"], r["faces_removed"], r["face_filter"]
    rows = [
        ("best neuron accuracy", report.pct(b["best_neuron"]["accuracy"]), report.pct(c["best_neuron"]["accuracy"]),
         report.paper_pct(r["paper"]["baseline"]), report.paper_pct(r["paper"]["faces_removed"])),
        ("best neuron, held out", report.pct(b["held_out"]), report.pct(c["held_out"]), None, None),
        ("best neuron AUC (held out)", _auc(b), _auc(c), None, None),
        ("random network (same config)", report.pct(b["random_network"]), report.pct(c["random_network"]), None, None),
        ("guessing", report.pct(b["guessing"]), report.pct(c["guessing"]), "64.8%", "64.8%"),
        ("best neuron (layer, sublayer, index)",
         f"{b['best_neuron']['layer']}, {b['best_neuron']['sublayer']}, {b['best_neuron']['index']}",
         f"{c['best_neuron']['layer']}, {c['best_neuron']['sublayer']}, {c['best_neuron']['index']}", None, None),
        ("training frames", f"{f['source_count']:,}", f"{f['kept']:,}", "10M", "10M minus faces"),
        ("training steps", b["train"].get("steps"), c["train"].get("steps"), None, None),
    ]
    pct_removed = 100.0 * f["removed"] / max(1, f["source_count"])
    recall = ""
    if "recall" in f:
        recall = (f" Against the faces the data set placed in its frames, it caught {f['with_face_removed']:,} of "
                  f"{f['with_face']:,} frames with a face (recall {100 * f['recall']:.1f}%) and removed "
                  f"{f['without_face_removed']:,} of {f['without_face']:,} frames without one "
                  f"({100 * f['false_positive_rate']:.1f}%): the control still trains on "
                  f"{f['with_face'] - f['with_face_removed']:,} frames with faces.")
    det = f.get("detector", {})
    return "\n".join([
        f"# Control: faces removed from the training frames ({r['concept']})\n",
        f"Test set: {', '.join(r['test_set'].get('names', []))} ({r['test_set'].get('images')} images), the same "
        "for both runs.\n",
        report.markdown_table(["", "baseline run", "faces removed", "paper: baseline", "paper: faces removed"], rows),
        f"The face filter (OpenCV Haar cascade `{det.get('cascade', '')}`, min_face {det.get('min_face')}, "
        f"min_neighbors {det.get('min_neighbors')}, upscaled to {det.get('upscale_to')} px) removed "
        f"{f['removed']:,} of {f['source_count']:,} training frames ({pct_removed:.1f}%).{recall} "
        f"Change of the best neuron's accuracy without faces: {-100 * r['drop']:+.1f} points "
        "(paper: 81.7% -> 72.5%, -9.2 points).\n",
    ])


def _auc(r: dict[str, Any]) -> str | None:
    a, h = r["best_neuron"].get("auc"), r.get("held_out_auc")
    return None if a is None else f"{a:.3f}" + (f" ({h:.3f})" if h is not None else "")


def control(session: Session, base_cfg: Any, train_store: Any, data_name: str, ts: Any, opt: Any, root: str,
            max_steps: int | None = None, console: Any = None) -> dict[str, Any]:
    """The whole control experiment; rank 0 writes ``RUN/control.json`` and ``RUN/control.md``."""

    ts.check(base_cfg)
    fstore, filt, reused = filtered_store(session, train_store, root, data_name, console)
    filt = dict(filt) | {"store": str(fstore.path), "reused": reused}
    if len(fstore) < base_cfg.train.batch:
        raise ReproError(f"{fstore.path}: only {len(fstore)} frames are left after the face filter, fewer than "
                         f"a minibatch ({base_cfg.train.batch})")
    ctrl_train = train_control(session, base_cfg, fstore, max_steps, console)
    base = evaluate_run(session, session.run, ts, train_store, opt, console)
    ctrl = evaluate_run(session, session.run / "control", ts, fstore, opt, console)

    def steps(run: Path) -> dict[str, Any]:
        try:
            t = json.loads((Path(run) / "train.json").read_text())
            return {"steps": t.get("steps_done"), "steps_total": t.get("steps_total"), "finished": t.get("finished")}
        except (OSError, ValueError):
            return {}

    r = side_by_side(opt.concept, base, ctrl, filt, steps(session.run),
                     steps(session.run / "control") or {"steps": ctrl_train.get("steps_done")})
    r.update({"data": data_name, "ranks": session.w.size, "device": session.backend.name,
              "control_run": str(session.run / "control")})
    if session.w.is_root:
        report.write_text_atomic(session.run / "control.md", markdown(r))
    session.write_json("control.json", r)
    return r
