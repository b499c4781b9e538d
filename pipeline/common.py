"""What every stage command shares: the --params option, quiet mode and turning errors into exit 1."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from segpipe.errors import SegpipeError

F = TypeVar("F", bound=Callable)

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file (all settings).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (for CI logs).")]


def reports_errors(command: F) -> F:
    """Print a SegpipeError as one clear message on stderr and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return command(*args, **kwargs)
        except SegpipeError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
