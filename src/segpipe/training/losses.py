"""Segmentation losses: a weighted sum of cross-entropy, focal and soft Dice terms.

All terms take logits (B, C, H, W) and a target (B, H, W) of class indices, where pixels equal
to ``ignore_index`` (255: unlabelled / letterbox padding) contribute nothing. A batch in which
every pixel is ignored gives 0 (with a gradient of zeros), not NaN. Terms work on
``log_softmax`` of float32 logits, so they are stable under mixed precision too.

Class weights ``w_c`` (optional, one per class) mean:

* cross-entropy and focal: pixel i counts with weight ``w_{y_i}``; the loss is the weighted
  mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over non-ignored pixels (as ``F.cross_entropy``).
* Dice: the per-class Dice scores are averaged with weights ``w_c / sum_c w_c``.

Focal alpha in the multi-class case, generalising the binary focal loss (Lin et al. 2017):
``alpha_t = 1 - alpha`` for pixels of class 0 (background) and ``alpha`` for every other class.
``alpha=None`` means no alpha factor (alpha_t = 1); with ``gamma=0`` and ``alpha=None`` the focal
term equals cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segpipe.config import TrainSection
from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX



def cross_entropy_term(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Weighted mean of -log p_t over non-ignored pixels."""
    log_p_t, pixel_weight = _per_pixel(logits, target, class_weights, ignore_index)
    return _weighted_mean(-log_p_t, pixel_weight)


