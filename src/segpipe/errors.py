"""The exceptions that stage commands turn into a clean message and exit code, and SIGTERM as one."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

# Seconds a process stopped by SIGTERM gets to unwind before the signal is raised again. An
# exception raised by a signal handler is lost when it lands in code that swallows exceptions
# (an at-fork hook while a worker is being started, a __del__), and the process would otherwise
# run on as if it had never been asked to stop.
INSIST_AFTER = 5.0


class SegpipeError(Exception):
    """Bad input or configuration: the message says what, where (file, key, label) and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every cleanup that Ctrl-C runs runs for it too."""


class _Stop:
    """One SIGTERM and what became of it: whether it waits for a `sigterm_held` block to end, and
    whether the unwinding it asked for has finished."""

    def __init__(self) -> None:
        self.pending = False
        self.unwound = False


_held = False  # inside a sigterm_held block
_stop: _Stop | None = None  # the SIGTERM received since the outermost sigterm_unwinds began


def _raise_terminated(signum, frame) -> None:
    global _stop
    if _stop is None:
        _stop = _Stop()
        threading.Thread(target=_insist, args=(_stop, threading.main_thread().ident), daemon=True).start()
    if _held:
        _stop.pending = True
        return
    raise Terminated(f"stopped by signal {signum}")


def _insist(stop: _Stop, main_thread: int) -> None:
    """Raise SIGTERM again in the main thread every INSIST_AFTER seconds until it has unwound."""
    while True:
        time.sleep(INSIST_AFTER)
        if stop.unwound or stop is not _stop:
            return
        signal.pthread_kill(main_thread, signal.SIGTERM)


@contextlib.contextmanager
def sigterm_held() -> Iterator[None]:
    """Within the block a SIGTERM is noted, not raised; it is raised on leaving the block.

    For code that must not be interrupted by an exception, e.g. starting worker processes: the
    exception would be raised in an at-fork hook, which swallows it.
    """
    global _held
    outer, _held = _held, True
    try:
        yield
    finally:
        _held = outer
    if not outer and _stop is not None and _stop.pending:
        _stop.pending = False
        raise Terminated("stopped by SIGTERM")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` instead of ending the process on the spot.

    Temporary outputs are then removed and open runs closed on the way out, as for Ctrl-C; the
    process still exits with status 143 (128 + SIGTERM), as a process killed by the signal would.
    Outside the main thread, where Python cannot install signal handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _stop
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    if previous is not _raise_terminated:  # the outermost block: no SIGTERM received yet
        _stop = None
    try:
        yield
    except Terminated:
        if _stop is not None:
            _stop.unwound = True
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
