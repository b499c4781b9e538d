"""The train stage: `fit` a model and write what DVC and MLflow keep of it.

Outputs: `MODELS_DIR/best.pt` (best validation mIoU), `last.pt`, `epoch_NNN.pt` every
`train.save_period` epochs, and `mlflow_run_id.txt`; a metrics JSON, a per-epoch history CSV
(DVC plots) and loss / mIoU curve PNGs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from segpipe.config import Params
from segpipe.dataset import Sample, SegmentationDataset
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write_text
from segpipe.plots import plot_curves
from segpipe.training import tracking
from segpipe.training.checkpoint import save_checkpoint
from segpipe.training.loop import (
    HISTORY_FIELDS,
    EpochResult,
    TrainState,
    build_state,
    checkpoint_dict,
    epoch_order,
    make_loss,
    restore_state,
    train_one_epoch,
    validate,
)
from segpipe.training.runtime import Distributed, Precision, resolve_device, seed_everything, worker_init

log = logging.getLogger(__name__)

EpochCallback = Callable[[TrainState], None]


@dataclass(frozen=True)
class TrainOutputs:
    models_dir: Path
    metrics: Path
    history: Path
    plots_dir: Path


def _loader(dataset, indices: Sequence[int], batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        Subset(dataset, list(indices)),
        batch_size=batch_size,
        shuffle=False,  # the order is fixed by epoch_order, so a resumed run sees the same batches
        num_workers=workers,
        worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _clear_checkpoints(models_dir: Path) -> None:
    """A fresh run starts without old checkpoints (DVC keeps the folder between runs for resume).

    The MLflow run id file is train_stage's: it is written before `fit` starts."""
    for path in models_dir.glob("*.pt"):
        path.unlink()


def fit(
    params: Params,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    models_dir: Path,
    *,
    progress: bool = True,
    tracker: tracking.Tracker | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainState:
    """Train per `params` and keep checkpoints in models_dir; returns the final state.

    Args:
        train_samples, val_samples: what to train on and validate with.
        models_dir: where best.pt, last.pt and periodic checkpoints are written.
        progress: show progress bars (else one log line per epoch).
        tracker: an MLflow tracker that has been started (or None).
        on_epoch_end: called after each epoch's checkpoints are written.
    """
    cfg = params.train
    device = resolve_device(cfg.device)
    dist = Distributed.from_env(device)
    precision = Precision.for_device(device)
    tracker = tracker if dist.is_main else None
    models_dir = Path(models_dir)
    if not train_samples or not val_samples:
        raise SegpipeError("training needs at least one training and one validation image; check the split lists")
    seed_everything(params.base.seed)
    state = build_state(params, device, precision)
    last = models_dir / "last.pt"
    if cfg.resume and last.exists():
        try:
            restore_state(state, last, device)
        except RuntimeError as exc:
            raise SegpipeError(f"{last}: cannot resume, it was trained with other model settings ({exc})") from None
        log.info("resuming from %s after epoch %d", last, state.epoch)
    elif dist.is_main:
        if cfg.resume:
            log.warning("train.resume is true but %s does not exist; starting from scratch", last)
        models_dir.mkdir(parents=True, exist_ok=True)
        _clear_checkpoints(models_dir)

    num_classes = len(params.base.classes)
    loss_fn = make_loss(params).to(device)
    train_set = SegmentationDataset(train_samples, cfg.image_size, online_augment=cfg.online_augment, seed=params.base.seed)
    val_set = SegmentationDataset(val_samples, cfg.image_size)
    val_loader = _loader(val_set, range(len(val_set))[dist.rank :: dist.world_size], cfg.batch_size, cfg.workers, device)
    log.info(
        "training %s%s on %s (%s), %d train / %d val images at %d px",
        params.model.backbone, " + CBAM" if params.model.cbam else "", device, precision.name,
        len(train_set), len(val_set), cfg.image_size,
    )
    net, net_frozen = None, None
    for epoch in range(state.epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_epochs
        state.model.freeze_encoder(frozen)
        if net is None or net_frozen != frozen:
            # DDP records which parameters need gradients when it is built, so rebuild it per phase.
            net = DistributedDataParallel(state.model) if dist.enabled else state.model
            net_frozen = frozen
        seed_everything(params.base.seed * 100_003 + epoch)
        train_set.set_epoch(epoch)
        batch_size = cfg.freeze_batch_size if frozen else cfg.batch_size
        order = dist.shard(epoch_order(len(train_set), params.base.seed, epoch))
        loader = _loader(train_set, order, batch_size, cfg.workers, device)
        lr = state.optimizer.param_groups[0]["lr"]
        phase = "frozen" if frozen else "train"
        with tqdm(total=len(train_set), desc=f"epoch {epoch + 1}/{cfg.epochs} {phase}", disable=not (progress and dist.is_main), unit="img", leave=False) as bar:
            train_loss = train_one_epoch(
                state, net, loader, loss_fn, device=device, precision=precision, grad_clip=cfg.grad_clip, dist=dist, bar=bar
            )
        state.scheduler.step()
        state.epoch = epoch + 1
        val_loss = val_miou = None
        if state.epoch % cfg.eval_period == 0 or state.epoch == cfg.epochs:
            val_loss, val_miou = validate(
                state.model, val_loader, loss_fn, num_classes, device=device, precision=precision, dist=dist
            )
        result = EpochResult(state.epoch, train_loss, val_loss, val_miou, lr)
        _end_epoch(state, result, params, models_dir, dist, tracker)
        if on_epoch_end is not None:
            on_epoch_end(state)
    dist.close()
    return state


def _end_epoch(
    state: TrainState,
    result: EpochResult,
    params: Params,
    models_dir: Path,
    dist: Distributed,
    tracker: tracking.Tracker | None,
) -> None:
    """Record the epoch, then save last / best / periodic checkpoints (rank 0 only)."""
    state.history.append(result.as_row())
    improved = result.val_miou is not None and result.val_miou > state.best_miou
    if improved:
        state.best_miou, state.best_epoch = result.val_miou, result.epoch
    miou = "-" if result.val_miou is None else f"{result.val_miou:.4f}"
    log.info("epoch %d: train_loss %.4f  val_miou %s  lr %.2e", result.epoch, result.train_loss, miou, result.lr)
    if not dist.is_main:
        return
    checkpoint = checkpoint_dict(state, params)
    save_checkpoint(models_dir / "last.pt", checkpoint)
    if improved:
        save_checkpoint(models_dir / "best.pt", checkpoint)
    period = params.train.save_period
    if period and result.epoch % period == 0:
        save_checkpoint(models_dir / f"epoch_{result.epoch:03d}.pt", checkpoint)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in result.as_row().items() if k != "epoch"}, step=result.epoch)


