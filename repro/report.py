"""What runs write beside their JSON: Markdown tables next to the papers' numbers, and PNG plots.

JSON is written by :meth:`repro.experiments.run.Session.write_json`. Everything here writes under a
temporary name and renames, so a reader (or a crash) never sees half a file. Only rank 0 should
call these functions; they know nothing about ranks.

The papers' numbers live here, once, so every report quotes the same ones (see PAPER.md; they are
what the source material says, "recalled" ones included, and only ever shown, never used).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repro import atomic

# Le et al. 2012 (Table 1 and text) and Coates et al. 2013, test-set accuracy in percent.
# Keys: concept -> row -> number; a missing row means the paper gives none for that concept.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "le2012": {
        "faces": {"guessing": 64.8, "linear_filter": 74.0, "one_layer": 71.0, "no_lcn": 78.5,
                  "no_faces_in_training": 72.5, "best_neuron": 81.7},
        "bodies": {"guessing": 64.8, "linear_filter": 68.1, "best_neuron": 76.7},
        "cats": {"guessing": 64.8, "linear_filter": 67.2, "best_neuron": 74.8},
    },
    "coates2013": {
        "faces": {"random_network": 64.8, "best_neuron": 88.2},
        "bodies": {"random_network": 64.8, "best_neuron": 80.2},  # upper body
        "cats": {"random_network": 64.8, "best_neuron": 73.0},
    },
}
PAPER_TEST_SETS = {
    "faces": "13,026 faces + 23,974 distractors",
    "bodies": "13,026 bodies + 23,974 negatives (Daimler, left images)",
    "cats": "10,000 cat faces + 18,409 ImageNet negatives",
}


def paper_numbers(concept: str) -> dict[str, dict[str, float]]:
    """``{"le2012": {...}, "coates2013": {...}}`` for one concept (empty dicts where none)."""
    return {k: dict(v.get(concept, {})) for k, v in PAPER.items()}


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic.write_text(path, text)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; ``None`` cells print as an empty cell."""
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pct(x: float | None, digits: int = 1) -> str | None:
    """0.8173 -> '81.7%'; None stays None (an empty table cell)."""
    return None if x is None else f"{100.0 * x:.{digits}f}%"


def paper_pct(x: float | None) -> str | None:
    """A number already in percent, as the paper prints it."""
    return None if x is None else f"{x:g}%"


def histogram_png(path: str | os.PathLike, positives: np.ndarray, negatives: np.ndarray, title: str,
                  threshold: float | None = None, labels: tuple[str, str] = ("positives", "negatives"),
                  bins: int = 30, dpi: int = 150) -> Path:
    """Normalised histograms of two sets of activations on shared bins (Le et al., Figure 2); the
    format follows the suffix (.png, .pdf, .svg)."""
    import matplotlib  # here, not at the top: pyplot takes most of a second, and only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    both = np.concatenate([pos, neg])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=dpi)
    ax.hist(neg, bins=edges, density=True, alpha=0.6, color="tab:blue", label=f"{labels[1]} ({len(neg)})")
    ax.hist(pos, bins=edges, density=True, alpha=0.6, color="tab:red", label=f"{labels[0]} ({len(pos)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("activation", fontsize=11)
    ax.set_ylabel("frequency (normalised)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path, format=figure_format(path), dpi=dpi)


def figure_format(path: str | os.PathLike) -> str:
    """png, pdf or svg, from the file name (what ``--format`` lets every figure be written as)."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"{path}: figures are .png, .pdf or .svg")
    return fmt
