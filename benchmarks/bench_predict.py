"""Prediction speed and memory: whole-image throughput at 512 x 512, and one large image tiled.

    python benchmarks/bench_predict.py [--checkpoint models/best.pt] [--size 8000] [--device auto]

Without --checkpoint a random-weight model is built (--backbone, --base-channels) with a fake
checkpoint around it, so the numbers measure speed only. Peak memory is the growth of the
process's peak resident set (getrusage ru_maxrss), which sees torch's native allocations that
tracemalloc misses; it is a high-water mark, so the tiled run is measured first, after the
input image exists, and the throughput run can only add to it. On CUDA the peak GPU memory
(torch.cuda.max_memory_allocated) is printed as well.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from segpipe.config import ModelSection  # noqa: E402
from segpipe.data.spec import LetterboxInput  # noqa: E402
from segpipe.inference.predictor import Predictor  # noqa: E402
from segpipe.data.tiling import Tiling, predict_tiled  # noqa: E402
from segpipe.models import build_model  # noqa: E402
from segpipe.runtime import resolve_device  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint; default: a random-weight model")
    parser.add_argument("--backbone", default="plain", help="model to build without --checkpoint (plain | vgg16 | resnet50)")
    parser.add_argument("--base-channels", type=int, default=16, help="plain U-Net width without --checkpoint")
    parser.add_argument("--image-size", type=int, default=512, help="model input side without --checkpoint")
    parser.add_argument("--images", type=int, default=16, help="512 x 512 images for the throughput run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=8000, help="side of the square image predicted tiled")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def make_predictor(args: argparse.Namespace, device: torch.device) -> Predictor:
    if args.checkpoint:
        return Predictor.from_checkpoint(args.checkpoint, device)
    model = build_model(2, **ModelSection(backbone=args.backbone, base_channels=args.base_channels).model_dump())
    return Predictor(model, ["background", "foreground"], LetterboxInput(args.image_size), device)


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_tiled(predictor: Predictor, args: argparse.Namespace, device: torch.device) -> None:
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    predict_tiled(predictor.predict_batch, image[: args.tile, : args.tile], Tiling(args.tile))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_rss_mib()
    start = time.perf_counter()
    labels, _ = predict_tiled(predictor.predict_batch, image, Tiling(args.tile, args.overlap, batch_size=args.batch_size))
    synchronize(device)
    seconds = time.perf_counter() - start
    stride = max(1, round(args.tile * (1 - args.overlap)))
    windows = (-(-(args.size - args.tile) // stride) + 1) ** 2 if args.size > args.tile else 1
    print(f"tiled {args.size}x{args.size}, tile {args.tile}, overlap {args.overlap}: {seconds:.1f} s "
          f"({windows} windows, {windows / seconds:.1f} windows/s), labels {labels.shape} {labels.dtype}")
    print(f"  peak RSS growth {peak_rss_mib() - before:.0f} MiB above {before:.0f} MiB "
          f"(image alone {image.nbytes / 2**20:.0f} MiB, label map {labels.nbytes / 2**20:.0f} MiB)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


def bench_throughput(predictor: Predictor, args: argparse.Namespace, device: torch.device) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(args.images)]
    predictor.predict_batch(images[: args.batch_size])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(images), args.batch_size):
        predictor.predict_batch(images[first : first + args.batch_size])
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"throughput 512x512 at model size {predictor.image_size}, batch {args.batch_size}: "
          f"{len(images) / seconds:.2f} images/s ({len(images)} images in {seconds:.1f} s)")


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    predictor = make_predictor(args, device)
    params = sum(p.numel() for p in predictor.model.parameters())
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {params / 1e6:.2f} M parameters, "
          f"image_size {predictor.image_size}")
    bench_tiled(predictor, args, device)
    bench_throughput(predictor, args, device)


if __name__ == "__main__":
    main()
