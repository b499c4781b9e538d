"""Validation of a model trained on patches: it never sees a whole image at once, so each
validation image is predicted with smoothly blended tiles at the training scale and scored at its
own resolution, the way `evaluate` and `predict` will use the model (`Predictor.class_maps`),
with the same tiling and letterbox code (`data.tiling`, `data.letterbox.predict_letterboxed`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.data.letterbox import predict_letterboxed
from segpipe.data.patches import ScaledLoader
from segpipe.data.spec import InputSpec
from segpipe.data.tiling import predict_tiled
from segpipe.layout import Sample
from segpipe.metrics import ConfusionMatrix, SegmentationScores
from segpipe.runtime import Runtime

# Floor of the blended probabilities before the log: a class with probability 0 would give -inf.
MIN_PROB = 1e-12


@torch.no_grad()
def validate_tiled(
    model: nn.Module,
    samples: Sequence[Sample],
    load: ScaledLoader,
    loss_fn: nn.Module,
    num_classes: int,
    runtime: Runtime,
    spec: InputSpec,
    batch_size: int,
) -> tuple[float, float]:
    """Validation loss (mean over images) and mIoU (over all pixels) of whole images predicted
    in the spec's windows (`spec.tiling`), as `predict` does; images are split over ranks and
    the sums gathered.

    Args:
        load: where the whole images come from (`spec.val_shaping()`: scored at their own size).
        spec: the input spec (window size, scale).
        batch_size: windows per forward pass (train.batch_size).
    """
    device, precision, dist = runtime.device, runtime.precision, runtime.dist
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:  # (B, 3, P, P) -> (B, C, P, P) on the CPU
        with precision.autocast(device):
            logits = model(batch.to(device)).float()
        return F.softmax(logits, dim=1).cpu()

    predict = functools.partial(predict_letterboxed, forward, size=spec.size, max_scale=spec.max_scale)
    tiling = spec.tiling(batch_size)
    matrix = ConfusionMatrix(num_classes)
    total = torch.zeros(2, dtype=torch.float64)  # (sum of per-image losses, images)
    for index in dist.rank_indices(len(samples)):
        image, mask = load(samples[index], spec.val_shaping().scale)
        labels, probs = predict_tiled(predict, image, tiling, keep_probs=True)
        # softmax(log p) = p: the blended probabilities go through the training loss as logits.
        logits = torch.log(probs.clamp_min(MIN_PROB))[None].to(device)
        target = torch.from_numpy(mask.astype(np.int64))[None].to(device)
        total += torch.tensor([loss_fn(logits, target).item(), 1.0], dtype=torch.float64)
        matrix.update(mask, labels)
    total = dist.all_sum(total)
    confusion = dist.all_sum(torch.from_numpy(matrix.matrix))
    miou = SegmentationScores.from_confusion(confusion.numpy()).miou
    return float(total[0] / total[1]), float(miou)
