"""Training speed against the model's own limit, measured in one run.

    python benchmarks/bench_train.py                                  # every section, CPU-sized
    python benchmarks/bench_train.py --only limit --backbones vgg16 --sizes 512 --channels-last both --compile both

Sections (--only, comma-separated; all by default):
  limit   the model's own rate: the loop's `train_step` (forward, backward, AdamW) on synthetic
          batches already on the device, per backbone, size, memory format and compile; on
          CUDA also GFLOP per image, TFLOP/s and share of --peak-tflops (989: H100 SXM bf16).
  loop    the real train loop (`fit`) over synthetic ISIC-sized (3000 x 2000) and PH2-sized
          (768 x 576) JPEGs: the first epoch (decoded cache built) and warm epochs, as a share
          of the limit measured just before; and warm epochs without the cache.
  cache   images/s the decoded cache delivers at 512 through the DataLoader (uint8 batches),
          and as normalised, augmented batches on the device; against decoding every time.
  shrink  a tiny U-Net (--tiny-channels) on full-size ISIC-sized photos against the same photos
          shrunk beforehand to fit 512: times of a first and a second ("seen") run, and their ratio.

The photos are generated first into a temporary folder (not timed), with a temporary cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the checkout's library
from segpipe.config import Params, parse_params  # noqa: E402
from segpipe.data.batches import DeviceBatches, OnlineAugment, default_online_transforms  # noqa: E402
from segpipe.data.cache import CACHE_ENV, DecodedCache  # noqa: E402
from segpipe.data.dataset import SegmentationDataset  # noqa: E402
from segpipe.data.letterbox import letterbox_pair, normalize  # noqa: E402
from segpipe.imageio import read_class_mask, read_image, write_mask  # noqa: E402
from segpipe.layout import Sample  # noqa: E402
from segpipe.runtime import Distributed, Runtime  # noqa: E402
from segpipe.training.loaders import EpochBatches, make_loader  # noqa: E402
from segpipe.data.spec import spec_from_train  # noqa: E402
from segpipe.training.loop import PhaseNets, build_state, fit, train_step, use_channels_last  # noqa: E402
from segpipe.training.losses import make_loss  # noqa: E402

SECTIONS = ("limit", "loop", "cache", "shrink")
DATASETS = {"ISIC-sized": (2000, 3000), "PH2-sized": (576, 768)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run: " + ",".join(SECTIONS))
    parser.add_argument("--backbones", default="plain", help="comma-separated: plain,vgg16,resnet50 (limit; loop uses the first)")
    parser.add_argument("--sizes", default="256", help="comma-separated square input sides (limit; loop uses the first)")
    parser.add_argument("--base-channels", type=int, default=16, help="width of the plain U-Net")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=6, help="timed steps per limit measurement")
    parser.add_argument("--channels-last", choices=["auto", "true", "false", "both"], default="auto")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument("--photos", type=int, default=40, help="photos per synthetic dataset")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each loop run (warm = 2nd to last but one)")
    parser.add_argument("--tiny-channels", type=int, default=4, help="plain U-Net width in the shrink section")
    parser.add_argument("--tiny-size", type=int, default=256, help="image_size in the shrink section")
    parser.add_argument("--workers", type=int, default=0, help="train.workers (DataLoader processes)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, TFLOP/s")
    return parser.parse_args()


def make_params(args: argparse.Namespace, **train) -> Params:
    model = {"backbone": train.pop("backbone", "plain"), "base_channels": train.pop("base_channels", args.base_channels)}
    defaults = {"batch_size": args.batch_size, "freeze_batch_size": args.batch_size, "device": args.device,
                "workers": args.workers, "save_period": 0, "warmup_epochs": 0}
    return parse_params({"model": model, "train": {**defaults, **train}})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- synthetic photos ------------------------------------------------------------------------


def write_photo(folder: Path, size_hw: tuple[int, int], index: int) -> Sample:
    """A dermoscopy-like JPEG (quality 95, as ISIC's) with a dark irregular lesion, and its mask."""
    rng = np.random.default_rng(index)
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.arctan2(yy - h * rng.uniform(0.4, 0.6), xx - w * rng.uniform(0.4, 0.6))
    wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.sin(5 * angle + rng.uniform(0, 6))
    radius = np.hypot((yy - h / 2) / (0.3 * h), (xx - w / 2) / (0.25 * w)) / wobble
    skin = np.stack([205 + 25 * np.sin(xx / w * 5), 160 + 20 * np.cos(yy / h * 6), 140 + 10 * np.sin((xx + yy) / w)], -1)
    darkness = np.clip(1.15 - radius, 0, 1)[..., None] * (0.55 + 0.1 * np.sin(xx / 37)[..., None])
    pixels = skin * (1 - darkness) + rng.normal(0, 5, (h, w, 3)).astype(np.float32)
    image_id = f"photo{index:03d}"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "images" / f"{image_id}.jpg", quality=95)
    write_mask(folder / "masks" / f"{image_id}.png", (radius < 1).astype(np.uint8))
    return Sample(image_id, folder / "images" / f"{image_id}.jpg", folder / "masks" / f"{image_id}.png")


