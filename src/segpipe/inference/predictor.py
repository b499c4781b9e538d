"""Shared prediction: one image in, softmax probabilities at the image's own size out.

`evaluate`, `predict` and the web page all go through `Predictor`, so an image is letterboxed,
normalised, run and mapped back exactly the same way everywhere; the masks `predict` writes
therefore score exactly the numbers `evaluate` reports.

    image (H, W, 3) --Letterbox.fit/apply_image--> canvas (S, S) --to_tensor--> model --softmax-->
    (C, S, S) --Letterbox.restore--> (C, H, W)

S is the input spec's `size` (`data.spec`, stored in the checkpoint). A photo much larger than S may be decoded at reduced scale
(`imageio.read_image_for(path, fit=predictor.canvas)`) and passed with its full size: it is
resized onto the same canvas and the probabilities still come back at the full (H, W). Large
images go through `segpipe.data.tiling` with `Predictor.predict_batch` as the function that
predicts each window. A model trained on patches (a `Patches` spec) is never fed a whole
letterboxed image: `windows()` are the spec's (floor(size / scale) source pixels, each scaled by
`scale` into the model's input, as it was trained), and windows are never enlarged beyond that
scale. `predict_image` is the one way a whole image becomes a class map, for `predict`,
`evaluate`, the server and the MLflow Model alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.data.letterbox import predict_letterboxed
from segpipe.data.spec import DEFAULT_OVERLAP, DEFAULT_WINDOW_BATCH, InputSpec
from segpipe.data.tiling import Tiling, predict_tiled
from segpipe.inference.postprocess import PostProcess
from segpipe.models.checkpoint import load_model


class Predictor:
    """A model ready to predict, fed the way its input spec says.

    Args:
        model: the network.
        classes: its class names, in class-id order.
        spec: how it was trained (`data.spec`): whole letterboxed images, or patches at a scale.
        device: where the model runs.
    """

    def __init__(
        self, model: nn.Module, classes: Sequence[str], spec: InputSpec, device: torch.device = torch.device("cpu")
    ) -> None:
        self.model = model.to(device).eval()
        self.classes = list(classes)
        self.spec = spec
        self.device = device
        # How a whole image is predicted by default; None: whole, letterboxed.
        self.tiling: Tiling | None = spec.tiling()

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device = torch.device("cpu")) -> Predictor:
        """The predictor of a segpipe checkpoint (best.pt): it says how to rebuild and feed the model."""
        loaded = load_model(path)
        return cls(loaded.model, loaded.classes, loaded.spec, device)

    @property
    def image_size(self) -> int:
        """The side of the square the model is fed (letterbox canvas or patch)."""
        return self.spec.size

    def windows(self, tile: int | None = None, overlap: float = DEFAULT_OVERLAP, batch_size: int = DEFAULT_WINDOW_BATCH) -> Tiling | None:
        """The windows to predict a whole image with: `tile` x `tile` when given, else the
        spec's own (None for a letterbox model: whole images)."""
        if tile is None:
            return self.spec.tiling(batch_size, overlap)
        return Tiling(tile, overlap, batch_size=batch_size)

    def predict_image(
        self, image: np.ndarray, tiling: Tiling | None, *, tta: bool = False, keep_probs: bool = False
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """The class map (H, W) uint8 of one whole image, and its probabilities (C, H, W) when
        `keep_probs`: whole and letterboxed when `tiling` is None, else in its blended windows."""
        if tiling is None:
            probs = self.predict_probs(image, tta=tta)
            return class_map(probs), probs if keep_probs else None
        predict = functools.partial(self.predict_batch, tta=tta)
        return predict_tiled(predict, image, tiling, keep_probs=keep_probs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def predict_probs(self, image: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (C, H, W) float32 on the CPU for one (H, W, 3) uint8 RGB image."""
        return self.predict_batch([image], tta=tta)[0]

    @property
    def canvas(self) -> tuple[int, int] | None:
        """The (h, w) canvas a whole image is letterboxed into, so that
        `read_image_for(path, fit=predictor.canvas)` decodes a large photo no larger than that
        needs; None for a patch model, which tiles images at its own scale and needs them whole."""
        return self.spec.canvas

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        tta: bool = False,
        full_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[torch.Tensor]:
        """`predict_probs` for several images (or tiles) in one forward pass; each keeps its own
        size. A patch model's inputs are never enlarged beyond its training scale.

        Args:
            images: (h, w, 3) uint8 RGB images.
            tta: average over the 8 rotations and flips.
            full_sizes: for images decoded at reduced scale (`read_image_for`), the (H, W) of
                each full image: the probabilities come back at that size, as if the full image
                had been predicted.
        """
        forward = functools.partial(self.canvas_probs, tta=tta)
        return predict_letterboxed(forward, images, self.spec.size, self.spec.max_scale, full_sizes)

    def class_maps(
        self,
        images: Sequence[np.ndarray],
        full_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        tta: bool = False,
        post: PostProcess = PostProcess(),
    ) -> list[np.ndarray]:
        """The (H, W) uint8 class map of each whole image as `predict` makes it with the same
        `tta` and `post`: one letterboxed forward pass for all `images` (`full_sizes` as in
        `predict_batch`), or, for a patch model, its own blended windows (`self.tiling`, the very
        windows and batches `predict` uses, so the scores are those of `predict`'s masks) of
        images decoded whole."""
        if self.tiling is None:
            return [post(class_map(probs)) for probs in self.predict_batch(images, tta=tta, full_sizes=full_sizes)]
        if full_sizes is not None and any(tuple(s) != i.shape[:2] for s, i in zip(full_sizes, images)):
            raise SegpipeError("a patch model tiles images at their full size; do not decode them reduced")
        return [post(self.predict_image(image, self.tiling, tta=tta)[0]) for image in images]

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
