"""Running ``repro`` commands in this process, and what a refused command must look like."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from repro.cli import cli


def invoke(*args):
    """``repro --device cpu ARGS`` through Click's runner, in this process."""
    return CliRunner().invoke(cli, ["--device", "cpu", *map(str, args)], catch_exceptions=False)


def one_line_error(result, *words: str) -> str:
    """Bad input: exit code not 0 and exactly one ``Error:`` line (no traceback) naming ``words``."""
    assert result.exit_code != 0
    text = result.output.strip()
    assert text.startswith("Error:") and "\n" not in text and "Traceback" not in text, text
    for w in words:
        assert w in text, text
    return text


def train_tiny_run(d: Path) -> tuple[Path, Path]:
    """A 3-steps-per-stage ``mini`` run under ``d`` (run folder, data root): for command tests."""
    root, run = d / "data", d / "run"
    r = invoke("train", "--config", "mini", "--out", run, "--root", root, "--layer-steps", 3, "--batch", 16)
    assert r.exit_code == 0, r.output
    return run, root
