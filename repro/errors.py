"""Errors a user can act on: shown as one line, exit code 1, no traceback.

Raised anywhere (data, model, engine, experiments); only the command line decides how to show
them, so nothing below it depends on the CLI library.
"""
from __future__ import annotations


class ReproError(Exception):
    """Bad input or an impossible request. The message names the file or option and the problem."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
