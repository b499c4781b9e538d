"""The evaluate stage: score a checkpoint on the validation images at their original resolution.

Each image goes through `Predictor` (the same letterbox, model and restore as `predict`; for a
model trained on patches, the same smoothly blended tiles at its training scale), the argmax is
compared with the ground-truth mask at the mask's own size, and one `ConfusionMatrix`
collects every pixel of the set (255 ignored), so the means are over pixels of the whole set, not
means of per-image means. Outputs:

    metrics JSON     the scores only: the pooled SegmentationScores.as_dict keys, then the per-image
                     means mean_<score>_<class> of each foreground class (null where undefined)
    info JSON        what was scored: "images", "absent_classes", "surface_tolerance_px" and
                     "per_image_means" (per class: images each mean covers, empty masks)
    per-class CSV    class, iou, pixel_accuracy, precision, dice, gt_pixels, pred_pixels, present
    per-image CSV    id, iou_<class>..., dice_<class>..., miou (blank where undefined), and per
                     foreground class image_<score>_<class> (see evaluation/per_image.py)
    IoU plot data    class, iou (DVC bar_horizontal)
    plots_dir        class_scores.png, confusion_matrix.png, gallery.png (see evaluation/plots.py)

The same metric names are logged to the training run in MLflow when its id is known, and the
info as its tags.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segpipe.config import EvaluateSection
from segpipe.errors import SegpipeError
from segpipe.evaluation import per_image
from segpipe.evaluation.plots import (
    GalleryRow,
    gallery_choice,
    gallery_title,
    plot_class_scores,
    plot_confusion,
    plot_gallery,
)
from segpipe.imageio import atomic_write_text, read_class_mask, read_image, read_image_for
from segpipe.inference.postprocess import PostProcess
from segpipe.inference.predictor import Predictor
from segpipe.layout import Sample
from segpipe.metrics import ConfusionMatrix, SegmentationScores, image_scores
from segpipe.runtime import resolve_device
from segpipe.tracking import PER_IMAGE_ARTIFACT, RUN_ID_FILE, Tracker


log = logging.getLogger(__name__)

PER_CLASS_FIELDS = ("class", "iou", "pixel_accuracy", "precision", "dice", "gt_pixels", "pred_pixels", "present")


@dataclass(frozen=True)
class EvalOutputs:
    """Where the evaluate stage writes (each path declared in dvc.yaml)."""

    metrics: Path
    info: Path
    per_class: Path
    per_image: Path
    iou_plot: Path
    plots_dir: Path


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate` wrote: `metrics` (the scores, as in the metrics JSON) and `info` (as in the info JSON)."""

    metrics: dict
    info: dict


@dataclass(frozen=True)
class ImageResult:
    """One validation image's scores (its own pixels only)."""

    id: str
    scores: SegmentationScores
    field: dict[str, per_image.ClassScores]  # foreground class name -> the field's per-image scores

    @property
    def miou(self) -> float:
        return self.scores.miou