def write_history(history: Sequence[dict], path: Path) -> None:
    """The per-epoch history as CSV (DVC plots); epochs without validation have empty val cells."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, text.getvalue())


def train_stage(
    params: Params,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    outputs: TrainOutputs,
    *,
    progress: bool = True,
) -> dict[str, float | int | str]:
    """Run `fit` inside an MLflow run and write the metrics, history and curves; returns the metrics."""
    started = time.perf_counter()
    is_main = Distributed.from_env(resolve_device(params.train.device)).is_main
    tracker = tracking.Tracker(enabled=is_main)
    root = tracking.project_root()
    params_json = params.model_dump(mode="json")
    data_files = [p for s in [*train_samples, *val_samples] for p in (s.image, s.mask)]
    tags = tracking.dvc_tags(root, tracking.content_hash(params_json), tracking.files_hash(data_files))
    run_id_file = outputs.models_dir / tracking.RUN_ID_FILE
    resume_run = run_id_file.read_text().strip() if params.train.resume and run_id_file.exists() else None
    tracker.start(params.base.experiment, tracking.run_name(), params_json, tags, run_id=resume_run)
    if is_main:
        outputs.models_dir.mkdir(parents=True, exist_ok=True)
        if tracker.run_id:
            atomic_write_text(run_id_file, tracker.run_id + "\n")
        else:  # a later resume must not reopen an older run
            run_id_file.unlink(missing_ok=True)
    try:
        state = fit(params, train_samples, val_samples, outputs.models_dir, progress=progress, tracker=tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    if not is_main:  # only rank 0 writes and logs
        return {}
    final = state.history[-1]
    validated = [row for row in state.history if row["val_loss"] is not None]
    metrics = {
        "best_epoch": state.best_epoch,
        "best_val_miou": round(state.best_miou, 6),
        "final_train_loss": round(final["train_loss"], 6),
        "final_val_loss": round(validated[-1]["val_loss"], 6),
        "final_val_miou": round(validated[-1]["val_miou"], 6),
        "epochs": state.epoch,
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    write_history(state.history, outputs.history)
    curves = plot_curves(state.history, outputs.plots_dir)
    for path in curves:
        tracker.log_artifact(path, "plots")
    best = outputs.models_dir / "best.pt"
    if best.exists():
        tracker.log_artifact(best, "checkpoints")
    tracker.log_metrics({"best_val_miou": state.best_miou, "best_epoch": state.best_epoch})
    tracker.end()
    return metrics
