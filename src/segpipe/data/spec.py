"""How a model is fed, decided once: `LetterboxInput(size)` or `PatchInput(size, scale, per_image, class_balance)`.

The input spec is built once from `train.*` (`spec_from_train`), written once into the checkpoint
(`to_dict`, read back by `spec_from_dict`, which also maps checkpoints written before it existed)
and asked by every consumer instead of a mode string: the training dataset and how the decoded
cache shapes its images, the validation data, and how a whole image is predicted (`tiling`: None
for whole letterboxed images, else windows of the right size at the right scale, `max_scale`).
This module and `spec_from_train` are the only places that know which modes there are.

    params.yaml train.* --spec_from_train--> InputSpec --to_dict--> checkpoint["input"]
        --spec_from_dict--> InputSpec --tiling / max_scale / size--> the tensor fed to the model
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segpipe.config import TrainSection
from segpipe.data.cache import DecodedCache, Letterboxed, Scaled
from segpipe.data.dataset import SegmentationDataset
from segpipe.data.patches import PatchDataset, ScaledLoader
from segpipe.data.tiling import DEFAULT_OVERLAP, Tiling
from segpipe.errors import SegpipeError
from segpipe.layout import Sample
from segpipe.shapes import stride_message

# Windows per forward pass wherever no batch size is asked for (predict --batch-size's default).
DEFAULT_WINDOW_BATCH = 8


@dataclass(frozen=True)
class LetterboxInput:
    """Whole images, each fitted into a `size` x `size` canvas (padding ignored)."""

    size: int
    key = "train.image_size"  # the setting that gives `size`, for messages
    max_scale = None  # an image is enlarged as much as the canvas allows

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "letterbox", "size": self.size}

    @property
    def canvas(self) -> tuple[int, int] | None:
        """The canvas a whole image is letterboxed into (large photos may be decoded no larger)."""
        return (self.size, self.size)

    def tiling(self, batch_size: int = DEFAULT_WINDOW_BATCH, overlap: float = DEFAULT_OVERLAP) -> Tiling | None:
        """How a whole image is predicted by default: None, whole and letterboxed."""
        return None

    def train_shaping(self) -> Letterboxed:
        return Letterboxed(self.size)

    def val_shaping(self) -> Letterboxed:
        return Letterboxed(self.size)

    def train_dataset(self, samples: Sequence[Sample], *, seed: int, cache: DecodedCache | None, load: ScaledLoader) -> SegmentationDataset:
        return SegmentationDataset(samples, self.size, cache)

    def val_dataset(self, samples: Sequence[Sample], cache: DecodedCache | None) -> SegmentationDataset | None:
        """Validation batches on the letterboxed canvas."""
        return SegmentationDataset(samples, self.size, cache)

    def describe(self) -> str:
        return f"letterboxed to {self.size} px"

    def stride_error(self, multiple: int, backbone: str) -> str | None:
        return stride_message(self.key, self.size, multiple, backbone)


@dataclass(frozen=True)
class PatchInput:
    """Random `size` x `size` crops of images scaled by `scale`, `per_image` per image and epoch,
    centred on a present non-background class with probability `class_balance`; whole images are
    predicted (and validated) in blended windows at that scale."""

    size: int
    scale: float
    per_image: int = 4
    class_balance: float = 0.33
    key = "train.patch_size"

    def __post_init__(self) -> None:
        if not self.scale > 0 or self.size < 1:
            raise SegpipeError(f"patches need a size >= 1 and a scale > 0, got size {self.size}, scale {self.scale}")

    @property
    def max_scale(self) -> float:
        """A window (or a whole image smaller than one) is never enlarged beyond the training scale."""
        return self.scale

    @property
    def window(self) -> int:
        """The window side in source pixels: floor(size / scale), the largest window that, scaled
        by `scale`, still fits the model's input. Floor, not round: a rounded-up window would be
        shrunk below the training scale to fit, and the scale is what the model learnt."""
        # The epsilon keeps e.g. 90 / 0.3 = 299.99999999999994 from flooring to 299.
        return max(1, math.floor(self.size / self.scale + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "patches", "size": self.size, "scale": self.scale, "per_image": self.per_image,
                "class_balance": self.class_balance}

    @property
    def canvas(self) -> tuple[int, int] | None:
        return None  # windows are cut from the image at its full size

    def tiling(self, batch_size: int = DEFAULT_WINDOW_BATCH, overlap: float = DEFAULT_OVERLAP) -> Tiling | None:
        """Windows of `window` source pixels; an image smaller than one is one window of its own extent."""
        return Tiling(self.window, overlap, batch_size=batch_size)

    def train_shaping(self) -> Scaled:
        return Scaled(self.scale)

    def val_shaping(self) -> Scaled:
        return Scaled(1.0)  # scored at its own resolution, like evaluate

    def train_dataset(self, samples: Sequence[Sample], *, seed: int, cache: DecodedCache | None, load: ScaledLoader) -> PatchDataset:
        return PatchDataset(samples, self, seed=seed, load=load)

    def val_dataset(self, samples: Sequence[Sample], cache: DecodedCache | None) -> None:
        return None  # whole images, predicted in windows (training.tiled_validation)

    def describe(self) -> str:
        return f"{self.per_image} patches of {self.size} px per image at scale {self.scale:g}"

    def stride_error(self, multiple: int, backbone: str) -> str | None:
        """The model's input must be a multiple of its total stride; None when it is."""
        return stride_message(self.key, self.size, multiple, backbone)


InputSpec = LetterboxInput | PatchInput


def spec_from_train(train: TrainSection) -> InputSpec:
    """The input spec `train.*` describes."""
    if train.sampling == "patches":
        return PatchInput(train.patch_size, train.patch_scale, train.patches_per_image, train.patch_class_balance)
    return LetterboxInput(train.image_size)


def spec_from_dict(data: Mapping[str, Any]) -> InputSpec:
    """The spec a checkpoint stores under "input"; raises ValueError for an unknown mode or bad fields."""
    fields = dict(data)
    mode = fields.pop("mode", None)
    try:
        if mode == "letterbox":
            return LetterboxInput(int(fields["size"]))
        if mode == "patches":
            return PatchInput(int(fields["size"]), float(fields["scale"]), int(fields.get("per_image", 4)),
                           float(fields.get("class_balance", 0.33)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"input spec {dict(data)!r} is malformed ({exc})") from None
    raise ValueError(f"unknown input mode {mode!r}, expected letterbox or patches")


def spec_from_old_checkpoint(checkpoint: Mapping[str, Any]) -> InputSpec:
    """The spec of a checkpoint written before specs: its `image_size` (the model's input side),
    `sampling` ({"mode", "patch_size", "patch_scale"}; absent before patch training: letterbox)
    and the crop settings from its params."""
    sampling = checkpoint.get("sampling") or {"mode": "letterbox"}
    train = checkpoint.get("params", {}).get("train", {})
    size = int(checkpoint["image_size"])
    if sampling.get("mode") == "patches":
        return PatchInput(size, float(sampling["patch_scale"]), int(train.get("patches_per_image", 4)),
                       float(train.get("patch_class_balance", 0.33)))
    return spec_from_dict({**sampling, "size": size})
