"""Shared prediction: one image in, softmax probabilities at the image's own size out.

`evaluate`, `predict` and the web page all go through `Predictor`, so an image is letterboxed,
normalised, run and mapped back exactly the same way everywhere; the masks `predict` writes
therefore score exactly the numbers `evaluate` reports.

    image (H, W, 3) --Letterbox.fit/apply_image--> canvas (S, S) --to_tensor--> model --softmax-->
    (C, S, S) --Letterbox.restore--> (C, H, W)

S is the checkpoint's `image_size`. A photo much larger than S may be decoded at reduced scale
(`imageio.read_image_for(path, fit=predictor.canvas)`) and passed with its full size: it is
resized onto the same canvas and the probabilities still come back at the full (H, W). Large images go through `segpipe.inference.tiling` with
`Predictor.predict_batch` as the function that predicts each window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.data.letterbox import Letterbox, to_tensor
from segpipe.models.checkpoint import load_model


class Predictor:
    """A model rebuilt from a checkpoint file alone, ready to predict.

    Args:
        checkpoint_path: a segpipe checkpoint (best.pt); it says how to rebuild and feed the model.
        device: where the model runs.
    """

    def __init__(self, checkpoint_path: Path, device: torch.device = torch.device("cpu")) -> None:
        loaded = load_model(checkpoint_path)
        self._setup(loaded.model, loaded.classes, loaded.image_size, device)

    @classmethod
    def from_model(
        cls, model: nn.Module, classes: Sequence[str], image_size: int, device: torch.device = torch.device("cpu")
    ) -> Predictor:
        """A predictor around a model already in memory (benchmarks, tests)."""
        predictor = cls.__new__(cls)
        predictor._setup(model, classes, image_size, device)
        return predictor

    def _setup(self, model: nn.Module, classes: Sequence[str], image_size: int, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.device = device

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def predict_probs(self, image: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (C, H, W) float32 on the CPU for one (H, W, 3) uint8 RGB image."""
        return self.predict_batch([image], tta=tta)[0]

    @property
    def canvas(self) -> tuple[int, int]:
        """The (h, w) canvas images are letterboxed into; `read_image_for(path, fit=predictor.canvas)`
        decodes a large photo no larger than that needs."""
        return (self.image_size, self.image_size)

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        tta: bool = False,
        full_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[torch.Tensor]:
        """`predict_probs` for several images in one forward pass; each keeps its own size.

        Args:
            images: (h, w, 3) uint8 RGB images.
            tta: average over the 8 rotations and flips.
            full_sizes: for images decoded at reduced scale (`read_image_for`), the (H, W) of
                each full image: the probabilities come back at that size, as if the full image
                had been predicted.
        """
        if not images:
            return []
        sizes = full_sizes or [image.shape[:2] for image in images]
        boxes = [Letterbox.fit(size, self.canvas) for size in sizes]
        batch = torch.stack([to_tensor(box.apply_reduced(image)) for box, image in zip(boxes, images)])
        probs = self.canvas_probs(batch, tta=tta)  # (B, C, S, S)
        return [box.restore(p) for box, p in zip(boxes, probs)]

    @torch.no_grad()
    def canvas_probs(self, batch: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (B, C, S, S) on the CPU for a normalised (B, 3, S, S) batch.

        With `tta`, the mean over the 8 rotations and flips of the square canvas, each
        prediction turned back before averaging.
        """
        batch = batch.to(self.device)
        if not tta:
            return self._softmax(batch).cpu()
        total = torch.zeros((batch.shape[0], self.num_classes, *batch.shape[-2:]))
        for flip in (False, True):
            flipped = batch.flip(-1) if flip else batch
            for turns in range(4):
                probs = self._softmax(torch.rot90(flipped, turns, dims=(-2, -1)))
                probs = torch.rot90(probs, -turns, dims=(-2, -1))
                total += (probs.flip(-1) if flip else probs).cpu()
        return total / 8

    def _softmax(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch).float()  # (B, C, S, S)
        if logits.shape[1] != self.num_classes:
            raise SegpipeError(
                f"the model predicts {logits.shape[1]} classes but the checkpoint names "
                f"{self.num_classes}: {self.classes}; the checkpoint is inconsistent, re-train it"
            )
        return F.softmax(logits, dim=1)


def class_map(probs: torch.Tensor) -> np.ndarray:
    """The most probable class per pixel of (C, H, W) probabilities, as (H, W) uint8; a tie goes
    to the lower class, as with argmax."""
    # torch's argmax over the outer dimension of a large (C, H, W) tensor is a strided reduction
    # that takes ~0.8 s for a 3000 x 2250 photo; C passes of elementwise maxima take ~0.08 s.
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8)
    best = probs[0].clone()
    for index in range(1, probs.shape[0]):
        labels.masked_fill_(probs[index] > best, index)
        torch.maximum(best, probs[index], out=best)
    return labels.numpy()
