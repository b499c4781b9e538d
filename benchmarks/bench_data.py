"""Data-stage throughput: convert, split and augment N synthetic lesion images (labelme, 512 px).

The images are generated first (not timed as a stage) into a temporary folder, then each stage's
library function runs as `dvc repro` would run it, with the default params.

    python benchmarks/bench_data.py --count 1200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the checkout's library
from segpipe.prep.augment import augment_dataset  # noqa: E402
from segpipe.config import parse_params  # noqa: E402
from segpipe.prep.convert import convert_dataset  # noqa: E402
from segpipe.prep.synthetic import make_lesions  # noqa: E402
from segpipe.prep.split import write_split  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1200, help="images (the first paper's dataset has 1200)")
    parser.add_argument("--size", type=int, default=512, help="longer side of the generated images")
    parser.add_argument("--copies", type=int, default=2, help="augment.copies")
    parser.add_argument("--workers", type=int, default=0, help="data.workers; 0 = one process per core")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def timed(name: str, images: Callable[[object], int], call: Callable[[], object]) -> tuple[float, object]:
    """Run `call`, print how many images (counted from its result) it handled per second."""
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    count = images(result)
    print(f"{name:<10}{count:>8}{seconds:>10.2f}{count / seconds:>12.1f}", flush=True)
    return seconds, result


def main() -> None:
    args = parse_args()
    params = parse_params({"data": {"workers": args.workers}, "augment": {"copies": args.copies}})
    workers = args.workers or os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        make_lesions(root / "raw", count=args.count, size=args.size, seed=args.seed)
        print(f"generated {args.count} lesion images at {args.size} px in {time.perf_counter() - started:.1f} s "
              f"(not counted); {workers} worker processes")
        print(f"{'stage':<10}{'images':>8}{'seconds':>10}{'images/s':>12}")
        processed, splits, augmented = root / "processed", root / "splits", root / "augmented"
        convert_s, summary = timed("convert", lambda summary: summary.images, lambda: convert_dataset(
            root / "raw", processed, root / "data.json", classes=params.base.classes, data=params.data, progress=False
        ))
        split_s, _ = timed("split", lambda split: len(split.train) + len(split.val), lambda: write_split(
            processed, splits, params.split, params.base.seed
        ))
        augment_s, _ = timed("augment", lambda written: written, lambda: augment_dataset(
            processed, splits, augmented, params.augment, seed=params.base.seed, workers=params.data.workers,
            progress=False,
        ))
        total = convert_s + split_s + augment_s
        print(f"{'total':<10}{summary.images:>8}{total:>10.2f}{summary.images / total:>12.1f}  (source images through all three)")


if __name__ == "__main__":
    main()
