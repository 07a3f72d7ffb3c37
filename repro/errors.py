"""Errors a user can act on: shown as one line, exit code 1, no traceback."""
from __future__ import annotations

import click


class ReproError(click.ClickException):
    """Bad input or an impossible request. The message names the file or option and the problem."""
