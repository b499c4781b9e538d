"""The exceptions that stage commands turn into a clean message and exit code, and SIGTERM as one."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class SegpipeError(Exception):
    """Bad input or configuration: the message says what, where (file, key, label) and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every cleanup that Ctrl-C runs runs for it too."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signum}")


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
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
