"""Run one function over many files on every core, collecting every file's error."""

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
MIN_ITEMS_FOR_POOL = 16
MAX_ERRORS_SHOWN = 20


def resolve_workers(workers: int) -> int:
    """0 means one worker per core."""
    return workers or os.cpu_count() or 1


def map_files(
    fn: Callable[[T], R], items: Sequence[T], *, workers: int = 0, progress: bool = True, desc: str = ""
) -> list[R]:
    """Apply `fn` to every item (in order), in worker processes when there are many.

    `fn` must be a picklable top-level function. Every item is attempted; if any raised a
    SegpipeError, one SegpipeError listing each failure (the messages name the files) is raised
    at the end, so a user fixes all bad files in one pass rather than one per run.
    """
    workers = resolve_workers(workers)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="img")
    outcomes: list[tuple[R | None, str | None]] = []
    if workers > 1 and len(items) >= MIN_ITEMS_FOR_POOL:
        chunk = max(1, len(items) // (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_chunk, fn, items[i : i + chunk]) for i in range(0, len(items), chunk)]
            for future in futures:  # in submission order, so results keep the items' order
                done = future.result()
                outcomes += done
                bar.update(len(done))
    else:
        for item in items:
            outcomes += _run_chunk(fn, [item])
            bar.update()
    bar.close()
    errors = [error for _, error in outcomes if error is not None]
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        tail = [f"... and {more} more"] if more else []
        raise SegpipeError(f"{len(errors)} of {len(items)} files failed:\n" + "\n".join(shown + tail))
    return [value for value, _ in outcomes]  # type: ignore[misc]


def _run_chunk(fn: Callable[[T], R], items: Sequence[T]) -> list[tuple[R | None, str | None]]:
    out: list[tuple[R | None, str | None]] = []
    for item in items:
        try:
            out.append((fn(item), None))
        except SegpipeError as exc:
            out.append((None, str(exc)))
    return out
