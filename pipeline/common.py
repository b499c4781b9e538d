"""What every stage command shares: the --params option, quiet mode, logging, and turning errors into exit 1."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional, TypeVar

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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Tee(io.TextIOBase):
    """A text stream that also copies what it is given to a log file, line by line: a progress bar
    redrawn with carriage returns keeps only its last state, colours are dropped."""

    def __init__(self, stream, log) -> None:
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log.write(_ANSI.sub("", line.rsplit("\r", 1)[-1]) + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def isatty(self) -> bool:  # progress bars and colours decide by the terminal, not the file
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")

    def finish(self) -> None:
        """Write an unfinished last line."""
        if self._pending:
            self.write("\n")


@contextlib.contextmanager
def logged_to(path: Path | None) -> Iterator[None]:
    """Copy everything the command prints (stdout and stderr: its lines, warnings, the error) to
    `path` as well as the terminal; nothing when `path` is None, or in a torchrun process other than
    rank 0 (only rank 0 writes outputs, and the log is one: ranks opening it together would
    truncate each other's lines)."""
    if path is None or os.environ.get("RANK", "0") != "0":
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "w", encoding="utf-8", buffering=1)  # line-buffered: `tail -f` follows a running stage
    out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        out.finish()
        err.finish()
        log.close()


LOG_PARAMETER = inspect.Parameter(
    "log_file",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        # --log-file too: under torchrun, whose parser reads `--log` as an ambiguous abbreviation
        # of its own --log-dir / --log-line-prefix-template even after the training script.
        Optional[Path],
        typer.Option("--log", "--log-file", help="Also write everything this command prints to this file."),
    ],
)


def reports_errors(command: F) -> F:
    """Print a SegpipeError as one clear message on stderr and exit 1, without a traceback; add a
    `--log FILE` option that copies the command's output to FILE (dvc.yaml gives each stage one)."""

    @functools.wraps(command)
    def wrapper(*args, log_file: Path | None = None, **kwargs):
        with logged_to(log_file):
            configure_logging()
            try:
                return command(*args, **kwargs)
            except SegpipeError as exc:
                typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
                raise typer.Exit(1) from None

    signature = inspect.signature(command)
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), LOG_PARAMETER])
    return wrapper  # type: ignore[return-value]
