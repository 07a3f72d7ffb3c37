"""Stopping a long job cleanly: SIGTERM and SIGUSR1 (what Slurm sends at a time limit, on preemption
and on ``scancel``) and a first Ctrl-C ask every rank to stop at the end of the current step, so the
job can checkpoint there and exit with :data:`EXIT_STOPPED`; a second Ctrl-C interrupts at once.

Ranks may receive the signal at different moments (or only some of them): :meth:`StopRequests.agreed`
is collective, so all ranks stop after the same step.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from mpi4py import MPI

from repro.engine.comm import World

EXIT_STOPPED = 75  # EX_TEMPFAIL: the run is intact and resumable; requeue it with --resume
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it

_CODES = {signal.SIGINT: 1, signal.SIGTERM: 2, signal.SIGUSR1: 3}
_NAMES = {1: "SIGINT", 2: "SIGTERM", 3: "SIGUSR1"}


class StopRequests:
    """Context manager: while inside, the signals above set a flag instead of killing the process."""

    def __init__(self) -> None:
        self.code = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.code:
            raise KeyboardInterrupt  # asked twice: stop now
        self.code = max(self.code, _CODES[signum])

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in _CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def agreed(self, w: World) -> str | None:
        """Collective: the signal any rank received (the strongest), or None to carry on."""
        code = self.code if w.size == 1 else w.comm.allreduce(self.code, op=_max_op())
        return _NAMES.get(code)


def exit_code(signal_name: str) -> int:
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_STOPPED


def _max_op() -> Any:
    return MPI.MAX
