"""The training loop: `fit` builds the model, then per epoch `train_one_epoch`, `validate` and
`end_epoch` (history, checkpoints, MLflow).

Training samples are what the input spec (`data.spec`, built once from train.*) says: whole
letterboxed images, or random crops at a chosen scale validated by tiled prediction of whole
images (`TrainData` asks it for the datasets, `make_validation` takes the validation that goes
with them).
Two phases as in the paper: the first `train.freeze_epochs` epochs train the decoder on a frozen
encoder (no gradients, normalisation statistics fixed), then everything trains; each phase has
its own batch size and one LR schedule spans both. Every epoch's sample order and augmentation
draws come from (seed, epoch), so a run resumed from `last.pt` ends with the same weights as one
that was never interrupted.

The data path (decoded cache, loaders, batches normalised and augmented on the device) is
`segpipe.training.loaders`; `train.channels_last` and `train.compile` choose how the model runs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segpipe import tracking
from segpipe.config import ModelSection, Params, TrainSection
from segpipe.data.spec import InputSpec, spec_from_train
from segpipe.errors import SegpipeError
from segpipe.layout import Sample
from segpipe.metrics import ConfusionMatrix, SegmentationScores
from segpipe.models import UNet, build_model
from segpipe.models.checkpoint import checkpoint_contents, checkpoint_spec, load_checkpoint, save_checkpoint
from segpipe.runtime import Distributed, Runtime, seed_everything
from segpipe.training.loaders import DeviceLoader, TrainData
from segpipe.training.losses import make_loss
from segpipe.training.tiled_validation import validate_tiled
from segpipe.training.optim import LrSchedule, make_optimizer

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "lr")
# A loss above this multiple of its first epoch's value has exploded. A healthy run's losses fall
# below their first epoch's; the bumps of a working run (the unfreeze, a warm-up peak, a noisy
# small validation set) stay within a few times it, while divergence grows by orders of
# magnitude per epoch (1e10 after one epoch at train.lr 1e6). 1000x leaves room for the one and
# catches the other an epoch or two in.
EXPLODED_FACTOR = 1e3
# torch.compile's default; the tests use "eager", whose guards, and so recompiles, are the same.
COMPILE_BACKEND = "inductor"


@dataclass
class TrainState:
    model: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed
    best_miou: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_miou: float | None
    lr: float

    def as_row(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in HISTORY_FIELDS}


class NonFiniteLoss(SegpipeError):
    pass


EpochCallback = Callable[[TrainState], None]
# model -> (validation loss, validation mIoU)
Validation = Callable[[nn.Module], tuple[float, float]]


def fit(
    params: Params,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    models_dir: Path,
    *,
    runtime: Runtime | None = None,
    progress: bool = True,
    tracker: tracking.Tracker | None = None,
    on_epoch_end: EpochCallback | None = None,
    spec: InputSpec | None = None,
) -> TrainState:
    """Train per `params`, writing best.pt, last.pt and periodic checkpoints to models_dir; returns the final state.

    The sections go on from here, each to what reads it: train.* to the loop, model.* to the
    model, the input spec (built once from train.*) to the data, the validation and the checkpoint.

    Args:
        train_samples, val_samples: what to train on and validate with.
        spec: how the model is fed; None: `spec_from_train(params.train)`.
        runtime: device, precision and process group (resolved from train.device when None).
        progress: show progress bars, on a terminal only (each epoch is also one log line).
        tracker: an MLflow tracker that has been started (or None).
        on_epoch_end: called after each epoch's checkpoints are written.
    """
    if not train_samples or not val_samples:
        raise SegpipeError("training needs at least one training and one validation image; check the split lists")
    cfg, models_dir, seed = params.train, Path(models_dir), params.base.seed
    spec = spec or spec_from_train(cfg)
    num_classes = len(params.base.classes)
    runtime = runtime or Runtime.resolve(cfg.device)
    seed_everything(seed)
    channels_last = use_channels_last(cfg, runtime.device)
    state = build_state(params.model, cfg, num_classes, spec, runtime, channels_last=channels_last)
    start_or_resume(state, cfg.resume, models_dir, runtime, cfg=cfg, spec=spec)
    loss_fn = make_loss(cfg).to(runtime.device)
    data = TrainData(cfg, spec, seed, train_samples, val_samples, runtime, channels_last=channels_last, progress=progress)
    run_validation = make_validation(data, loss_fn, num_classes, runtime)
    contents = functools.partial(
        checkpoint_contents, spec=spec, classes=params.base.classes, params=params.model_dump(mode="json")
    )
    log.info(
        "training %s%s on %s (%s%s%s), %d train / %d val images, %s",
        params.model.backbone, " + CBAM" if params.model.cbam else "", runtime.device, runtime.precision.name,
        ", channels-last" if channels_last else "", ", compiled" if cfg.compile else "",
        len(train_samples), len(val_samples), spec.describe(),
    )
    nets = PhaseNets(state.model, runtime.dist, compile=cfg.compile)
    disable = None if progress and runtime.dist.is_main else True
    epochs = tqdm(total=cfg.epochs, initial=state.epoch, desc="training", unit="epoch", disable=disable)
    for epoch in range(state.epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_epochs
        seed_everything(seed * 100_003 + epoch)
        loader = data.train_loader(epoch, cfg.freeze_batch_size if frozen else cfg.batch_size)
        lr = state.optimizer.param_groups[0]["lr"]
        with tqdm(total=len(data.train_set), desc=f"epoch {epoch + 1}/{cfg.epochs} {'frozen' if frozen else 'train'}",
                  disable=disable, unit="img", leave=False) as bar:
            train_loss = train_one_epoch(state, nets.for_phase(frozen), loader, loss_fn, runtime, cfg.grad_clip, bar)
        state.scheduler.step()
        state.epoch = epoch + 1
        val_loss = val_miou = None
        if state.epoch % cfg.eval_period == 0 or state.epoch == cfg.epochs:
            val_loss, val_miou = run_validation(state.model)
        result = EpochResult(state.epoch, train_loss, val_loss, val_miou, lr)
        check_divergence(result, state.history, cfg)  # a diverged epoch is never saved, logged or best
        end_epoch(state, result, contents, models_dir, cfg.save_period, runtime.dist, tracker)
        show_epoch(epochs, state)
        if on_epoch_end is not None:
            on_epoch_end(state)
    epochs.close()
    return state


def show_epoch(bar: tqdm, state: TrainState) -> None:
    """Advance the epoch bar, showing the last training loss, the last validation mIoU and the best."""
    validated = [row for row in state.history if row["val_miou"] is not None]
    summary = {"loss": f"{state.history[-1]['train_loss']:.4f}"}
    if validated:
        summary["val_mIoU"] = f"{validated[-1]['val_miou']:.4f}"
        summary["best"] = f"{state.best_miou:.4f} (epoch {state.best_epoch})"
    bar.set_postfix(summary, refresh=False)
    bar.update()


class PhaseNets:
    """The network the optimiser steps through, per phase: DDP records which parameters need
    gradients when it is built, so it is rebuilt when the encoder is frozen or unfrozen.

    With `compile`, the network is `torch.compile`d for fixed shapes (the training loader drops
    a last, smaller batch, see `EpochBatches`): it compiles once per phase and never again.
    `validate` runs the model itself, uncompiled.
    """

    def __init__(self, model: UNet, dist: Distributed, *, compile: bool = False) -> None:
        self.model, self.dist, self.compile = model, dist, compile
        self._net: nn.Module | None = None
        self._frozen: bool | None = None

    def for_phase(self, frozen: bool) -> nn.Module:
        self.model.freeze_encoder(frozen)
        if self._net is None or self._frozen != frozen:
            net = DistributedDataParallel(self.model) if self.dist.enabled else self.model
            self._net = torch.compile(net, dynamic=False, backend=COMPILE_BACKEND) if self.compile else net
            self._frozen = frozen
        return self._net


def make_validation(data: TrainData, loss_fn: nn.Module, num_classes: int, runtime: Runtime) -> Validation:
    """The validation the input spec gave `data`: batches on the letterboxed canvas, or, where the
    spec has no validation dataset (patches), whole validation images predicted in its windows."""
    if data.val_loader is None:
        batch = data.cfg.batch_size
        return lambda model: validate_tiled(model, data.val_samples, data.scaled, loss_fn, num_classes, runtime, data.spec, batch)
    return lambda model: validate(model, data.val_loader, loss_fn, num_classes, runtime)


def use_channels_last(cfg: TrainSection, device: torch.device) -> bool:
    """`train.channels_last`: true or false as set; `auto` is on everywhere, because it measured
    faster on every backbone on CUDA and on the CPU (README, Benchmarks)."""
    if cfg.channels_last == "auto":
        return True
    return cfg.channels_last


def build_state(
    model_cfg: ModelSection,
    cfg: TrainSection,
    num_classes: int,
    spec: InputSpec,
    runtime: Runtime,
    *,
    channels_last: bool = False,
) -> TrainState:
    """The model (checked against the spec's input size), optimizer, LR schedule and gradient scaler."""
    model = build_model(num_classes, **model_cfg.model_dump())
    check_input(spec, model.required_multiple, model_cfg.backbone)
    model.to(runtime.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = make_optimizer(model, cfg)
    # LambdaLR saves the __dict__ of a callable object (here a TrainSection) into its state_dict,
    # which a weights_only load rejects; a plain function is saved as nothing, and a resumed run
    # takes its schedule from the current params.
    schedule = LrSchedule(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: schedule(epoch))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision.use_scaler)
    return TrainState(model, optimizer, scheduler, scaler)


def check_input(spec: InputSpec, multiple: int, backbone: str) -> None:
    """The model's input (the spec's size: train.image_size or train.patch_size) must be a
    multiple of the model's total stride (`UNet.required_multiple`)."""
    message = spec.stride_error(multiple, backbone)
    if message:
        raise SegpipeError(message)


def start_or_resume(
    state: TrainState,
    resume: bool,
    models_dir: Path,
    runtime: Runtime,
    *,
    cfg: TrainSection | None = None,
    spec: InputSpec | None = None,
) -> None:
    """Continue from models_dir/last.pt when train.resume is set and it exists; else start afresh
    without old checkpoints (DVC keeps the folder between runs for resume). With the current `cfg`
    and `spec`, a resume is checked against them and takes their hyperparameters (`restore_state`)."""
    last = models_dir / "last.pt"
    if resume and last.exists():
        try:
            restore_state(state, last, runtime.device, cfg, spec)
        except RuntimeError as exc:
            raise SegpipeError(f"{last}: cannot resume, it was trained with other model settings ({exc})") from None
        log.info("resuming from %s after epoch %d", last, state.epoch)
        return
    if not runtime.dist.is_main:
        return
    if resume:
        log.warning("train.resume is true but %s does not exist; starting from scratch", last)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        for path in models_dir.glob("*.pt"):  # the MLflow run id file is train_stage's, kept
            path.unlink()
    except OSError as exc:
        raise SegpipeError(f"{exc.filename or models_dir}: cannot prepare the checkpoint folder ({exc.strerror or exc}); "
                           f"make {models_dir} a writable folder with free space") from None


def training_contents(state: TrainState) -> dict[str, Any]:
    """What a resume needs besides the weights."""
    return {
        "epoch": state.epoch,
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }


def restore_state(
    state: TrainState, path: Path, device: torch.device, train: TrainSection | None = None, spec: InputSpec | None = None
) -> None:
    """Continue from `last.pt`: weights, optimizer, schedule, scaler, history and RNG; with `train`
    (the current settings), refuse settings a resume cannot carry over (`check_resumable`) and take
    the learning rate, weight decay and momentum from them (`apply_hyperparameters`)."""
    checkpoint = load_checkpoint(path, map_location=device)
    if train is not None and spec is not None:
        check_resumable(path, checkpoint, train, spec)
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    if train is not None:
        apply_hyperparameters(state, train)
    torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
    state.epoch = checkpoint["epoch"]
    state.best_miou = checkpoint["best_miou"]
    state.best_epoch = checkpoint["best_epoch"]
    state.history = list(checkpoint["history"])


def apply_hyperparameters(state: TrainState, train: TrainSection) -> None:
    """Put the current train.lr, weight_decay and momentum into a restored optimizer and schedule.

    The saved optimizer and scheduler state carry the values of the run that saved them, so a
    resume with a lowered train.lr would otherwise go on at the old one without a word, while its
    schedule shape already follows the current params (see `build_state`).
    """
    factor = state.scheduler.lr_lambdas[0](state.scheduler.last_epoch)
    state.scheduler.base_lrs = [train.lr] * len(state.optimizer.param_groups)
    for group in state.optimizer.param_groups:
        if group["initial_lr"] != train.lr or group["weight_decay"] != train.weight_decay:
            log.info("resuming with train.lr %g, weight_decay %g (saved: %g, %g)",
                     train.lr, train.weight_decay, group["initial_lr"], group["weight_decay"])
        group.update(initial_lr=train.lr, lr=train.lr * factor, weight_decay=train.weight_decay)
        if "momentum" in group:
            group["momentum"] = train.momentum


def check_resumable(path: Path, checkpoint: dict[str, Any], train: TrainSection, spec: InputSpec) -> None:
    """Refuse to resume when train.optimizer or the model's input (sampling, size, patch scale)
    changed since `path` was saved.

    Another optimizer cannot take over the saved one's state (AdamW's moments are not SGD's
    momentum). Another input is refused rather than warned about: the epochs so far trained on one
    input, the rest would train on another, and the run's history, best.pt and last.pt would then
    describe neither setting, while a resume is meant to end exactly where an uninterrupted run would.
    """
    saved_optimizer = checkpoint.get("params", {}).get("train", {}).get("optimizer", train.optimizer)
    saved = checkpoint_spec(checkpoint, path).to_dict()
    key = "image_size" if spec.to_dict()["mode"] == "letterbox" else "patch_size"
    changes = [("optimizer", saved_optimizer, train.optimizer)] + [
        (name, saved.get(field), spec.to_dict().get(field))
        for field, name in (("mode", "sampling"), ("size", key), ("scale", "patch_scale"))
    ]
    for name, before, now in changes:
        if before != now:
            raise SegpipeError(
                f"{path}: cannot resume: train.{name} changed from {before} to {now} since this checkpoint was "
                f"saved. Set train.{name} back to {before} to resume, or set train.resume: false to train "
                "afresh with the new setting (the old checkpoints are then deleted)"
            )


def end_epoch(
    state: TrainState,
    result: EpochResult,
    contents: Callable[..., dict[str, Any]],
    models_dir: Path,
    save_period: int,
    dist: Distributed,
    tracker: tracking.Tracker | None,
) -> None:
    """Record the epoch, then save last / best / periodic checkpoints (every `save_period`
    epochs; 0: none) and log (rank 0 only). `contents(model, training=...)` is the checkpoint."""
    state.history.append(result.as_row())
    improved = result.val_miou is not None and result.val_miou > state.best_miou
    if improved:
        state.best_miou, state.best_epoch = result.val_miou, result.epoch
    miou = "-" if result.val_miou is None else f"{result.val_miou:.4f}"
    log.info("epoch %d: train_loss %.4f  val_miou %s  lr %.2e", result.epoch, result.train_loss, miou, result.lr)
    if not dist.is_main:
        return
    checkpoint = contents(state.model, training=training_contents(state))
    save_checkpoint(models_dir / "last.pt", checkpoint)
    if improved:  # the model alone: only last.pt resumes, so only it carries the optimizer state
        save_checkpoint(models_dir / "best.pt", contents(state.model))
    if save_period and result.epoch % save_period == 0:
        save_checkpoint(models_dir / f"epoch_{result.epoch:03d}.pt", checkpoint)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in result.as_row().items() if k != "epoch"}, step=result.epoch)


