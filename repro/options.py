"""Click options that several commands share, defined once so that they read the same everywhere."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace

import click
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from repro.errors import ReproError

FIGURE_FORMATS = ("png", "pdf", "svg")
DEVICES = ("auto", "cpu", "gpu")
CONCEPTS = ("bodies", "cats", "faces")


@dataclass(frozen=True)
class Obj:
    """Shared state for every command (``ctx.obj``): the group's options, as a command may override them."""

    device: str = "auto"


def _command_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # The command's --device replaces the group's in ctx.obj, so every command reads one place (obj.device).
    base = ctx.obj if isinstance(ctx.obj, Obj) else Obj(os.environ.get("REPRO_DEVICE", "auto"))
    ctx.obj = base if value is None else replace(base, device=value)
    return value


def device_option(f):  # noqa: ANN001, ANN201
    """``--device`` on a command that computes: ``repro train --device gpu`` as well as ``repro --device gpu
    train``; given on the command it wins over the group's."""
    return click.option("--device", type=click.Choice(DEVICES), default=None, expose_value=False,
                        callback=_command_device,
                        help="Array backend: cpu (NumPy), gpu (CuPy) or auto (GPU if CuPy sees one); wins over "
                        "`repro --device`.  [default: `repro --device`, else $REPRO_DEVICE, else auto]")(f)


def root_option(f):  # noqa: ANN001, ANN201
    """``--root``: where data sets live, the same on every command that reads them."""
    return click.option("--root", default="data", envvar="REPRO_DATA", show_default=True,
                        help="Data root folder, holding raw/ and prepared/ ($REPRO_DATA).")(f)


def concept_option(help: str):  # noqa: ANN201
    """``--concept``, one definition, so that evaluate, visualize and control agree on its choices and default."""
    return click.option("--concept", type=click.Choice(CONCEPTS), default="faces", show_default=True, help=help)


def figure_options(f):  # noqa: ANN001, ANN201
    """``--dpi`` and ``--format``: every command that draws writes its figures at this resolution in
    these formats (png for screens, pdf/svg for slides and papers)."""
    f = click.option("--format", "formats", type=click.Choice(FIGURE_FORMATS), multiple=True, default=("png",),
                     show_default=True, help="Figure format; repeat for several (png for screens, pdf/svg for slides).")(f)
    return click.option("--dpi", type=click.IntRange(30, 1200), default=150, show_default=True,
                        help="Resolution of raster figures.")(f)


# Width of stdout when it is a file or a pipe: rich would assume 80 columns and squeeze tables.
PIPE_WIDTH = 1000


def out_console() -> Console:
    """Results on stdout. Lines are never hard-wrapped: a log file or a pipe keeps one message per line.
    On a terminal (or with $COLUMNS) tables fit its width; in a file or a pipe they keep their own width."""
    con = Console(soft_wrap=True)
    if not con.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        con.width = PIPE_WIDTH
    return con


def print_table(con: Console, table: Table) -> None:
    """Print a table without cutting a number. Each column is at least as wide as its longest word, so
    a cell may wrap at a space (a unit onto the next line) but is never cut inside a word or
    shortened with '…'; a table that still does not fit the console is printed at its own width and
    the terminal wraps its lines (rich would squeeze it to the console's width). No outer border:
    four more columns for the numbers."""
    table.show_edge = table.pad_edge = False
    for col in table.columns:
        texts = [col.header, *col.cells]
        words = [w for t in texts for w in (t.plain if isinstance(t, Text) else str(t)).split()]
        col.min_width = max([col.min_width or 0, *map(cell_len, words)])
        col.overflow = "fold"
    need = Measurement.get(con, con.options.update_width(PIPE_WIDTH), table).minimum
    if need <= con.width:
        con.print(table)
        return
    width = con.width
    con.width = need
    try:
        con.print(table)
    finally:
        con.width = width


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