def make_photos(folder: Path, size_hw: tuple[int, int], count: int) -> list[Sample]:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(partial(write_photo, folder, size_hw), range(count)))


def shrink_copy(samples: list[Sample], folder: Path, side: int) -> list[Sample]:
    """The same photos shrunk beforehand to fit side x side (area-averaged; masks nearest)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shrunk = []
    for sample in samples:
        full = read_image(sample.image)
        scale = side / max(full.shape[:2])
        size = (round(full.shape[1] * scale), round(full.shape[0] * scale))
        target = Sample(sample.id, folder / "images" / sample.image.name, folder / "masks" / sample.mask.name)
        Image.fromarray(cv2.resize(full, size, interpolation=cv2.INTER_AREA)).save(target.image, quality=95)
        write_mask(target.mask, cv2.resize(read_class_mask(sample.mask), size, interpolation=cv2.INTER_NEAREST_EXACT))
        shrunk.append(target)
    return shrunk


# -- limit: the model's own step rate --------------------------------------------------------


class ModelAlone:
    """The loop's `train_step` on one synthetic batch already on the device: the loop's model,
    memory format, compile, precision, loss and optimiser, and no data. Its own model, so timing
    it between the epochs of a real run leaves that run alone."""

    def __init__(self, params: Params) -> None:
        cfg = self.cfg = params.train
        self.runtime = Runtime.resolve(cfg.device)
        device = self.runtime.device
        channels_last = use_channels_last(cfg, device)
        spec = spec_from_train(cfg)
        self.state = build_state(params.model, cfg, len(params.base.classes), spec, self.runtime, channels_last=channels_last)
        self.net = PhaseNets(self.state.model, self.runtime.dist, compile=cfg.compile).for_phase(False)
        self.loss_fn = make_loss(cfg).to(device)
        generator = torch.Generator().manual_seed(0)
        shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        images = normalize(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device))
        self.images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.masks = torch.randint(0, 2, (cfg.batch_size, cfg.image_size, cfg.image_size), generator=generator).to(device)
        self.state.model.train()
        self.seconds(2)  # warm-up: allocator, cuDNN autotuning, compilation

    def seconds(self, steps: int) -> float:
        """Wall time of `steps` training steps."""
        synchronize(self.runtime.device)
        started = time.perf_counter()
        for _ in range(steps):
            train_step(self.state, self.net, self.images, self.masks, self.loss_fn, self.runtime, self.cfg.grad_clip)
        synchronize(self.runtime.device)
        return time.perf_counter() - started

    def rate(self, steps: int, repeats: int = 3) -> float:
        """Images/s: the best of `repeats` runs of `steps` steps."""
        return self.cfg.batch_size * steps / min(self.seconds(steps) for _ in range(repeats))

    def step_flops(self) -> float:
        """FLOPs of one forward and backward pass."""
        with FlopCounterMode(display=False) as counter:
            with self.runtime.precision.autocast(self.runtime.device):
                loss = self.loss_fn(self.state.model(self.images).float(), self.masks)
            loss.backward()
        return float(counter.get_total_flops())


def limit_section(args: argparse.Namespace, device: torch.device) -> None:
    cuda = device.type == "cuda"
    formats = {"both": ["false", "true"]}.get(args.channels_last, [args.channels_last])
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(f"\n== limit: train_step on synthetic batches already on {device}, batch {args.batch_size}, {args.iters} timed steps")
    header = f"{'backbone':<10}{'size':>6}{'ch-last':>9}{'compile':>9}{'img/s':>10}{'ms/step':>10}"
    print(header + (f"{'GFLOP/img':>11}{'TFLOP/s':>9}{'% peak':>8}" if cuda else ""))
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for channels_last in formats:
                for compiled in compiles:
                    params = make_params(args, backbone=backbone, image_size=size, compile=compiled,
                                         channels_last="auto" if channels_last == "auto" else channels_last == "true")
                    label = f"{backbone:<10}{size:>6}{channels_last:>9}{'on' if compiled else 'off':>9}"
                    try:
                        alone = ModelAlone(params)
                        rate, step_flops = alone.rate(args.iters), alone.step_flops() if cuda else None
                    except torch.OutOfMemoryError:
                        print(f"{label}  out of memory")
                        torch.cuda.empty_cache()
                        continue
                    line = f"{label}{rate:>10.1f}{1000 * args.batch_size / rate:>10.1f}"
                    if step_flops is not None:
                        tflops = step_flops / args.batch_size * rate / 1e12
                        line += f"{step_flops / args.batch_size / 1e9:>11.1f}{tflops:>9.1f}{100 * tflops / args.peak_tflops:>7.1f}%"
                    print(line, flush=True)


# -- loop: the real train loop ---------------------------------------------------------------


def paired_fit(params: Params, samples: list[Sample], models_dir: Path) -> list[float]:
    """Run `fit` on `samples` (the first also validates) and, right after each epoch, the model
    alone for the same number of steps; returns each epoch's (model-alone time / epoch time),
    the share of the limit it reached. Pairing them in time keeps a change in the machine's load
    from reading as a gap. The first epoch counts from the call (model, cache build)."""
    alone = ModelAlone(params)
    steps = -(-len(samples) // params.train.batch_size)
    shares, marks = [], [time.perf_counter()]

    def after_epoch(state) -> None:
        epoch_seconds = time.perf_counter() - marks[-1]
        shares.append(alone.seconds(steps) / epoch_seconds)
        marks.append(time.perf_counter())

    fit(params, samples, samples[:1], models_dir, progress=False, on_epoch_end=after_epoch)
    return shares


def loop_section(args: argparse.Namespace, datasets: dict[str, list[Sample]], work: Path) -> None:
    backbone, size = args.backbones.split(",")[0], int(args.sizes.split(",")[0])
    train = {"backbone": backbone, "image_size": size, "epochs": args.epochs, "eval_period": args.epochs,
             "channels_last": {"true": True, "false": False}.get(args.channels_last, "auto"), "compile": args.compile == "on"}
    print(f"\n== loop: fit over {args.photos} photos, {backbone} at {size}, {args.epochs} epochs; each epoch's "
          "time against the model alone for the same steps, run right after it")
    print(f"{'photos':<12}{'cache':>7}{'model alone':>13}{'1st epoch':>11}{'warm epochs (2 to last but one)':>34}")
    for name, samples in datasets.items():
        for cached in (True, False):
            params = make_params(args, **train, cache=cached)
            shares = paired_fit(params, samples, work / f"models-{name}-{cached}")
            limit = ModelAlone(params).rate(max(1, len(samples) // args.batch_size), repeats=1)
            warm = shares[1:-1]
            print(f"{name:<12}{'on' if cached else 'off':>7}{limit:>9.2f} img/s{shares[0]:>9.2f} x"
                  f"{f'median {np.median(warm):.2f} x, best {max(warm):.2f} x':>34}", flush=True)


# -- cache: delivery rate --------------------------------------------------------------------


def rate_of(passes: int, one_pass: Callable[[int], int]) -> float:
    """Images per second over `passes` calls of one_pass(pass) -> images, after one untimed pass."""
    one_pass(-1)
    started = time.perf_counter()
    images = sum(one_pass(index) for index in range(passes))
    return images / (time.perf_counter() - started)


def cache_section(args: argparse.Namespace, samples: list[Sample], work: Path) -> None:
    size, device = 512, Runtime.resolve(args.device).device
    print(f"\n== cache: {len(samples)} ISIC-sized photos at {size}, batch {args.batch_size}")
    cache = DecodedCache(work / "cache-section")
    started = time.perf_counter()
    cache.warm(samples, SegmentationDataset(samples, size).shaping)
    print(f"{'build (decode once, all cores)':<48}{len(samples) / (time.perf_counter() - started):>9.1f} img/s")
    dataset = SegmentationDataset(samples, size, cache)
    passes = max(2, 480 // len(samples))
    for workers in (0, 2):
        batches = EpochBatches(len(dataset), 0, Distributed(), args.batch_size)
        loader = make_loader(dataset, batches, workers, device)

        def read(index: int) -> int:
            batches.set_epoch(index)
            return sum(len(images) for images, _, _ in loader)

        print(f"{f'cached uint8 batches, {workers} workers':<48}{rate_of(passes, read):>9.1f} img/s", flush=True)
    augment = OnlineAugment(default_online_transforms(), 0, len(dataset))
    to_device = DeviceBatches(device, channels_last=True, augment=augment)
    batches = EpochBatches(len(dataset), 0, Distributed(), args.batch_size)
    loader = make_loader(dataset, batches, 0, device)

    def ready(index: int) -> int:
        batches.set_epoch(index)
        count = sum(len(to_device(batch, index)[0]) for batch in loader)
        synchronize(device)
        return count

    print(f"{f'... normalised + augmented on {device.type}, 0 workers':<48}{rate_of(passes, ready):>9.1f} img/s", flush=True)
    uncached = SegmentationDataset(samples, size)
    print(f"{'decoded every time (reduced-scale JPEG decode)':<48}"
          f"{rate_of(1, lambda _: sum(1 for _ in map(uncached.__getitem__, range(len(samples))))):>9.1f} img/s")

    def full_decode(_: int) -> int:
        for sample in samples:
            letterbox_pair(read_image(sample.image), read_class_mask(sample.mask), (size, size))
        return len(samples)

    print(f"{'decoded every time, whole JPEG (before the cache)':<48}{rate_of(1, full_decode):>9.1f} img/s", flush=True)


# -- shrink: full-size photos against the same photos shrunk beforehand ----------------------


def shrink_section(args: argparse.Namespace, photos: list[Sample], work: Path) -> None:
    shrunk = shrink_copy(photos, work / "shrunk", 512)
    os.environ[CACHE_ENV] = str(work / "shrink-cache")  # the first run starts cold
    params = make_params(args, base_channels=args.tiny_channels, image_size=args.tiny_size, epochs=3, eval_period=3)
    limit = ModelAlone(params).rate(-(-len(photos) // args.batch_size))
    print(f"\n== shrink: plain U-Net of width {args.tiny_channels} at {args.tiny_size}, 3 epochs on {len(photos)} "
          f"photos; the model alone: {limit:.1f} img/s, {3 * len(photos) / limit:.1f} s for 3 epochs")
    print(f"{'run':<26}{'full-size s':>12}{'pre-shrunk s':>14}{'ratio':>8}")
    datasets = {"full-size": photos, "pre-shrunk": shrunk}
    uncached = make_params(args, base_channels=args.tiny_channels, image_size=args.tiny_size, epochs=3, eval_period=3, cache=False)
    seen: dict[str, list[float]] = {"full-size": [], "pre-shrunk": []}
    for run, run_params in (("first (cache built)", params), ("seen", params), ("seen again", params), ("without the cache", uncached)):
        seconds = {}
        for name, samples in datasets.items():  # alternating, so a change in the machine's load hits both
            started = time.perf_counter()
            fit(run_params, samples, samples[:1], work / f"shrink-{name}", progress=False)
            seconds[name] = time.perf_counter() - started
            if run.startswith("seen"):
                seen[name].append(seconds[name])
        full, small = seconds["full-size"], seconds["pre-shrunk"]
        print(f"{run:<26}{full:>12.2f}{small:>14.2f}{full / small:>8.2f}", flush=True)
    full, small = min(seen["full-size"]), min(seen["pre-shrunk"])
    print(f"{'seen, best of two':<26}{full:>12.2f}{small:>14.2f}{full / small:>8.2f}", flush=True)


def main() -> None:
    args = parse_args()
    sections = args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    device = Runtime.resolve(args.device).device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"device: {name}; load average {os.getloadavg()[0]:.1f} (other processes slow every number down)")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        os.environ[CACHE_ENV] = str(work / "cache")  # a cold cache of this run's own
        if "limit" in sections:
            limit_section(args, device)
        if not set(sections) & {"loop", "cache", "shrink"}:
            return
        started = time.perf_counter()
        datasets = {name: make_photos(work / name, size, args.photos) for name, size in DATASETS.items()}
        print(f"\ngenerated {args.photos} photos of each size in {time.perf_counter() - started:.0f} s (not counted)")
        if "loop" in sections:
            loop_section(args, datasets, work)
        if "cache" in sections:
            cache_section(args, datasets["ISIC-sized"], work)
        if "shrink" in sections:
            shrink_section(args, datasets["ISIC-sized"], work)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
