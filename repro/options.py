"""Click options that several commands share, defined once so that they read the same everywhere."""
from __future__ import annotations

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
