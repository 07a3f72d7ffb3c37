"""Where each subcommand is attached to the group. One line per command group."""
from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from repro.commands.evaluate import evaluate
    from repro.commands.export import export
    from repro.commands.info import info
    from repro.commands.scaling import scaling_sweep
    from repro.commands.train import train
    from repro.commands.visualize import visualize
    from repro.commands.control import control
    from repro.commands.data import data

    cli.add_command(info)
    cli.add_command(export)
    cli.add_command(train)
    cli.add_command(evaluate)
    cli.add_command(data)
    cli.add_command(visualize)
    cli.add_command(control)
    cli.add_command(scaling_sweep)