def check_divergence(result: EpochResult, history: Sequence[dict[str, float]], cfg: TrainSection) -> None:
    """Stop the run when this epoch's validation loss is NaN or infinite, or a loss has exploded
    (above EXPLODED_FACTOR times its value in the first epoch of `history` that has it).

    Raises:
        NonFiniteLoss naming what diverged, the epoch and what to try.
    """
    problem = None
    if result.val_loss is not None and not math.isfinite(result.val_loss):
        problem = f"the validation loss became {result.val_loss}"
    for key, name in (("train_loss", "training"), ("val_loss", "validation")):
        value = getattr(result, key)
        first = next((row[key] for row in history if row[key] is not None), None)
        if problem is None and value is not None and first is not None and value > EXPLODED_FACTOR * first:
            problem = f"the {name} loss exploded to {value:.4g}, over {EXPLODED_FACTOR:g} x its first epoch's {first:.4g}"
    if problem is not None:
        raise NonFiniteLoss(
            f"training diverged at epoch {result.epoch}: {problem}; this epoch is not saved (last.pt and best.pt "
            f"keep the epochs before it). Lower train.lr (now {cfg.lr:g}) or clip gradients harder with "
            f"train.grad_clip (now {cfg.grad_clip:g}, 0 = off; try 1.0 or less), and train again"
        )


