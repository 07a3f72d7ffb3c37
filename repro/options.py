"""Click options that several commands share, defined once so that they read the same everywhere."""
from __future__ import annotations

import click

FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_options(f):  # noqa: ANN001, ANN201
    """``--dpi`` and ``--format``: every command that draws writes its figures at this resolution in
    these formats (png for screens, pdf/svg for slides and papers)."""
    f = click.option("--format", "formats", type=click.Choice(FIGURE_FORMATS), multiple=True, default=("png",),
                     show_default=True, help="Figure format; repeat for several (png for screens, pdf/svg for slides).")(f)
    return click.option("--dpi", type=click.IntRange(30, 1200), default=150, show_default=True,
                        help="Resolution of raster figures.")(f)