def focal_term(
    logits: Tensor,
    target: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    class_weights: Tensor | Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Weighted mean of -alpha_t (1 - p_t)^gamma log p_t over non-ignored pixels.

    alpha_t is ``1 - alpha`` for class 0 and ``alpha`` for the other classes (1 if alpha is None).
    """
    log_p_t, pixel_weight = _per_pixel(logits, target, class_weights, ignore_index)
    # 1 - p_t via expm1 stays accurate when p_t is close to 1; the clamp keeps the gradient of
    # x^gamma finite at x = 0 when gamma < 1.
    one_minus_p = (-torch.expm1(log_p_t)).clamp_min(1e-12)
    loss = -(one_minus_p**gamma) * log_p_t  # (B, H, W)
    if alpha is not None:
        is_background = target == 0
        loss = loss * torch.where(is_background, 1.0 - alpha, alpha)
    return _weighted_mean(loss, pixel_weight)


def dice_term(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1e-5,
) -> Tensor:
    """Soft Dice loss: 1 - mean_c (2 sum(p_c g_c) + s) / (sum p_c + sum g_c + s).

    Sums run over the batch and all non-ignored pixels; classes are averaged with
    ``class_weights`` if given. A class absent from both prediction and target scores 1.
    """
    num_classes = logits.shape[1]
    valid = _valid_mask(target, num_classes, ignore_index)  # (B, H, W)
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)  # (B, C, H, W)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * valid.unsqueeze(1)  # (B, C, H, W)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)  # (C,)
    cardinality = probs.sum(dims) + onehot.sum(dims)  # (C,)
    dice = (2.0 * intersection + smooth) / (cardinality + smooth)  # (C,)
    if class_weights is None:
        return 1.0 - dice.mean()
    weights = _check_class_weights(class_weights, num_classes).to(dice)
    return 1.0 - (dice * weights).sum() / weights.sum()


class SegmentationLoss(nn.Module):
    """``ce * CE + focal * Focal + dice * Dice``; a term with weight 0 is not computed.

    Args:
        ce, focal, dice: non-negative weights of the terms, not all zero.
        focal_alpha: focal alpha in [0, 1] (class 0 gets 1 - alpha, others alpha), or None.
        focal_gamma: focal focusing parameter, >= 0.
        class_weights: optional non-negative weight per class, used by every term.
        ignore_index: target value of pixels that do not count.
    """

    def __init__(
        self,
        *,
        ce: float = 0.0,
        focal: float = 0.0,
        dice: float = 1.0,
        focal_alpha: float | None = 0.25,
        focal_gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        _check_config(ce=ce, focal=focal, dice=dice, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        self.weights = {"ce": float(ce), "focal": float(focal), "dice": float(dice)}
        self.focal_alpha = focal_alpha
        self.focal_gamma = float(focal_gamma)
        self.ignore_index = ignore_index
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
            _check_class_weights(weights, num_classes=len(weights))
        # Not persistent: it is config, not learnt state, and would break loading old state_dicts.
        self.register_buffer("class_weights", weights, persistent=False)

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The unweighted value of every term whose weight is non-zero (for logging)."""
        cw, ii = self.class_weights, self.ignore_index
        compute = {
            "ce": lambda: cross_entropy_term(logits, target, cw, ii),
            "focal": lambda: focal_term(logits, target, self.focal_alpha, self.focal_gamma, cw, ii),
            "dice": lambda: dice_term(logits, target, cw, ii),
        }
        return {name: compute[name]() for name, w in self.weights.items() if w > 0}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for logits (B, C, H, W) and target (B, H, W) long."""
        terms = self.terms(logits, target)
        return sum((self.weights[name] * value for name, value in terms.items()), logits.new_zeros(()))


def _per_pixel(
    logits: Tensor, target: Tensor, class_weights: Tensor | Sequence[float] | None, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """log p of the target class (B, H, W) and each pixel's weight (0 where ignored)."""
    num_classes = logits.shape[1]
    valid = _valid_mask(target, num_classes, ignore_index)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    log_probs = F.log_softmax(logits.float(), dim=1)  # (B, C, H, W)
    log_p_t = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (B, H, W)
    if class_weights is None:
        pixel_weight = valid.to(log_p_t.dtype)
    else:
        weights = _check_class_weights(class_weights, num_classes).to(log_p_t)
        pixel_weight = weights[safe_target] * valid
    return log_p_t, pixel_weight


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    total = weights.sum()
    # An all-ignored batch has total 0 and numerator 0: return 0 (graph kept), not 0/0.
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return (values * weights).sum() / safe_total


def _valid_mask(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Boolean (B, H, W) of pixels that count; raises on labels outside [0, C) and ignore_index."""
    if target.ndim != 3:
        raise SegpipeError(f"target must be (B, H, W) class indices, got shape {tuple(target.shape)}")
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise SegpipeError(
            f"target has label values {values} outside 0..{num_classes - 1} (and not the ignore "
            f"index {ignore_index}); check num_classes and the label map of the masks."
        )
    return valid


def _check_class_weights(class_weights: Tensor | Sequence[float], num_classes: int) -> Tensor:
    class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if class_weights.ndim != 1 or len(class_weights) != num_classes:
        raise SegpipeError(
            f"train.class_weights has {class_weights.numel()} values but the model predicts "
            f"{num_classes} classes; give one weight per class."
        )
    if bool((class_weights < 0).any()) or not bool(class_weights.sum() > 0):
        raise SegpipeError(
            f"train.class_weights must be non-negative with a positive sum, got {class_weights.tolist()}"
        )
    return class_weights


def _check_config(*, ce: float, focal: float, dice: float, focal_alpha: float | None, focal_gamma: float) -> None:
    for name, value in (("ce", ce), ("focal", focal), ("dice", dice)):
        if not math.isfinite(value) or value < 0:
            raise SegpipeError(f"train.loss.{name} must be a finite number >= 0, got {value}")
    if ce == focal == dice == 0:
        raise SegpipeError("train.loss.ce, train.loss.focal and train.loss.dice are all 0; set at least one to a positive value")
    if not math.isfinite(focal_gamma) or focal_gamma < 0:
        raise SegpipeError(f"train.focal_gamma must be >= 0, got {focal_gamma}")
    if focal_alpha is not None and not 0.0 <= focal_alpha <= 1.0:
        raise SegpipeError(f"train.focal_alpha must be in [0, 1] or null, got {focal_alpha}")


def make_loss(config: TrainSection) -> SegmentationLoss:
    """The loss that `train.loss`, `focal_*` and `class_weights` describe."""
    return SegmentationLoss(
        ce=config.loss.ce,
        focal=config.loss.focal,
        dice=config.loss.dice,
        focal_alpha=config.focal_alpha,
        focal_gamma=config.focal_gamma,
        class_weights=config.class_weights or None,
    )
