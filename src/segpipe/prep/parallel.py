"""Run one function over many files on every core, keeping every file's error.

Worker processes never outlive the command: on Linux each asks the kernel to kill it when its
parent dies (even by SIGKILL, which runs no cleanup), and on an error, Ctrl-C or SIGTERM the parent
kills them before unwinding. A worker left behind would hold the caller's stdout and stderr open,
so a script capturing the command's output would wait forever.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from segpipe.errors import SegpipeError, sigterm_held

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a process pool costs more to start than it saves.
PARALLEL_THRESHOLD = 16
MAX_ERRORS_SHOWN = 20


def map_files(
    fn: Callable[[T], R], items: Sequence[T], *, workers: int = 0, progress: bool = True, desc: str = ""
) -> list[R | SegpipeError]:
    """`fn(item)` for every item, in order, in worker processes when there are many items.

    A SegpipeError raised (or returned) for an item becomes that item's outcome, so every item is
    attempted and a user can fix all bad files in one pass; `raise_failures` reports them.

    Args:
        fn: a picklable (top-level or functools.partial) function.
        items: the work items.
        workers: processes to use; 0 means one per CPU core.
        progress: show a progress bar (on a terminal only).
        desc: the progress bar's label.
    """
    workers = min(workers or os.cpu_count() or 1, len(items))
    outcomes: list[R | SegpipeError] = []
    with tqdm(total=len(items), desc=desc, disable=None if progress else True, unit="img") as bar:
        if workers <= 1 or len(items) <= PARALLEL_THRESHOLD:
            for item in items:
                outcomes.append(_attempt(fn, item))
                bar.update()
            return outcomes
        before = set(multiprocessing.active_children())
        # A forked worker's parent is this process; under other start methods it is a server process.
        parent = os.getpid() if multiprocessing.get_start_method() == "fork" else None
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(parent,))
        try:
            chunksize = max(1, min(8, len(items) // (4 * workers)))
            # map submits every chunk, and so forks the workers, at once. A SIGTERM arriving during
            # a fork would raise inside an at-fork hook, which swallows exceptions: hold it until
            # the workers exist (it is then raised here, and they are stopped below).
            with sigterm_held():
                results = pool.map(_attempt, [fn] * len(items), items, chunksize=chunksize)
            for outcome in results:
                outcomes.append(outcome)
                bar.update()
        except BaseException:
            # A worker may be stuck on one file, and whatever the workers write is about to be
            # thrown away with the caller's temporary folder: stop them now rather than wait.
            # (The pool's manager thread then sees them gone, and the shutdown below joins it.)
            for process in set(multiprocessing.active_children()) - before:
                process.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(parent: int | None) -> None:
    """In each worker: take SIGTERM's default action, and die with the parent (Linux)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's handler
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl to be found: workers then rely on the parent's cleanup
        return
    if parent is not None and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _attempt(fn: Callable[[T], R], item: T) -> R | SegpipeError:
    try:
        return fn(item)
    except SegpipeError as exc:
        return exc


def failures(outcomes: Sequence[object]) -> list[str]:
    return [str(outcome) for outcome in outcomes if isinstance(outcome, SegpipeError)]


def raise_failures(outcomes: Sequence[R | SegpipeError]) -> list[R]:
    """The results, or one SegpipeError that lists every failed item (the messages name the files)."""
    errors = failures(outcomes)
    if errors:
        raise SegpipeError(f"{len(errors)} of {len(outcomes)} files failed:\n" + cap_lines(errors))
    return list(outcomes)  # type: ignore[arg-type]


def cap_lines(lines: Sequence[str], indent: str = "") -> str:
    """The first MAX_ERRORS_SHOWN lines, then '... and N more': error lists stay readable."""
    shown = list(lines[:MAX_ERRORS_SHOWN])
    if len(lines) > MAX_ERRORS_SHOWN:
        shown.append(f"{indent}... and {len(lines) - MAX_ERRORS_SHOWN} more")
    return "\n".join(shown)
