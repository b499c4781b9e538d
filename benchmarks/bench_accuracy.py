"""Accuracy of a recipe on real data, end to end through the pipeline's own commands.

    python benchmarks/bench_accuracy.py isic --recipe params-isic.yaml \
        --isic ../shared/data/isic2017-train --ph2 ../shared/data/ph2 [--epochs N] [--seed S]
    python benchmarks/bench_accuracy.py dubai --recipe params-dubai.yaml \
        --dubai ../shared/data/dubai-aerial-train --holdout-tiles 8 [--epochs N]

Runs in a temporary copy of the project (src/, pipeline/, params.yaml; MLflow in a SQLite file
there): `preset` the recipe (plus --epochs/--seed/--image-size as a second preset), `convert`
the data folder, split, `augment`, `train`, `evaluate`. Then prints each step's time and the
held-out scores with a 95% bootstrap CI over images (segpipe.experiments.bootstrap):

    isic   our split (split.val_fraction of the 2,000 training images, never trained on), and,
           with --ph2, PH2 at full resolution: a model trained on ISIC only, scored on all 200
           PH2 photos against their masks (cross-dataset; `evaluate` on a PH2 'validation' list)
    dubai  whole tiles held out (--holdout-tiles): every image of those tiles is validation,
           because images of one tile are neighbours; split by tile, not by image

Protocols are named in the output so the numbers are not mistaken for the challenge's test set.

With --variants the same model is also scored with test-time augmentation and each binary-mask
clean-up (largest component, hole filling), alone and together, on the same images (the options
of `evaluate.*` and `predict`, through the same Predictor.class_maps and score_image), with the
paired bootstrap CI of each variant's difference from plain prediction. --rescore scores the
variants of a run kept with --work, without training again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # the checkout's library
from segpipe.experiments.bootstrap import paired_bootstrap  # noqa: E402
from segpipe.evaluation.evaluate import load_pair, score_image  # noqa: E402
from segpipe.inference.postprocess import PostProcess  # noqa: E402
from segpipe.inference.predictor import Predictor  # noqa: E402
from segpipe.layout import validation_samples  # noqa: E402

COPIED = ("src", "pipeline", "params.yaml", "dvc.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["isic", "dubai"])
    parser.add_argument("--recipe", type=Path, required=True, help="the preset, e.g. params-isic.yaml")
    parser.add_argument("--isic", type=Path, help="ISIC folder with images/ and masks/ (task isic)")
    parser.add_argument("--ph2", type=Path, help="PH2 folder with images/ and masks/*_lesion.png (task isic)")
    parser.add_argument("--dubai", type=Path, help="Dubai aerial folder with images/ and masks/ (task dubai)")
    parser.add_argument("--holdout-tiles", default="8", help="comma-separated tile numbers held out (task dubai)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--image-size", type=int, help="override train.image_size")
    parser.add_argument("--seed", type=int, help="override base.seed (the split keeps split.seed)")
    parser.add_argument("--device", help="override train.device and evaluate.device (auto | cpu | cuda)")
    parser.add_argument("--work", type=Path, help="run here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--variants", action="store_true", help="also score TTA and the clean-ups on the same model")
    parser.add_argument("--rescore", action="store_true", help="only score the variants of the run in --work")
    args = parser.parse_args(argv)
    if args.rescore and (args.work is None or not (args.work / "models" / "best.pt").is_file()):
        parser.error("--rescore needs --work DIR of a finished run (DIR/models/best.pt)")
    needed = {"isic": ("isic",), "dubai": ("dubai",)}[args.task]
    for name in needed:
        if getattr(args, name) is None or not (getattr(args, name) / "images").is_dir():
            parser.error(f"--{name} must be a folder with images/ and masks/ (got {getattr(args, name)})")
    return args


def overrides(args: argparse.Namespace) -> dict:
    """The command line's settings as a second preset over the recipe."""
    data: dict = {}
    if args.epochs is not None:
        data.setdefault("train", {})["epochs"] = args.epochs
    if args.image_size is not None:
        data.setdefault("train", {})["image_size"] = args.image_size
    if args.seed is not None:
        data["base"] = {"seed": args.seed}
    if args.device is not None:
        data.setdefault("train", {})["device"] = args.device
        data["evaluate"] = {"device": args.device}
    return data


