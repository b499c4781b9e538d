"""Training throughput per backbone: images/s of forward + backward + optimizer step.

Synthetic random batches, so only the model, the loss and the optimizer are timed (no data loading).
On CUDA the step runs as in training (bf16 autocast where supported, channels_last), and the
FLOPs of one step, counted by torch's FlopCounterMode, give the achieved TFLOP/s and its share of
the GPU's dense bf16 peak (--peak-tflops; 989 is the H100 SXM's).

    python benchmarks/bench_train.py --backbones plain,vgg16 --sizes 256 --iters 5
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the checkout's library
from segpipe.config import ModelSection  # noqa: E402
from segpipe.config import parse_params  # noqa: E402
from segpipe.models import BACKBONES, build_model  # noqa: E402
from segpipe.training.losses import make_loss  # noqa: E402
from segpipe.training.optim import make_optimizer  # noqa: E402
from segpipe.runtime import Precision, resolve_device  # noqa: E402


@dataclass(frozen=True)
class Result:
    images_per_s: float
    ms_per_step: float
    step_flops: float | None  # one forward + backward, None where not counted
    peak_memory_gib: float | None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated: plain,vgg16,resnet50")
    parser.add_argument("--cbam", choices=["off", "on", "both"], default="both", help="without/with CBAM, or both")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square input sides")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--base-channels", type=int, default=16, help="width of the plain U-Net")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, TFLOP/s")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    backbone: str, cbam: bool, size: int, args: argparse.Namespace, device: torch.device, precision: Precision
) -> Result:
    params = parse_params({"model": {"backbone": backbone, "cbam": cbam}})
    model = build_model(ModelSection(backbone=backbone, cbam=cbam, base_channels=args.base_channels), 2).to(device).train()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, params.train)
    loss_fn = make_loss(params.train).to(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device, memory_format=memory_format)
    masks = torch.randint(0, 2, (args.batch_size, size, size), generator=generator).to(device)

    def step() -> None:
        with precision.autocast(device):
            loss = loss_fn(model(images).float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.iters):
        step()
    synchronize(device)
    seconds = time.perf_counter() - started
    flops = memory = None
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**30
        with FlopCounterMode(display=False) as counter:
            with precision.autocast(device):
                loss = loss_fn(model(images).float(), masks)
            loss.backward()
        flops = float(counter.get_total_flops())
    return Result(args.batch_size * args.iters / seconds, 1000 * seconds / args.iters, flops, memory)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    precision = Precision.for_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}, {torch.get_num_threads()} threads"
    print(f"device: {name}; precision {precision.name}; batch {args.batch_size}; "
          f"{args.warmup} warm-up + {args.iters} timed steps (forward + backward + AdamW step)")
    header = f"{'backbone':<10}{'cbam':<6}{'size':>6}{'img/s':>10}{'ms/step':>10}"
    if device.type == "cuda":
        header += f"{'GFLOP/img':>11}{'TFLOP/s':>9}{'% peak':>8}{'mem GiB':>9}"
    print(header)
    cbam_options = {"off": [False], "on": [True], "both": [False, True]}[args.cbam]
    for backbone in args.backbones.split(","):
        for cbam in cbam_options:
            for size in (int(s) for s in args.sizes.split(",")):
                label = f"{backbone:<10}{'yes' if cbam else 'no':<6}{size:>6}"
                try:
                    result = bench_one(backbone, cbam, size, args, device, precision)
                except torch.OutOfMemoryError:
                    print(f"{label}  out of memory at batch {args.batch_size}")
                    torch.cuda.empty_cache()
                    continue
                line = f"{label}{result.images_per_s:>10.1f}{result.ms_per_step:>10.1f}"
                if result.step_flops is not None:
                    tflops = result.step_flops * result.images_per_s / args.batch_size / 1e12
                    line += (f"{result.step_flops / args.batch_size / 1e9:>11.1f}{tflops:>9.1f}"
                             f"{100 * tflops / args.peak_tflops:>7.1f}%{result.peak_memory_gib:>9.2f}")
                print(line, flush=True)


if __name__ == "__main__":
    main()
