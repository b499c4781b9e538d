"""What every stage command shares: the --params option, quiet mode, logging, and turning errors into exit 1."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from tqdm import tqdm

from segpipe.errors import SegpipeError

F = TypeVar("F", bound=Callable)

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file (all settings).")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars, even on a terminal (elsewhere they never show).")
]


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write, so they print above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_logging() -> None:
    """segpipe's own INFO lines on stderr; other libraries only at WARNING (Python's default).

    MLflow sets up its own logger at INFO when imported and prints database set-up lines on a new
    store; MLFLOW_LOGGING_LEVEL (unless the user set it) keeps it to warnings.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logger = logging.getLogger("segpipe")
    if not any(isinstance(handler, _TqdmHandler) for handler in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def reports_errors(command: F) -> F:
    """Print a SegpipeError as one clear message on stderr and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        configure_logging()
        try:
            return command(*args, **kwargs)
        except SegpipeError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