class Project:
    """A temporary copy of the project whose pipeline commands are timed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.times: dict[str, float] = {}
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}

    @classmethod
    def copy_of(cls, repo: Path, root: Path) -> Project:
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            source = repo / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, root / name)
        return cls(root)

    def run(self, step: str, *args: str) -> str:
        """`python -m pipeline ARGS` in the copy; its output is returned, its time kept under `step`."""
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], cwd=self.root, env=self.env, text=True, capture_output=True
        )
        self.times[step] = self.times.get(step, 0.0) + time.perf_counter() - start
        if done.returncode:
            sys.exit(f"{step} failed ({' '.join(args)}):\n{done.stdout}\n{done.stderr}")
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {self.times[step]:.0f} s", flush=True)
        return done.stdout

    def evaluate(self, name: str, processed: str, splits: str, params: str = "params.yaml") -> pd.DataFrame:
        """Score models/best.pt on `splits`/val.txt; returns the per-image table."""
        out = f"results/{name}"
        self.run(
            f"evaluate {name}", "evaluate", "models/best.pt", processed, splits, "--params", params, "-q",
            "--metrics", f"{out}/eval.json", "--info", f"{out}/eval_info.json",
            "--per-class", f"{out}/per_class.csv", "--per-image", f"{out}/per_image.csv",
            "--iou-plot", f"{out}/class_iou.csv", "--plots-dir", f"{out}/plots",
        )
        return pd.read_csv(self.root / out / "per_image.csv")


def tile_split(processed: Path, splits: Path, holdout: set[int]) -> tuple[int, int]:
    """train.txt / val.txt by tile: every image of a held-out tile (TileN_...) is validation."""
    ids = pd.read_csv(processed / "manifest.csv").id.astype(str).tolist()
    tile = {i: int(match.group(1)) for i in ids if (match := re.match(r"Tile(\d+)_", i))}
    if len(tile) != len(ids):
        sys.exit(f"tile split: ids not named TileN_...: {sorted(set(ids) - set(tile))[:5]}")
    val = [i for i in ids if tile[i] in holdout]
    if not val:
        sys.exit(f"tile split: no image of tiles {sorted(holdout)}; tiles present: {sorted(set(tile.values()))}")
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "train.txt").write_text("".join(f"{i}\n" for i in ids if tile[i] not in holdout))
    (splits / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return len(ids) - len(val), len(val)


def mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-image scores with its 95% bootstrap interval over images."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    result = paired_bootstrap(np.zeros((1, values.size)), values[None], seed=seed)
    return result.diff, result.low, result.high


def summarize(name: str, protocol: str, table: pd.DataFrame, root: Path) -> dict:
    """Print and return the per-image means (with CI) of every image_<score>_<class> column."""
    metrics = json.loads((root / "results" / name / "eval.json").read_text())
    info = json.loads((root / "results" / name / "eval_info.json").read_text())
    print(f"\n{name} ({protocol}): {info['images']} images, pooled mIoU {metrics['miou']:.4f}")
    scores = {"protocol": protocol, "images": info["images"], "pooled_miou": metrics["miou"]}
    for column in [c for c in table.columns if c.startswith("image_")]:
        mean, low, high = mean_ci(table[column].to_numpy())
        scores[column.removeprefix("image_")] = {"mean": mean, "ci95": [low, high], "n": int(table[column].notna().sum())}
        print(f"  {column.removeprefix('image_'):36s} {mean:8.4f}  95% CI [{low:.4f}, {high:.4f}]")
    for key in ("miou", *[k for k in metrics if k.startswith("iou_")]):
        scores[f"pooled_{key}"] = metrics[key]
    return scores


def run_isic(project: Project, args: argparse.Namespace) -> dict:
    project.run("convert", "convert", str(args.isic.resolve()), "data/processed", "--metrics", "results/data.json", "-q")
    project.run("split", "split", "data/processed", "data/splits")
    train_and_time(project)
    results = {"isic": summarize("isic", "our split of isic2017-train", project.evaluate("isic", "data/processed", "data/splits"), project.root)}
    if args.ph2 is not None:
        ph2 = project.root / "ph2.yaml"  # PH2's masks are X_lesion.png; classes as the recipe's
        ph2.write_text(json.dumps({"data": {"format": "masks", "mask_suffix": "_lesion"}}))
        project.run("convert ph2", "convert", str(args.ph2.resolve()), "ph2/processed", "--params", str(ph2),
                    "--metrics", "results/ph2_data.json", "-q")
        ids = pd.read_csv(project.root / "ph2/processed/manifest.csv").id.astype(str)
        (project.root / "ph2/splits").mkdir(parents=True)
        (project.root / "ph2/splits/train.txt").write_text("")
        (project.root / "ph2/splits/val.txt").write_text("".join(f"{i}\n" for i in ids))
        table = project.evaluate("ph2", "ph2/processed", "ph2/splits")
        results["ph2"] = summarize("ph2", "PH2 cross-dataset, full resolution, trained on ISIC only", table, project.root)
    return results


def run_dubai(project: Project, args: argparse.Namespace) -> dict:
    project.run("convert", "convert", str(args.dubai.resolve()), "data/processed", "--metrics", "results/data.json", "-q")
    holdout = {int(t) for t in args.holdout_tiles.split(",")}
    train_count, val_count = tile_split(project.root / "data/processed", project.root / "data/splits", holdout)
    print(f"tile split: {train_count} train, {val_count} validation images (tiles {sorted(holdout)} held out)")
    train_and_time(project)
    table = project.evaluate("dubai", "data/processed", "data/splits")
    return {"dubai": summarize("dubai", f"tile hold-out (tiles {sorted(holdout)})", table, project.root)}


def train_and_time(project: Project) -> None:
    project.run("augment", "augment", "data/processed", "data/splits", "data/augmented", "-q")
    project.run(
        "train", "train", "data/processed", "data/splits", "data/augmented", "models", "-q",
        "--metrics", "results/train.json", "--info", "results/train_info.json",
        "--history", "results/train_history.csv", "--plots-dir", "results/train_plots",
    )


POSTS = {
    "plain": PostProcess(),
    "largest_component": PostProcess(largest_component=True),
    "fill_holes": PostProcess(fill_holes=True),
    "largest_component+fill_holes": PostProcess(largest_component=True, fill_holes=True),
}
VARIANT_SCORES = ("jaccard", "thresholded_jaccard", "dice", "hd95", "nsd")


def score_variants(root: Path, name: str, processed: str, splits: str, tolerance: float) -> dict:
    """Every (TTA, clean-up) variant of models/best.pt on one held-out set: per-image means with
    CIs, and each variant minus plain prediction with its paired CI over images."""
    predictor = Predictor.from_checkpoint(root / "models" / "best.pt")
    samples = validation_samples(root / processed, root / splits)
    rows: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for tta in (False, True):
        for sample in samples:
            image, mask = load_pair(sample, fit=predictor.canvas)
            labels = predictor.class_maps([image], full_sizes=[mask.shape], tta=tta)[0]
            for post_name, post in POSTS.items():
                field = score_image(sample.id, mask, post(labels), predictor.classes, tolerance).field
                # Binary tasks: the one foreground class; more classes: their mean per image.
                row = {score: np.nanmean([getattr(s, score) for s in field.values()]) for score in VARIANT_SCORES}
                rows.setdefault(("tta+" if tta else "") + post_name, []).append(row)
    print(f"\n{name}: variants scored in {time.perf_counter() - start:.0f} s ({len(samples)} images)")
    plain = pd.DataFrame(rows["plain"])
    summary = {}
    for variant, values in rows.items():
        table = pd.DataFrame(values)
        entry = {}
        for score in VARIANT_SCORES:
            mean, low, high = mean_ci(table[score].to_numpy())
            both = ~(table[score].isna() | plain[score].isna()).to_numpy()
            diff = paired_bootstrap(plain[score].to_numpy()[both][None], table[score].to_numpy()[both][None], seed=0)
            entry[score] = {"mean": mean, "ci95": [low, high], "diff_vs_plain": diff.diff,
                            "diff_ci95": [diff.low, diff.high], "n": int(table[score].notna().sum())}
        summary[variant] = entry
        jac = entry["jaccard"]
        print(f"  {variant:34s} Jaccard {jac['mean']:.4f} [{jac['ci95'][0]:.4f}, {jac['ci95'][1]:.4f}]  "
              f"vs plain {jac['diff_vs_plain']:+.4f} [{jac['diff_ci95'][0]:+.4f}, {jac['diff_ci95'][1]:+.4f}]  "
              f"HD95 {entry['hd95']['mean']:.1f} ({entry['hd95']['diff_vs_plain']:+.1f})  "
              f"NSD {entry['nsd']['mean']:.3f} ({entry['nsd']['diff_vs_plain']:+.3f})", flush=True)
    return summary


def held_out_sets(args: argparse.Namespace, root: Path) -> list[tuple[str, str, str]]:
    """(name, processed, splits) of each held-out set a run scored."""
    sets = [(args.task, "data/processed", "data/splits")]
    if args.task == "isic" and (root / "ph2" / "splits").is_dir():
        sets.append(("ph2", "ph2/processed", "ph2/splits"))
    return sets


def all_variants(args: argparse.Namespace, root: Path) -> dict:
    """`score_variants` of every held-out set of the run in `root`, at its evaluate.surface_tolerance."""
    tolerance = float(yaml.safe_load((root / "params.yaml").read_text())["evaluate"]["surface_tolerance"])
    return {name: score_variants(root, name, *where, tolerance) for name, *where in held_out_sets(args, root)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rescore:
        variants = all_variants(args, args.work)
        if args.json:
            args.json.write_text(json.dumps({"variants": variants}, indent=2) + "\n")
        return
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    project = Project.copy_of(REPO, root)
    presets = [str(args.recipe.resolve())]
    extra = overrides(args)
    if extra:
        (root / "overrides.yaml").write_text(json.dumps(extra))
        presets.append(str(root / "overrides.yaml"))
    project.run("preset", "preset", *presets, "--params", "params.yaml")
    print(f"recipe {args.recipe} {extra or ''} in {root}; load average {os.getloadavg()[0]:.1f}", flush=True)
    results = (run_isic if args.task == "isic" else run_dubai)(project, args)
    if args.variants:
        results["variants"] = all_variants(args, root)
    results["times_s"] = {step: round(seconds, 1) for step, seconds in project.times.items()}
    results["load_average"] = os.getloadavg()
    print(f"\ntimes (s): {results['times_s']}; load average now {results['load_average'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
