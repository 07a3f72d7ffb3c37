"""Where each subcommand is attached to the group. One line per command group."""
from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    pass  # commands are added below as they land
