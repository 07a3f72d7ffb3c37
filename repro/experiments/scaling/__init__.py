"""Scaling of the joint fine-tuning update over model sizes and rank counts (Coates et al. 2013, Fig. 3-4).

    repro scaling-sweep                                   # weak + strong, 1 and 2 ranks, small CPU family
    repro scaling-sweep --ranks 1,2,4 --mode weak --steps 5 --out results/scaling
    repro scaling-sweep --project                         # paper's 1..64 GPUs, 185M..11.2B parameters
    repro scaling-sweep --project --from results/scaling/sweep.json
    repro --device gpu scaling-sweep --largest --family le2012 --batch 100   # the largest network 1 GPU holds

One module per job of the command:
    growth.py      a family's base network grown to size m, or to the largest that fits a rank's memory
    launch.py      one ``mpiexec`` launch of ``worker.py`` per point, repeated round-robin, median kept
    worker.py      what each launch runs: ``python -m repro.experiments.scaling.worker``
    measure.py     the timed updates and memory of one configuration, on every rank of a launch
    report.py      efficiencies, the JSON documents, the Markdown table, the plot
    projection.py  the paper's 1..64-GPU configurations predicted from a compute rate and a link

The names below are those modules', loaded on first use rather than on import (PEP 562): running
``python -m repro.experiments.scaling.worker`` imports this package first, and the worker must
set the threads per rank before anything loads NumPy.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "growth": ("CPU_BASE", "base_config", "busiest_rank_params", "config_with_params", "grid_shape",
               "largest_config", "rank_memory_bytes", "resized", "sized_config"),
    "launch": ("Point", "launch_point", "median_run", "plan", "sweep"),
    "measure": ("measure_update",),
    "report": ("add_efficiency", "fmt_efficiency", "fmt_ms", "host_info", "largest_document", "markdown", "now",
               "plot", "sweep_document"),
    "projection": ("PAPER", "PAPER_RANKS", "Link", "comm_volume", "link_from_sweep", "paper_configs", "project",
                   "project_point"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
