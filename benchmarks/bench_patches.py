"""Thin structures: road IoU of letterbox training against patch training, same steps, same input.

Synthetic aerial tiles with thin roads (`--road-width` pixels at native size, one or two pixels
once a tile is letterboxed to `--input`) are converted, split, and used to train the same small
U-Net twice for the same number of steps on `--input`-pixel inputs: once on whole tiles
letterboxed to that size, once on one random `--input` crop per tile and epoch at native
resolution. Each model is then scored on the validation tiles at their own resolution the way
`evaluate` scores it (letterboxed whole, or blended tiles), and the road IoU of both is printed,
with the ratio; patch training should win clearly.

    python benchmarks/bench_patches.py --count 48 --size 256 --road-width 3 --input 64 --epochs 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the checkout's library
from segpipe.config import Params, parse_params  # noqa: E402
from segpipe.imageio import read_class_mask, read_image  # noqa: E402
from segpipe.inference.predictor import Predictor  # noqa: E402
from segpipe.layout import Sample, training_samples, validation_samples  # noqa: E402
from segpipe.metrics import ConfusionMatrix  # noqa: E402
from segpipe.prep.convert import convert_dataset  # noqa: E402
from segpipe.prep.split import write_split  # noqa: E402
from segpipe.prep.synthetic import AERIAL_CLASSES, AERIAL_COLORS, make_aerial  # noqa: E402
from segpipe.training.loop import fit  # noqa: E402

ROAD = AERIAL_CLASSES.index("road")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=48, help="synthetic aerial tiles")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--road-width", type=int, default=3, help="road width in pixels at native size")
    parser.add_argument("--input", type=int, default=64, help="model input side: letterbox canvas and patch")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--balance", type=float, default=0.8, help="train.patch_class_balance of the patch run")
    parser.add_argument("--base-channels", type=int, default=8, help="width of the plain U-Net")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def params_for(sampling: str, args: argparse.Namespace) -> Params:
    """The same model, loss, optimiser and schedule; only how a tile becomes an input differs."""
    return parse_params({
        "base": {"seed": args.seed, "classes": list(AERIAL_CLASSES)},
        "data": {"format": "masks", "mask_colors": AERIAL_COLORS, "workers": 1},
        "split": {"val_fraction": 0.25},
        "model": {"backbone": "plain", "base_channels": args.base_channels},
        "train": {
            "image_size": args.input, "sampling": sampling, "patch_size": args.input, "patch_scale": 1.0,
            "patches_per_image": 1,  # as many inputs per epoch as letterboxing: the same steps
            "patch_class_balance": args.balance, "epochs": args.epochs, "batch_size": args.batch_size,
            "freeze_batch_size": args.batch_size, "lr": args.lr, "device": "cpu", "save_period": 0,
            "eval_period": args.epochs,
        },
    })


def prepare(root: Path, args: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    """Make, convert and split the synthetic tiles; returns (train, val) samples."""
    params = params_for("letterbox", args)
    make_aerial(root / "raw", count=args.count, size=args.size, seed=args.seed, road_width=args.road_width)
    processed, splits = root / "processed", root / "splits"
    convert_dataset(root / "raw", processed, root / "data.json", classes=params.base.classes, data=params.data, progress=False)
    write_split(processed, splits, params.split, params.split.seed)
    return training_samples(processed, splits, None), validation_samples(processed, splits)


def road_iou(checkpoint: Path, samples: list[Sample]) -> tuple[float, float]:
    """(road IoU, mIoU) over the samples at their own resolution, predicted as evaluate does."""
    predictor = Predictor.from_checkpoint(checkpoint)
    matrix = ConfusionMatrix(len(AERIAL_CLASSES))
    for sample in samples:
        matrix.update(read_class_mask(sample.mask), predictor.class_maps([read_image(sample.image)])[0])
    scores = matrix.compute()
    return float(scores.per_class["iou"][ROAD]), float(scores.miou)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.count} aerial tiles of {args.size} px, roads {args.road_width} px wide "
          f"({args.road_width * args.input / args.size:.1f} px at letterbox scale); plain U-Net width "
          f"{args.base_channels} on {args.input} px inputs, {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, val = prepare(root, args)
        steps = args.epochs * -(-len(train) // args.batch_size)
        print(f"{len(train)} training tiles, {len(val)} validation tiles; {steps} optimiser steps per run")
        results = {}
        for sampling in ("letterbox", "patches"):
            started = time.perf_counter()
            fit(params_for(sampling, args), train, val, root / sampling, progress=False)
            results[sampling] = road_iou(root / sampling / "best.pt", val)
            print(f"{sampling:>9}: road IoU {results[sampling][0]:.3f}  mIoU {results[sampling][1]:.3f}  "
                  f"({time.perf_counter() - started:.0f} s to train and score)")
    letterbox, patches = results["letterbox"][0], results["patches"][0]
    print(f"patches / letterbox road IoU: {patches / max(letterbox, 1e-9):.2f}x "
          f"({'patch training wins' if patches > letterbox else 'letterbox training wins'}, "
          f"by {patches - letterbox:+.3f})")


if __name__ == "__main__":
    main()
