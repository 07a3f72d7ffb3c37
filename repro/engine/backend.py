"""Array backend: NumPy on CPUs, CuPy on GPUs, one code path.

The array module is chosen once (``--device``) and passed along as ``xp``; conversion to NumPy
happens only at I/O boundaries (checkpoints, reports, MPI staging when MPI is not CUDA-aware).
"""
from __future__ import annotations

import os
import platform
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


def get_array_module(*arrays: Any) -> ModuleType:
    """numpy or cupy, whichever owns the arrays (the kernels accept either)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy  # type: ignore[import-not-found]

            return cupy
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Host copy of a NumPy or CuPy array (I/O boundary)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def device_name(xp: Any) -> str:
    """The GPU's name (CUDA device properties) or the CPU's model name."""
    if xp is not np:
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
        return self.name == "gpu"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        return to_numpy(a)

    def synchronize(self) -> None:
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def memory_available(self, local_ranks: int) -> tuple[int, str] | None:
        """(bytes one rank can count on, where that comes from), or None when unknown. Host memory is
        shared by the ranks on the node; a GPU's by the ranks that picked it (``select_backend``)."""
        if self.is_gpu:
            free, _ = self.xp.cuda.Device(self.device_id).mem_info
            n = self.xp.cuda.runtime.getDeviceCount()
            share = max(1, -(-local_ranks // n))
            return free // share, f"{free / 2**30:.1f} GiB free on GPU {self.device_id}, shared by {share} rank(s)"
        host = host_memory_available()
        if host is None:
            return None
        free, source = host
        share = max(1, local_ranks)
        return free // share, f"{free / 2**30:.1f} GiB {source}, shared by {share} rank(s) on this node"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory_available() -> tuple[int, str] | None:
    """Memory a new allocation can get on this node: Linux's ``MemAvailable``, or less when the
    process's cgroup (a Slurm job, a container) has a lower limit left. None off Linux."""
    best: tuple[int, str] | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best = (int(line.split()[1]) * 1024, "available (MemAvailable)")
    except (OSError, ValueError, IndexError):
        pass
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
