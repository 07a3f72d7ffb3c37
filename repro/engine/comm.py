"""The MPI world, through mpi4py.

Works the same under plain ``repro ...`` (one rank, MPI singleton) and ``mpiexec -n N repro ...``.
Any uncaught error on any rank aborts the whole job (``MPI_Abort``) within seconds instead of
leaving the other ranks blocked in a collective: see :func:`abort_on_error`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

from mpi4py import MPI

from repro.errors import ReproError

# How long a failing rank other than 0 waits before it prints, so that an error raised on every
# rank at once (bad input) is shown once, by rank 0, whose abort then ends the others.
_ABORT_GRACE_S = 1.0
# How long the failing rank waits after printing before it aborts (well under _ABORT_GRACE_S, so
# that rank 0's abort still ends the others before they print). The launcher forwards each rank's
# stderr through its proxy, and MPI_Abort has the launcher kill the proxies: aborting at once lost
# the message about once in 15 runs (MPICH hydra, 3-4 ranks on 2 cores), the job ending with
# nothing printed.
_FORWARD_GRACE_S = 0.2


@dataclass
class World:
    """One MPI communicator and what the engine needs to know about it."""

    comm: Any = field(default_factory=lambda: MPI.COMM_WORLD)
    _single_node: bool | None = field(default=None, init=False, repr=False)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def single_node(self) -> bool:
        """Whether every rank runs on this node (messages then go through shared memory).
        Collective on its first call; cached after."""
        if self._single_node is None:
            names = {MPI.Get_processor_name()} if self.size == 1 else set(self.comm.allgather(MPI.Get_processor_name()))
            self._single_node = len(names) == 1
        return self._single_node

    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def allreduce_sum(self, value: float) -> float:
        """Sum of a Python scalar over ranks, summed in rank order so every rank gets the same bits."""
        if self.size == 1:
            return float(value)
        return float(sum(self.comm.allgather(float(value))))

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


_WORLD: World | None = None


def world() -> World:
    """The process-wide world (MPI.COMM_WORLD)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


def cuda_aware_mpi() -> bool:
    """Whether MPI may be handed GPU buffers directly.

    Detected, not assumed: ``REPRO_CUDA_AWARE_MPI=0|1`` overrides; otherwise MPICH/MVAPICH2 and
    Open MPI report it through their environment or library version string. When unsure: False,
    and GPU halos are staged through host memory (always correct, a little slower).
    """
    env = os.environ.get("REPRO_CUDA_AWARE_MPI")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    if os.environ.get("MPICH_GPU_SUPPORT_ENABLED") == "1" or os.environ.get("MV2_USE_CUDA") == "1":
        return True
    query = getattr(MPI, "Query_cuda_support", None)  # mpi4py >= 4.1 where the library has it
    if query is not None:
        try:
            return bool(query())
        except Exception:
            return False
    version = MPI.Get_library_version().lower()
    return "cuda" in version and "open mpi" in version and os.environ.get("OMPI_MCA_opal_cuda_support") == "true"


@dataclass
class Mesh:
    """The ranks as ``replicas`` x (size / replicas): each replica a model-parallel group (``model``:
    the ranks that share one copy of the network, tile by tile) and, across replicas, the ranks that
    hold the same tile (``across``: where gradients are averaged). Data parallelism over replicas,
    model parallelism inside each, as Le et al. trained many model-parallel copies at once."""

    world: World
    model: World
    across: World
    replicas: int

    @property
    def replica(self) -> int:
        return self.world.rank // self.model.size


def check_replicas(size: int, replicas: int) -> None:
    """The one place a mesh shape is validated (the command calls it before touching the run folder)."""
    if replicas < 1 or size % replicas:
        raise ReproError(f"--replicas {replicas}: must divide the {size} rank(s) of the job "
                         f"(each replica gets the same number of ranks)")


def mesh(w: World, replicas: int) -> Mesh:
    """Cut ``w`` into ``replicas`` consecutive model-parallel groups (collective). One replica is ``w``
    itself, so a run without replicas takes exactly today's path."""
    check_replicas(w.size, replicas)
    if replicas == 1:
        return Mesh(w, w, World(MPI.COMM_SELF), 1)
    per = w.size // replicas
    model = World(w.comm.Split(color=w.rank // per, key=w.rank))
    across = World(w.comm.Split(color=w.rank % per, key=w.rank))
    return Mesh(w, model, across, replicas)


def report_and_abort(message: str, code: int) -> None:
    """Print one message (rank 0's first) and end the job with ``code``: every rank under MPI."""
    w = world()
    if w.size > 1:
        if w.rank != 0:
            time.sleep(_ABORT_GRACE_S)
        prefix = f"[rank {w.rank}] " if w.size > 1 else ""
        sys.stderr.write(prefix + message.rstrip() + "\n")
        sys.stderr.flush()
        time.sleep(_FORWARD_GRACE_S)
        w.abort(code)
        os._exit(code)  # MPI_Abort may return on the calling rank once the launcher has the message
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


class CollectiveExit(SystemExit):
    """Every rank leaves with this code at the same point of the program (a job stopped on a signal
    after checkpointing): a clean exit, no abort."""


@contextlib.contextmanager
def abort_on_error(user_errors: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a job so that an error on one rank ends all ranks promptly.

    ``user_errors`` are errors a user can act on (bad input): shown as one line, no traceback.
    Anything else is a bug: the traceback is shown. Either way, with several ranks the job is
    aborted through MPI, so no rank is left waiting in a collective for one that died.
    """
    try:
        yield
    except CollectiveExit:
        raise
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code != 0 and world().size > 1:
            report_and_abort(f"error: exit code {code}", code)
        raise
    except KeyboardInterrupt:
        report_and_abort("interrupted", 130)
    except user_errors as exc:
        report_and_abort(f"error: {exc}", 1)
    except BaseException:
        report_and_abort(traceback.format_exc(), 1)
