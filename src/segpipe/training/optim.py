"""The optimizer and the learning-rate schedule that `train.*` selects."""

from __future__ import annotations

import math

import torch
from torch import nn

from segpipe.config import TrainSection

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


def make_optimizer(model: nn.Module, config: TrainSection) -> torch.optim.Optimizer:
    # Every parameter is registered from the start (frozen ones simply get no gradient), so the
    # optimizer state has one layout across the unfreeze and across resumes.
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
