"""The ``repro`` command line: a Click group; each command parses options and calls one function.

Launch the same commands with one rank (``repro train``) or many (``mpiexec -n 4 repro train``).
"""
from __future__ import annotations

import sys

import click

from repro import __version__
from repro.engine import threads

threads.configure()  # before NumPy loads: BLAS reads its thread count once

from repro.commands import register  # noqa: E402
from repro.engine import comm  # noqa: E402
from repro.options import DEVICES, Obj, ReproGroup  # noqa: E402


@click.group(cls=ReproGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="repro")
@click.option("--device", type=click.Choice(DEVICES), default="auto", envvar="REPRO_DEVICE", show_default=True,
              help="Array backend of every command: NumPy on CPU or CuPy on GPU (auto = GPU if CuPy sees one); "
              "a command's own --device wins ($REPRO_DEVICE).")
@click.pass_context
def cli(ctx: click.Context, device: str) -> None:
    """Reproduce the cat-neuron experiment (Le et al. 2012) on a GPU or CPU cluster (Coates et al. 2013).

    \b
    Example: train, evaluate faces, draw the best neuron
      repro train --out results/faces32
      repro evaluate --checkpoint results/faces32
      repro visualize best-neuron --checkpoint results/faces32
    """
    ctx.obj = Obj(device=device)


register(cli)  # one small module per command


def main(argv: list[str] | None = None) -> None:
    """Console entry point: any error on any rank ends every rank of the job."""
    with comm.abort_on_error():
        try:
            rv = cli.main(args=argv, prog_name="repro", standalone_mode=False)
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
        except click.ClickException as exc:
            if comm.world().size > 1:
                comm.report_and_abort(f"Error: {exc.format_message()}", exc.exit_code)
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(rv, int) and rv != 0:  # a command's own exit code is returned by every rank alike
            raise comm.CollectiveExit(rv)
        sys.exit(0)


if __name__ == "__main__":
    main()
