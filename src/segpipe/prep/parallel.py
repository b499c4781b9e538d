"""Run one function over many files on every core, keeping every file's error."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from segpipe.errors import SegpipeError

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
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            chunksize = max(1, min(8, len(items) // (4 * workers)))
            for outcome in pool.map(_attempt, [fn] * len(items), items, chunksize=chunksize):
                outcomes.append(outcome)
                bar.update()
        finally:
            # On an interrupt, drop the queued items rather than letting them finish writing.
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


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