def evaluate(
    checkpoint: Path,
    samples: Sequence[Sample],
    out: EvalOutputs,
    config: EvaluateSection = EvaluateSection(),
    *,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score `checkpoint` on `samples` and write every output in `out`; returns what it wrote.

    Args:
        checkpoint: the trained model (best.pt); the MLflow run id is read from the file
            `mlflow_run_id.txt` beside it.
        samples: the (image, mask) pairs to score (the validation split).
        out: output paths.
        config: params.yaml's evaluate section (device, images per forward pass, gallery size).
        classes: base.classes of the project; a checkpoint trained on other classes is refused.
            None: the checkpoint's own classes are taken as they are.
        progress: show a progress bar (on a terminal only).
    """
    if not samples:
        raise SegpipeError("no images to evaluate: the validation list is empty; check the split stage's val.txt")
    predictor = Predictor.from_checkpoint(checkpoint, resolve_device(config.device, "evaluate.device", lease=True))
    check_classes(checkpoint, predictor.classes, classes)
    classes = predictor.classes
    tta, post = config.tta, PostProcess(config.largest_component, config.fill_holes)
    matrix = ConfusionMatrix(len(classes))
    results: list[ImageResult] = []
    with tqdm(total=len(samples), desc="evaluate", unit="img", disable=None if progress else True) as bar:
        for sample, mask, labels in scored_labels(predictor, samples, config.batch_size, tta=tta, post=post):
            try:
                matrix.update(mask, labels)
            except SegpipeError as exc:  # the message names the bad value; add the file
                raise SegpipeError(f"{sample.mask}: {exc}") from None
            results.append(score_image(sample.id, mask, labels, classes, config.surface_tolerance))
            bar.update()
    scores = matrix.compute()
    report = make_report(scores, results, classes, config.surface_tolerance)
    # allow_nan=False: a NaN that slipped past as_dict fails here instead of writing invalid JSON.
    atomic_write_text(out.metrics, json.dumps(report.metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out.info, json.dumps(report.info, indent=2) + "\n")
    atomic_write_text(out.per_class, per_class_csv(scores, classes))
    atomic_write_text(out.per_image, per_image_csv(results, classes))
    atomic_write_text(out.iou_plot, iou_plot_csv(scores, classes))
    figures = write_figures(predictor, scores, samples, results, out.plots_dir, config.gallery_size, tta=tta, post=post)
    log_to_training_run(Path(checkpoint).parent / RUN_ID_FILE, report, out, figures)
    return report


def scored_labels(
    predictor: Predictor,
    samples: Sequence[Sample],
    batch_size: int,
    *,
    tta: bool = False,
    post: PostProcess = PostProcess(),
) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
    """(sample, its (H, W) mask, the predicted (H, W) uint8 labels) of each sample: what is scored,
    `batch_size` images read and predicted at a time, with test-time augmentation and clean-up as
    asked: the masks `predict` writes with the same --tta, --largest-component and --fill-holes."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        # Large photos are decoded no larger than the canvas needs; scoring stays at the mask's size.
        pairs = [load_pair(sample, fit=predictor.canvas) for sample in chunk]
        label_maps = predictor.class_maps(
            [image for image, _ in pairs], full_sizes=[mask.shape for _, mask in pairs], tta=tta, post=post
        )
        for sample, (_, mask), labels in zip(chunk, pairs, label_maps):
            yield sample, mask, labels


def score_image(image_id: str, mask: np.ndarray, labels: np.ndarray, classes: Sequence[str], tolerance: float) -> ImageResult:
    """One image's pooled-style scores of every class and the field's scores of each foreground class."""
    field = per_image.image_scores(mask, labels, range(1, len(classes)), tolerance)
    return ImageResult(
        image_id, image_scores(mask, labels, len(classes)), {classes[c]: s for c, s in field.items()}
    )


def make_report(
    scores: SegmentationScores, results: Sequence[ImageResult], classes: Sequence[str], tolerance: float
) -> EvalReport:
    """eval.json: the pooled scores, then the per-image means of each foreground class; eval_info.json:
    the image count, absent classes and how many images each per-image mean covers."""
    metrics = scores.as_dict(classes)
    field_means, covered = per_image.summarize([result.field for result in results])
    info = {
        "images": len(results),
        "absent_classes": metrics.pop("absent_classes"),
        "surface_tolerance_px": tolerance,
        "per_image_means": covered,
    }
    return EvalReport({**metrics, **field_means}, info)


def check_classes(checkpoint: Path, trained: Sequence[str], expected: Sequence[str] | None) -> None:
    """Refuse a model trained on other classes than the project's (`expected`; None: any)."""
    if expected is not None and tuple(trained) != tuple(expected):
        raise SegpipeError(
            f"{checkpoint}: the model was trained on classes {list(trained)} but base.classes is "
            f"{list(expected)}; the masks' class ids would be scored under the wrong names. Evaluate a "
            "checkpoint trained on this project's classes (re-run train), or fix base.classes"
        )


def load_pair(sample: Sample, fit: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image and (H, W) class mask; the image is (H, W, 3), or with `fit` (the
    predictor's canvas) possibly decoded at reduced scale (`read_image_for`). The full image
    must be the mask's size."""
    if fit is None:
        image = read_image(sample.image)
        full_hw = image.shape[:2]
    else:
        image, full_hw = read_image_for(sample.image, fit=fit)
    mask = read_class_mask(sample.mask)
    if tuple(full_hw) != mask.shape:
        raise SegpipeError(
            f"{sample.mask}: mask of size {mask.shape[0]}x{mask.shape[1]} does not match its image "
            f"{sample.image} of size {full_hw[0]}x{full_hw[1]}; re-run the convert stage"
        )
    return image, mask


def absent_report(info: dict) -> str:
    """One line for people: which classes were absent and so left out of the means."""
    absent = info["absent_classes"]
    if not absent:
        return "every class occurs in the ground truth or the prediction"
    return f"absent from ground truth and prediction, left out of the means: {', '.join(absent)}"


def per_class_csv(scores: SegmentationScores, classes: Sequence[str]) -> str:
    """The per-class table: one row per class, blank cells where a score is undefined."""
    gt_pixels = scores.confusion.sum(axis=1)
    pred_pixels = scores.confusion.sum(axis=0)
    rows = []
    for index, name in enumerate(classes):
        values = {key: scores.per_class[key][index] for key in ("iou", "precision", "recall", "dice")}
        rows.append({
            "class": name,
            "iou": _cell(values["iou"]),
            "pixel_accuracy": _cell(values["recall"]),  # a class's pixel accuracy is its recall
            "precision": _cell(values["precision"]),
            "dice": _cell(values["dice"]),
            "gt_pixels": int(gt_pixels[index]),
            "pred_pixels": int(pred_pixels[index]),
            "present": bool(scores.present[index]),
        })
    return _csv(PER_CLASS_FIELDS, rows)


def per_image_csv(results: Sequence[ImageResult], classes: Sequence[str]) -> str:
    """One row per image: id, IoU and Dice of every class (blank where absent), the mean IoU over
    its present classes, then image_<score>_<class>: each foreground class's `per_image` scores
    (empty masks as stated there)."""
    foreground = classes[1:]
    # image_*: dice_<class> is taken by the pooled-style column above, which leaves absent classes blank.
    field_columns = [f"image_{score}_{c}" for c in foreground for score in per_image.SCORE_NAMES]
    fields = ("id", *(f"iou_{c}" for c in classes), *(f"dice_{c}" for c in classes), "miou", *field_columns)
    rows = []
    for result in results:
        row = {"id": result.id, "miou": _cell(result.miou)}
        for index, name in enumerate(classes):
            row[f"iou_{name}"] = _cell(result.scores.per_class["iou"][index])
            row[f"dice_{name}"] = _cell(result.scores.per_class["dice"][index])
        for name in foreground:
            for score in per_image.SCORE_NAMES:
                row[f"image_{score}_{name}"] = _cell(getattr(result.field[name], score))
        rows.append(row)
    return _csv(fields, rows)


def iou_plot_csv(scores: SegmentationScores, classes: Sequence[str]) -> str:
    """`class, iou` rows for DVC's bar_horizontal plot; absent classes have no IoU and no bar."""
    rows = [
        {"class": name, "iou": _cell(scores.per_class["iou"][index])}
        for index, name in enumerate(classes)
        if scores.present[index]
    ]
    return _csv(("class", "iou"), rows)


def _cell(value: float) -> str:
    """A CSV cell: blank for undefined (NaN), else the value to 6 decimals."""
    return "" if math.isnan(value) else f"{value:.6f}"


def _csv(fields: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_figures(
    predictor: Predictor,
    scores: SegmentationScores,
    samples: Sequence[Sample],
    results: Sequence[ImageResult],
    plots_dir: Path,
    gallery_size: int,
    *,
    tta: bool = False,
    post: PostProcess = PostProcess(),
) -> list[Path]:
    """class_scores.png, confusion_matrix.png and gallery.png in `plots_dir`; returns their paths."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_class_scores(scores, predictor.classes, plots_dir / "class_scores.png"),
        plot_confusion(scores, predictor.classes, plots_dir / "confusion_matrix.png"),
    ]
    if gallery_size:
        rows = gallery_rows(predictor, samples, results, gallery_size, tta=tta, post=post)
        paths.append(plot_gallery(rows, predictor.num_classes, plots_dir / "gallery.png", predictor.classes))
    return paths


def gallery_rows(
    predictor: Predictor,
    samples: Sequence[Sample],
    results: Sequence[ImageResult],
    k: int,
    *,
    tta: bool = False,
    post: PostProcess = PostProcess(),
) -> list[GalleryRow]:
    """The gallery's images (see `gallery_choice`), predicted again rather than kept from the
    scoring pass, so memory does not grow with the size of the validation set."""
    rows = []
    for index, label in gallery_choice([r.id for r in results], [r.miou for r in results], k):
        image, mask = load_pair(samples[index])
        title = gallery_title(label, results[index].id, results[index].miou)
        rows.append(GalleryRow(title, image, mask, predictor.class_maps([image], tta=tta, post=post)[0]))
    return rows


def log_to_training_run(run_id_file: Path, report: EvalReport, out: EvalOutputs, figures: Sequence[Path]) -> bool:
    """Add the evaluation metrics, CSVs and figures to the MLflow run that trained the checkpoint,
    and what was scored (`report.info`) as its tags `segpipe.eval_images`, `segpipe.absent_classes`.

    The run id comes from `run_id_file` (written by the train stage beside the checkpoint). A
    missing or empty file (training ran without tracking) is skipped quietly; an MLflow failure is one warning, never an error, because the
    metrics files are already written. The per-image CSV goes under a fixed name
    (`PER_IMAGE_ARTIFACT`) so `compare` can find it. Returns whether the run was updated.
    """
    run_id = run_id_file.read_text(encoding="utf-8").strip() if run_id_file.is_file() else ""
    if not run_id:  # no file, or an empty one: training ran without tracking
        log.info("no MLflow run id in %s: evaluation metrics not logged to MLflow", run_id_file)
        return False
    tracker = Tracker()
    tracker.reopen(run_id)
    tracker.log_metrics(report.metrics, undefined_as_nan=True)
    tracker.set_tags({
        "segpipe.eval_images": str(report.info["images"]),
        "segpipe.absent_classes": ", ".join(report.info["absent_classes"]) or "none",
    })
    folder, per_image_name = PER_IMAGE_ARTIFACT.split("/")
    tracker.log_artifact(out.per_image, folder, name=per_image_name)
    for path in (out.metrics, out.info, out.per_class, *figures):
        tracker.log_artifact(path, folder)
    tracker.end()
    return tracker.enabled
