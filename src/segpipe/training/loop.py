"""The training loop: build, then per epoch `train_one_epoch`, `validate`, `save_checkpoints`.

Two phases as in the paper: the first `train.freeze_epochs` epochs train the decoder on a frozen
encoder (no gradients, normalisation statistics fixed), then everything trains; each phase has
its own batch size and one LR schedule spans both. Every epoch's sample order and augmentation
draws come from (seed, epoch), so a run resumed from `last.pt` ends with the same weights as one
that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segpipe.config import Params, TrainSection
from segpipe.errors import SegpipeError
from segpipe.losses import SegmentationLoss
from segpipe.metrics import ConfusionMatrix, SegmentationScores
from segpipe.models import UNet, build_model
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.runtime import Distributed, Precision

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "lr")


class LrSchedule:
    """LR factor per epoch: linear warm-up then cosine to `min_lr_ratio`, or step decay, or constant."""

    def __init__(self, config: TrainSection) -> None:
        self.config = config

    def __call__(self, epoch: int) -> float:
        c = self.config
        if c.scheduler == "step":
            return c.step_gamma ** (epoch // c.step_size)
        if c.scheduler == "none":
            return 1.0
        if epoch < c.warmup_epochs:
            return (epoch + 1) / (c.warmup_epochs + 1)
        span = max(c.epochs - c.warmup_epochs, 1)
        progress = (epoch - c.warmup_epochs) / span
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


def make_optimizer(model: nn.Module, config: TrainSection) -> torch.optim.Optimizer:
    # Every parameter is registered from the start (frozen ones simply get no gradient), so the
    # optimizer state has one layout across the unfreeze and across resumes.
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_loss(params: Params) -> SegmentationLoss:
    t = params.train
    return SegmentationLoss(
        ce=t.loss.ce,
        focal=t.loss.focal,
        dice=t.loss.dice,
        focal_alpha=t.focal_alpha,
        focal_gamma=t.focal_gamma,
        class_weights=t.class_weights or None,
    )


def build_state(params: Params, device: torch.device, precision: Precision) -> TrainState:
    m = params.model
    model = build_model(
        m.backbone,
        len(params.base.classes),
        cbam=m.cbam,
        cbam_reduction=m.cbam_reduction,
        cbam_kernel=m.cbam_kernel,
        base_channels=m.base_channels,
        pretrained=m.pretrained,
    )
    multiple = model.required_multiple
    if params.train.image_size % multiple:
        nearest = max(1, round(params.train.image_size / multiple)) * multiple
        raise SegpipeError(
            f"train.image_size {params.train.image_size} must be a multiple of {multiple} "
            f"for model.backbone {m.backbone}; try {nearest}"
        )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, params.train)
    # LambdaLR saves the __dict__ of a callable object (here a TrainSection) into its state_dict,
    # which a weights_only load rejects; a plain function is saved as nothing, and a resumed run
    # takes its schedule from the current params.
    schedule = LrSchedule(params.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: schedule(epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    return TrainState(model, optimizer, scheduler, scaler)


def checkpoint_dict(state: TrainState, params: Params) -> dict[str, Any]:
    return {
        "model": state.model.state_dict(),
        "model_args": state.model.model_args(),
        "classes": list(params.base.classes),
        "image_size": params.train.image_size,
        "params": params.model_dump(mode="json"),
        "epoch": state.epoch,
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }


def restore_state(state: TrainState, path: Path, device: torch.device) -> None:
    """Continue from `last.pt`: weights, optimizer, schedule, scaler, history and RNG."""
    checkpoint = load_checkpoint(path, map_location=device)
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
    state.epoch = checkpoint["epoch"]
    state.best_miou = checkpoint["best_miou"]
    state.best_epoch = checkpoint["best_epoch"]
    state.history = list(checkpoint["history"])


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch, fixed by (seed, epoch) alone."""
    return random.Random(f"{seed}:{epoch}").sample(range(count), count)


def train_one_epoch(
    state: TrainState,
    net: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    precision: Precision,
    grad_clip: float,
    dist: Distributed,
    bar: tqdm,
) -> float:
    """One pass over the loader; returns the mean training loss over all ranks."""
    state.model.train()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of loss * batch, samples)
    for step, (images, masks) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            loss = loss_fn(net(images).float(), masks)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss became {loss.item()} at epoch {state.epoch + 1}, batch {step + 1}; "
                "the last good checkpoint is kept. Lower train.lr or set train.grad_clip"
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if grad_clip > 0:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        total += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64)
        bar.update(len(images) * dist.world_size)
        bar.set_postfix(loss=f"{total[0] / total[1]:.4f}", lr=f"{state.optimizer.param_groups[0]['lr']:.2e}")
    total = dist.all_sum(total)
    return float(total[0] / total[1])


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    num_classes: int,
    *,
    device: torch.device,
    precision: Precision,
    dist: Distributed,
) -> tuple[float, float]:
    """Validation loss and mIoU on the letterboxed canvas (padding ignored), with the metric code
    that the evaluate stage uses; confusion matrices are summed over ranks."""
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    total = torch.zeros(2, dtype=torch.float64)
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with precision.autocast(device):
            logits = model(images).float()
        total += torch.tensor([loss_fn(logits, masks).item() * len(images), len(images)], dtype=torch.float64)
        matrix.update(masks, logits.argmax(1))
    total = dist.all_sum(total)
    confusion = dist.all_sum(torch.from_numpy(matrix.matrix))
    miou = SegmentationScores.from_confusion(confusion.numpy()).miou
    return float(total[0] / total[1]), float(miou)
