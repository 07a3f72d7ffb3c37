"""Where each subcommand is attached to the group. One line per command group."""
from __future__ import annotations

import click

from repro.commands.control import control
from repro.commands.data import data
from repro.commands.evaluate import evaluate
from repro.commands.export import export
from repro.commands.info import info
from repro.commands.scaling import scaling_sweep
from repro.commands.train import train
from repro.commands.visualize import visualize


def register(cli: click.Group) -> None:
    for command in (info, export, train, evaluate, data, visualize, control, scaling_sweep):
        cli.add_command(command)
