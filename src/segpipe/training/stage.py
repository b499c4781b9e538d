"""The train stage: `fit` a model inside an MLflow run and write what DVC keeps of it.

Outputs: `MODELS_DIR/best.pt` (best validation mIoU), `last.pt`, `epoch_NNN.pt` every
`train.save_period` epochs, and `mlflow_run_id.txt` (the run's id; empty without tracking); a metrics JSON of results only (a DVC
metric), an info JSON of counts and durations (also the run's tags), a per-epoch history CSV
(DVC plots) and loss / mIoU curve PNGs.

Every setting is checked before anything is started or written (`check_settings`), so a bad one
leaves no MLflow run and no run id file behind. A killed run is tidied by the next one: its
checkpoint temporaries are removed and its MLflow run, left RUNNING, is closed as KILLED.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from segpipe import tracking
from segpipe.config import Params
from segpipe.errors import SegpipeError, sigterm_unwinds
from segpipe.figures import plot_curves
from segpipe.imageio import atomic_write_text, remove_stale_temps
from segpipe.layout import Sample
from segpipe.models import build_model
from segpipe.models.checkpoint import write_deployment_checkpoint
from segpipe.models.registry import pretrained_file
from segpipe.runtime import Runtime
from segpipe.data.spec import spec_from_train
from segpipe.training.loop import HISTORY_FIELDS, TrainState, check_input, fit
from segpipe.training.losses import make_loss


@dataclass(frozen=True)
class TrainOutputs:
    models_dir: Path
    metrics: Path
    info: Path
    history: Path
    plots_dir: Path


@dataclass(frozen=True)
class TrainReport:
    """What the stage wrote and where the run is: `metrics` and `info` as in their JSON files,
    the best checkpoint, and the MLflow run (ids None when tracking was off)."""

    metrics: dict[str, float]
    info: dict[str, float | int]
    best_checkpoint: Path
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str


def train_stage(
    params: Params,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    outputs: TrainOutputs,
    *,
    progress: bool = True,
) -> TrainReport | None:
    """Run `fit` inside an MLflow run and write the metrics, info, history and curves; returns
    what was written (None on ranks other than 0, which write nothing).

    SIGTERM stops the run like Ctrl-C: the MLflow run ends as KILLED and the process exits 143.
    """
    started = time.perf_counter()
    check_settings(params, train_samples, val_samples)
    runtime = Runtime.resolve(params.train.device)
    if runtime.dist.is_main:
        remove_stale_temps(outputs.models_dir)  # a killed run's .last.pt.tmp-PID would show as a change in `dvc status`
    with sigterm_unwinds():
        tracker = start_tracking(params, train_samples, val_samples, outputs.models_dir, runtime.dist.is_main)
        try:
            state = fit(
                params, train_samples, val_samples, outputs.models_dir, runtime=runtime, progress=progress, tracker=tracker
            )
        except BaseException as exc:
            # Ctrl-C and SIGTERM arrive as KeyboardInterrupt: the run was stopped, not broken.
            tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            runtime.dist.close()
    if not runtime.dist.is_main:  # only rank 0 writes and logs
        return None
    metrics = summary_metrics(state)
    info = run_info(state, len(train_samples), len(val_samples), time.perf_counter() - started)
    atomic_write_text(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(outputs.info, json.dumps(info, indent=2) + "\n")
    write_history(state.history, outputs.history)
    for path in plot_curves(state.history, outputs.plots_dir):
        tracker.log_artifact(path, "plots")
    best = outputs.models_dir / "best.pt"
    log_deployment_checkpoint(tracker, best)
    tracker.log_metrics({"best_val_miou": state.best_miou})
    tracker.set_tags({f"segpipe.{key}": str(value) for key, value in info.items()})
    tracker.end()
    return TrainReport(metrics, info, best, tracker.run_id, tracker.experiment_id, tracker.uri)


def log_deployment_checkpoint(tracker: tracking.Tracker, best: Path) -> None:
    """Log `best` as the run's artifact `checkpoints/best.pt` without its training state: the file to
    deploy or predict with (`last.pt` on disk keeps the state for resuming)."""
    if not best.exists() or not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as folder:
        tracker.log_artifact(write_deployment_checkpoint(best, Path(folder) / best.name), "checkpoints")


def check_settings(params: Params, train_samples: Sequence[Sample], val_samples: Sequence[Sample]) -> None:
    """Make every check on the settings that training would otherwise make after it started.

    The model is built on the meta device (shapes only: no memory, no weights read), the
    pretrained weights file is looked up, train.image_size is checked against the model's stride,
    and the loss is built.
    """
    if not train_samples or not val_samples:
        raise SegpipeError(
            f"training needs at least one training and one validation image, got {len(train_samples)} and "
            f"{len(val_samples)}; check the split lists"
        )
    check_model_input(params)
    pretrained_file(params.model.backbone, params.model.pretrained)
    make_loss(params.train)


def check_model_input(params: Params) -> None:
    """Refuse an input size (train.image_size, or train.patch_size for patches) that the
    backbone's total stride does not divide; cheap (the model is built on the meta device:
    shapes only), so `train` calls it before any data is read."""
    with torch.device("meta"):
        model = build_model(len(params.base.classes), **{**params.model.model_dump(), "pretrained": "none"})
    check_input(spec_from_train(params.train), model.required_multiple, params.model.backbone)


def start_tracking(
    params: Params, train_samples: Sequence[Sample], val_samples: Sequence[Sample], models_dir: Path, is_main: bool
) -> tracking.Tracker:
    """Open (or, when resuming, reopen) the MLflow run and record its id beside the checkpoints."""
    tracker = tracking.Tracker(enabled=is_main)
    root = tracking.project_root()
    params_json = params.model_dump(mode="json")
    data_files = [p for s in [*train_samples, *val_samples] for p in (s.image, s.mask)]
    tags = tracking.dvc_tags(root, tracking.content_hash(params_json), tracking.files_hash(data_files))
    tags.update(tracking.stage_tags(params, root, "train"))
    run_id_file = models_dir / tracking.RUN_ID_FILE
    previous = run_id_file.read_text().strip() if run_id_file.exists() else ""
    resume_run = previous if params.train.resume and previous else None
    if previous and resume_run is None:
        tracker.mark_killed(previous)  # still RUNNING only if its process was killed
    logged = tracking.logged_params(params)
    tracker.start(params.base.experiment, tracking.run_name(root), logged, tags, run_id=resume_run)
    if is_main:
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
            # Always written, empty when tracking is off (so a later resume cannot reopen an older
            # run): the evaluate stage depends on this file, so DVC re-runs evaluate after every
            # training run, even one that reproduced an identical best.pt, and each run gets its evaluation.
            atomic_write_text(run_id_file, (tracker.run_id or "") + "\n")
        except OSError as exc:
            tracker.end("FAILED")
            raise SegpipeError(
                f"{run_id_file}: cannot write the MLflow run id ({exc.strerror or exc}); make {models_dir} a "
                "writable folder with free space and run again"
            ) from None
    return tracker


def summary_metrics(state: TrainState) -> dict[str, float]:
    """The results of training (a DVC metric): best and final validation scores, final losses."""
    final = state.history[-1]
    validated = [row for row in state.history if row["val_loss"] is not None]
    return {
        "best_val_miou": round(state.best_miou, 6),
        "final_train_loss": round(final["train_loss"], 6),
        "final_val_loss": round(validated[-1]["val_loss"], 6),
        "final_val_miou": round(validated[-1]["val_miou"], 6),
    }


def run_info(state: TrainState, train_images: int, val_images: int, seconds: float) -> dict[str, float | int]:
    """Counts and durations of the run: facts about it, not results, so not a DVC metric."""
    return {
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "train_images": train_images,
        "val_images": val_images,
        "seconds": round(seconds, 1),
    }


def write_history(history: Sequence[dict], path: Path) -> None:
    """The per-epoch history as CSV (DVC plots); epochs without validation have empty val cells."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, text.getvalue())
