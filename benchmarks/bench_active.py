"""Does labelling the images `suggest` picks first beat labelling random ones? Measured on the sample.

    nice -n 10 python benchmarks/bench_active.py                      # data/sample, 3 seeds
    python benchmarks/bench_active.py --seeds 0,1,2,3,4 --epochs 30 --top 15

The sample (data/sample, converted with the project's own `convert`) is split once, with
--split-seed, into a fixed validation set (--val images), a small labelled pool (--labelled) and
an unlabelled pool (the rest). For each seed: a model trained on the labelled pool ranks the
unlabelled pool by mean pixel entropy (`segpipe.inference.uncertainty`, what `suggest` writes
into ranking.csv); the --top most uncertain, and --top drawn at random with that seed, are each
added to the labelled pool and a model is trained on each from scratch with that seed. The
per-image mIoU of the two on the validation set is compared with the project's paired,
hierarchical bootstrap (`segpipe.experiments.bootstrap`, runs = seeds). With --onnx, the first
seed's active model is also exported to ONNX and the masks onnxruntime predicts for every
sample image are compared with PyTorch's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # the checkout's library
from segpipe.config import DataSection, Params, parse_params  # noqa: E402
from segpipe.data.cache import CACHE_ENV  # noqa: E402
from segpipe.experiments.bootstrap import paired_bootstrap, verdict  # noqa: E402
from segpipe.imageio import read_class_mask, read_image  # noqa: E402
from segpipe.inference.export import export_onnx, onnx_class_maps  # noqa: E402
from segpipe.inference.predictor import Predictor  # noqa: E402
from segpipe.inference.uncertainty import rank_folder  # noqa: E402
from segpipe.layout import Sample, samples_in  # noqa: E402
from segpipe.metrics import image_scores  # noqa: E402
from segpipe.prep.convert import convert_dataset  # noqa: E402
from segpipe.training.loop import fit  # noqa: E402

CLASSES = ("background", "lesion")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "sample", help="a labelme folder")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (runs of each group)")
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--val", type=int, default=30, help="validation images (fixed for every seed)")
    parser.add_argument("--labelled", type=int, default=8, help="the starting labelled pool")
    parser.add_argument("--top", type=int, default=8, help="images added by each strategy")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--onnx", action="store_true", help="also measure ONNX vs PyTorch masks on every sample image")
    return parser.parse_args()


def make_params(args: argparse.Namespace, seed: int) -> Params:
    return parse_params({
        "base": {"seed": seed, "classes": list(CLASSES)},
        "model": {"backbone": "plain", "base_channels": args.base_channels},
        "train": {"image_size": args.image_size, "epochs": args.epochs, "batch_size": 4, "freeze_batch_size": 4,
                  "device": "cpu", "save_period": 0, "warmup_epochs": 0},
    })


def train(args: argparse.Namespace, seed: int, samples: list[Sample], val: list[Sample], folder: Path) -> Path:
    fit(make_params(args, seed), samples, val, folder, progress=False)
    return folder / "best.pt"


def per_image_miou(checkpoint: Path, val: list[Sample]) -> np.ndarray:
    predictor = Predictor.from_checkpoint(checkpoint)
    images = [read_image(s.image) for s in val]
    labels = predictor.class_maps(images)
    return np.array([image_scores(read_class_mask(s.mask), lab, len(CLASSES)).miou for s, lab in zip(val, labels)])


def one_seed(args: argparse.Namespace, seed: int, pools: dict[str, list[Sample]], work: Path) -> dict[str, np.ndarray]:
    """Per-image validation mIoU of the start model, the active and the random model of one seed."""
    start = train(args, seed, pools["labelled"], pools["val"], work / f"s{seed}-start")
    by_image = {s.image: s for s in pools["unlabelled"]}
    ranking = rank_folder(Predictor.from_checkpoint(start), list(by_image), progress=False)
    active = [by_image[row.image] for row in ranking[: args.top]]
    rng = np.random.default_rng(seed)
    random = [pools["unlabelled"][i] for i in rng.choice(len(pools["unlabelled"]), args.top, replace=False)]
    overlap = len({s.id for s in active} & {s.id for s in random})
    print(f"seed {seed}: active picks {[s.id[-3:] for s in active]}, random {[s.id[-3:] for s in random]} ({overlap} shared)", flush=True)
    result = {"start": per_image_miou(start, pools["val"])}
    for name, extra in (("active", active), ("random", random)):
        checkpoint = train(args, seed, pools["labelled"] + extra, pools["val"], work / f"s{seed}-{name}")
        result[name] = per_image_miou(checkpoint, pools["val"])
    print("  " + ", ".join(f"{k} mIoU {100 * v.mean():.1f}" for k, v in result.items()), flush=True)
    return result


def split_pools(args: argparse.Namespace, processed: Path) -> dict[str, list[Sample]]:
    ids = sorted(p.stem for p in (processed / "masks").glob("*.png"))
    order = np.random.default_rng(args.split_seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    val, labelled = shuffled[: args.val], shuffled[args.val : args.val + args.labelled]
    unlabelled = shuffled[args.val + args.labelled :]
    return {name: samples_in(processed, sorted(group)) for name, group in
            (("val", val), ("labelled", labelled), ("unlabelled", unlabelled))}


def measure_onnx(checkpoint: Path, processed: Path, work: Path) -> None:
    report = export_onnx(checkpoint, work / "model.onnx")
    images = [read_image(p) for p in sorted((processed / "images").iterdir())]
    torch_masks = Predictor.from_checkpoint(checkpoint).class_maps(images)
    onnx_masks = onnx_class_maps(work / "model.onnx", images)
    differing = sum(int((a != b).sum()) for a, b in zip(torch_masks, onnx_masks))
    total = sum(m.size for m in torch_masks)
    print(f"onnx: max |probability difference| {report.max_abs_diff:.1e} on {report.checked_shapes}; "
          f"masks of {len(images)} sample images: {differing} of {total} pixels differ ({differing / total:.2e})")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_active-") as tmp:
        work = Path(tmp)
        os.environ[CACHE_ENV] = str(work / "cache")  # a private decoded cache, removed afterwards
        processed = work / "processed"
        convert_dataset(args.data, processed, work / "data.json", classes=CLASSES, data=DataSection(workers=1), progress=False)
        pools = split_pools(args, processed)
        print(f"{len(pools['val'])} val, {len(pools['labelled'])} labelled, {len(pools['unlabelled'])} unlabelled; "
              f"+{args.top} each; {args.epochs} epochs at {args.image_size} px, width {args.base_channels}; seeds {seeds}")
        results = [one_seed(args, seed, pools, work) for seed in seeds]
        if args.onnx:
            measure_onnx(work / f"s{seeds[0]}-active" / "best.pt", processed, work)
    random = np.stack([r["random"] for r in results])
    active = np.stack([r["active"] for r in results])
    result = paired_bootstrap(random, active, seed=0)
    print(f"mean val mIoU: start {100 * np.mean([r['start'].mean() for r in results]):.1f}, "
          f"random {100 * random.mean():.1f}, active {100 * active.mean():.1f}")
    print("active vs random:", verdict(result, "random", "active", n_images=random.shape[1]))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