def train_one_epoch(
    state: TrainState,
    net: nn.Module,
    loader: DeviceLoader,
    loss_fn: nn.Module,
    runtime: Runtime,
    grad_clip: float,
    bar: tqdm,
) -> float:
    """One pass over the loader's device batches; returns the mean training loss over all ranks."""
    dist = runtime.dist
    state.model.train()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of loss * batch, samples)
    for step, (images, masks) in enumerate(loader):
        try:
            loss = train_step(state, net, images, masks, loss_fn, runtime, grad_clip)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(
                f"{exc} at epoch {state.epoch + 1}, batch {step + 1}; "
                "the last good checkpoint is kept. Lower train.lr or set train.grad_clip"
            ) from None
        total += torch.tensor([loss * len(images), len(images)], dtype=torch.float64)
        bar.update(len(images) * dist.world_size)
        bar.set_postfix(loss=f"{total[0] / total[1]:.4f}", lr=f"{state.optimizer.param_groups[0]['lr']:.2e}")
    total = dist.all_sum(total)
    return float(total[0] / total[1])


def train_step(
    state: TrainState,
    net: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    loss_fn: nn.Module,
    runtime: Runtime,
    grad_clip: float,
) -> float:
    """Forward, backward and optimiser step on one device batch; returns its loss.

    Args:
        images: (B, 3, S, S) normalised float, in the model's memory format.
        masks: (B, S, S) int64 class ids (255 ignored).
    Raises:
        NonFiniteLoss before anything is stepped when the loss is NaN or infinite.
    """
    with runtime.precision.autocast(runtime.device):
        loss = loss_fn(net(images).float(), masks)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the training loss became {value}")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return value


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DeviceLoader,
    loss_fn: nn.Module,
    num_classes: int,
    runtime: Runtime,
) -> tuple[float, float]:
    """Validation loss and mIoU on the letterboxed canvas (padding ignored), with the metric code
    that the evaluate stage uses; confusion matrices are summed over ranks."""
    device, precision, dist = runtime.device, runtime.precision, runtime.dist
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    total = torch.zeros(2, dtype=torch.float64)
    for images, masks in loader:
        with precision.autocast(device):
            logits = model(images).float()
        total += torch.tensor([loss_fn(logits, masks).item() * len(images), len(images)], dtype=torch.float64)
        matrix.update(masks, logits.argmax(1))
    total = dist.all_sum(total)
    confusion = dist.all_sum(torch.from_numpy(matrix.matrix))
    miou = SegmentationScores.from_confusion(confusion.numpy()).miou
    return float(total[0] / total[1]), float(miou)
