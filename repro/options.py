"""Click options that several commands share, defined once so that they read the same everywhere."""
from __future__ import annotations

import errno

import click
from rich.console import Console

from repro.errors import ReproError

FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_options(f):  # noqa: ANN001, ANN201
    """``--dpi`` and ``--format``: every command that draws writes its figures at this resolution in
    these formats (png for screens, pdf/svg for slides and papers)."""
    f = click.option("--format", "formats", type=click.Choice(FIGURE_FORMATS), multiple=True, default=("png",),
                     show_default=True, help="Figure format; repeat for several (png for screens, pdf/svg for slides).")(f)
    return click.option("--dpi", type=click.IntRange(30, 1200), default=150, show_default=True,
                        help="Resolution of raster figures.")(f)


def out_console() -> Console:
    """Results on stdout. Lines are never hard-wrapped: a log file or a pipe keeps one message per line."""
    return Console(soft_wrap=True)


def err_console() -> Console:
    """Progress and notes on stderr, unwrapped like :func:`out_console`."""
    return Console(stderr=True, soft_wrap=True)


class ReproGroup(click.Group):
    """A command group whose commands' ``ReproError`` becomes Click's one ``Error:`` line (exit 1),
    so the layers below the command line raise a plain exception and never import Click."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ReproError as exc:
            raise click.ClickException(exc.message) from None
        except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
            raise click.ClickException(
                f"out of memory ({exc.__class__.__name__}{': ' + str(exc) if str(exc) else ''}); `repro info --config "
                "NAME --ranks N` gives the per-rank need: use more ranks or a smaller batch") from None
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            raise click.ClickException(os_error_line(exc)) from None


# Failures of the machine, not of repro: shown as one line naming the file; anything else an
# OSError says is left to show its traceback, since it may be a bug.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE}


def os_error_line(exc: OSError) -> str:
    where = f" at {exc.filename}" if exc.filename else ""
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "your disk quota is used up"}.get(
        exc.errno, "check the path and its permissions")
    return (f"{exc.strerror or exc}{where}: {hint}; finished work is kept (a run continues with `repro train "
            "--out RUN --resume`, `repro data prepare` resumes where it stopped)")
