"""Array backend: NumPy on CPUs, CuPy on GPUs, one code path.

The array module is chosen once (``--device``) and passed along as ``xp``; conversion to NumPy
happens only at I/O boundaries (checkpoints, reports, MPI staging when MPI is not CUDA-aware).
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from repro.engine.hostmem import keep_freed_memory

DTYPE = np.float32  # float32 everywhere; gradient checks ask for float64 explicitly


def _cupy() -> ModuleType | None:
    """CuPy if it is importable and sees at least one GPU, else None."""
    try:
        import cupy  # type: ignore[import-not-found]

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no cupy, no driver, no device: all mean "no GPU"
        return None
    return None


def gpu_available() -> bool:
    return _cupy() is not None


def is_gpu(xp: Any) -> bool:
    """The one answer to "does this array module compute on a GPU?" (code that holds only ``xp``)."""
    return xp is not np


def on_gpu(a: Any) -> bool:
    """Does this array live on a GPU (a CuPy array)? Asked of arrays, not modules."""
    return type(a).__module__.startswith("cupy")


def synchronize(x: Any = None) -> None:
    """Wait for the current GPU stream when ``x`` (an array module or array) is on a GPU; with no
    argument, whenever CuPy is loaded (timers that do not know what they time). CPUs: nothing."""
    if x is None:
        cp = sys.modules.get("cupy")
    elif isinstance(x, ModuleType):
        cp = x if is_gpu(x) else None
    else:
        cp = sys.modules.get("cupy") if on_gpu(x) else None
    if cp is not None:
        try:
            cp.cuda.get_current_stream().synchronize()
        except Exception:  # no device initialised: nothing to wait for
            return


def get_array_module(*arrays: Any) -> ModuleType:
    """numpy or cupy, whichever owns the arrays (the kernels accept either)."""
    for a in arrays:
        if on_gpu(a):
            return sys.modules["cupy"]
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Host copy of a NumPy or CuPy array (I/O boundary)."""
    return a.get() if on_gpu(a) else np.asarray(a)


def device_name(xp: Any) -> str:
    """The GPU's name (CUDA device properties) or the CPU's model name."""
    if is_gpu(xp):
        name = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name") and ":" in ln]
    return names[0] if names else (platform.processor() or platform.machine())


@dataclass(frozen=True)
class Backend:
    """The array module and device a process computes with."""

    name: str  # "cpu" or "gpu"
    xp: ModuleType
    device_id: int | None = None

    @property
    def is_gpu(self) -> bool:
        return is_gpu(self.xp)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        return to_numpy(a)

    def synchronize(self) -> None:
        synchronize(self.xp)


def rank_memory(xp: Any, w: Any) -> tuple[int, str]:
    """(bytes this rank can count on, where that comes from). Collective over ``w``: the free memory
    of this rank's GPU, or of its node (``host_memory_available``), split evenly among the ranks
    that share that GPU or node."""
    node = platform.node()
    if is_gpu(xp):
        dev = xp.cuda.Device()
        free, key, source = int(dev.mem_info[0]), (node, int(dev.id)), f"free on GPU {int(dev.id)}"
    else:
        free, source = host_memory_available()
        key = (node, -1)
    share = w.allgather(key).count(key)
    return free // share, f"{free / 2**30:.1f} GiB {source}, shared by {share} rank(s)"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory_available() -> tuple[int, str]:
    """Memory a new allocation can get on this node: Linux's ``MemAvailable`` (free plus reclaimable
    caches), or less when the process's cgroup (a Slurm job, a container) has a lower limit left;
    elsewhere the free pages."""
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):  # not Linux: the fallback below answers
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best = (int(line.split()[1]) * 1024, "available (MemAvailable)")
    try:
        rel = next(ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                   if ln.startswith("0::"))
        cg = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit, used = _read_int(cg / "memory.max"), _read_int(cg / "memory.current")
    except (OSError, StopIteration, IndexError):
        limit = used = None
    if limit is None:  # cgroup v1
        v1 = Path("/sys/fs/cgroup/memory")
        limit, used = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
    if limit is not None and used is not None and limit < 1 << 60:
        left = max(0, limit - used)
        if best is None or left < best[0]:
            best = (left, "left under this job's memory limit (cgroup)")
    if best is None:  # not Linux
        best = (os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free")
    return best


def select_backend(device: str = "auto", local_rank: int = 0) -> Backend:
    """Pick the backend once. ``auto`` = GPU when CuPy sees one, else CPU.

    With several ranks per node each rank takes GPU ``local_rank % n_gpus`` (one MPI process
    per GPU, as in Coates et al.).
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"unknown device {device!r}: choose auto, cpu or gpu")
    keep_freed_memory()  # host temporaries: reuse the heap from step to step (see hostmem)
    if device == "cpu":
        return Backend("cpu", np)
    cp = _cupy()
    if cp is None:
        if device == "gpu":
            raise RuntimeError("--device gpu: CuPy is not installed or sees no GPU (pip install 'repro[gpu]')")
        return Backend("cpu", np)
    n = cp.cuda.runtime.getDeviceCount()
    dev = local_rank % n
    cp.cuda.Device(dev).use()
    return Backend("gpu", cp, dev)


def local_rank_from_env() -> int:
    """The rank within its node, as launchers export it (MPICH/Hydra, Open MPI, Slurm)."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"):
        if var in os.environ:
            value = os.environ[var]
            if value.strip().isdigit():
                return int(value)
    return 0
