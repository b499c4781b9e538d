"""Typed, frozen configuration loaded from `params.yaml`, the one source of settings.

Each stage reads its own section; `dvc.yaml` declares exactly those keys as the stage's params, so
DVC re-runs a stage when, and only when, a setting it reads changes. Unknown keys and wrong types
are errors that name the file and the key (`params.yaml: augment.copies: ...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.errors import SegpipeError


class Section(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; frozen: settings never change after loading.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BaseSection(Section):
    seed: int = 42
    classes: tuple[str, ...] = ("background", "lesion")
    experiment: str = "segpipe"

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 2:
            raise ValueError("needs at least two classes; index 0 is the background")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {list(classes)}")
        if len(classes) > 255:
            raise ValueError("at most 255 classes fit in a one-byte mask (255 means ignore)")
        return classes


class DataSection(Section):
    format: Literal["labelme", "masks"] = "labelme"
    ignore_labels: tuple[str, ...] = ("__ignore__",)
    mask_suffix: str = ""
    mask_colors: dict[str, int | str] = Field(default_factory=lambda: {"background": 0, "lesion": 255})
    unknown_colors: Literal["error", "ignore"] = "error"
    workers: int = Field(default=0, ge=0)  # 0: one process per core


class SplitSection(Section):
    # Its own seed, not base.seed: runs over several training seeds must share one validation set,
    # or their per-image scores cannot be paired.
    seed: int = 42
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    folds: int = Field(default=0, ge=0)  # 0: a plain hold-out split by val_fraction
    fold: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitSection:
        if self.folds == 1:
            raise ValueError("folds must be 0 (hold-out split) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds}), got {self.fold}")
        return self



class AugmentSection(Section):
    enabled: bool = True
    copies: int = Field(default=2, ge=0)
    rotate_p: float = Field(default=0.5, ge=0.0, le=1.0)
    rotate_limit: float = Field(default=30.0, ge=0.0, le=180.0)  # degrees, either way
    hflip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    vflip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    contrast_p: float = Field(default=0.5, ge=0.0, le=1.0)
    contrast_limit: float = Field(default=0.3, ge=0.0, le=1.0)
    blur_p: float = Field(default=0.3, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.3, 1.5)

    @field_validator("blur_sigma")
    @classmethod
    def _sigma_range(cls, sigma: tuple[float, float]) -> tuple[float, float]:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(sigma)}")
        return sigma


class ModelSection(Section):
    backbone: str = "plain"  # checked against the model registry when the model is built
    base_channels: int = Field(default=16, ge=1)  # plain U-Net width; vgg16/resnet50 fix their own
    cbam: bool = False
    cbam_reduction: int = Field(default=16, ge=1)
    cbam_kernel: int = Field(default=7, ge=1)
    pretrained: str = "none"  # none | imagenet | a path to a weights file


class LossWeights(Section):
    ce: float = Field(default=0.0, ge=0.0)
    focal: float = Field(default=1.0, ge=0.0)
    dice: float = Field(default=1.0, ge=0.0)


class TrainSection(Section):
    image_size: int = Field(default=128, ge=16)  # letterboxed square side
    epochs: int = Field(default=30, ge=1)  # in total, frozen epochs included
    freeze_epochs: int = Field(default=0, ge=0)  # first epochs with the encoder frozen
    batch_size: int = Field(default=8, ge=1)
    freeze_batch_size: int = Field(default=8, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # sgd only
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: int = Field(default=1, ge=0)  # cosine only: linear warm-up
    step_size: int = Field(default=10, ge=1)  # step only: epochs between decays
    step_gamma: float = Field(default=0.1, gt=0.0)
    min_lr_ratio: float = Field(default=0.01, ge=0.0, le=1.0)  # cosine floor, as a fraction of lr
    grad_clip: float = Field(default=1.0, ge=0.0)  # max gradient norm; 0 = off
    loss: LossWeights = LossWeights()
    focal_alpha: float | None = Field(default=0.25, ge=0.0, le=1.0)
    focal_gamma: float = Field(default=2.0, ge=0.0)
    class_weights: tuple[float, ...] = ()  # one per class, or empty for none
    online_augment: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    workers: int = Field(default=0, ge=0)  # DataLoader processes
    cache: bool = True  # decode each image once into the decoded cache (segpipe.data.cache)
    channels_last: bool | Literal["auto"] = "auto"  # auto: on (measured faster on CUDA and the CPU)
    compile: bool = False  # torch.compile the training network (fixed shapes: drops a last partial batch)
    eval_period: int = Field(default=1, ge=1)
    save_period: int = Field(default=5, ge=0)  # extra checkpoint every N epochs; 0 = only best/last
    resume: bool = False

    @model_validator(mode="after")
    def _phases(self) -> TrainSection:
        if self.freeze_epochs > self.epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) exceeds epochs ({self.epochs})")
        if not (self.loss.ce or self.loss.focal or self.loss.dice):
            raise ValueError("loss: at least one of ce, focal, dice must be above 0")
        return self


class EvaluateSection(Section):
    batch_size: int = Field(default=4, ge=1)  # validation images per forward pass
    gallery_size: int = Field(default=4, ge=0)  # best and worst images shown in the gallery plot
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


class Params(Section):
    base: BaseSection = BaseSection()
    data: DataSection = DataSection()
    split: SplitSection = SplitSection()
    augment: AugmentSection = AugmentSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _mask_colors_name_classes(self) -> Params:
        unknown = sorted(set(self.data.mask_colors) - set(self.base.classes))
        if unknown:
            raise ValueError(
                f"data.mask_colors names {unknown}, which are not in base.classes {list(self.base.classes)}"
            )
        weights = self.train.class_weights
        if weights and len(weights) != len(self.base.classes):
            raise ValueError(
                f"train.class_weights has {len(weights)} values but base.classes has {len(self.base.classes)}"
            )
        return self


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}; check its spelling against the README's list")
        else:
            where = f"{key}: " if key else ""
            shown = item["type"] != "missing" and not isinstance(item["input"], dict)
            value = f" (got {item['input']!r})" if shown else ""
            lines.append(f"{source}: {where}{item['msg']}{value}")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params.yaml") -> Params:
    """Validate already-parsed YAML data into `Params`; errors name `source` and each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SegpipeError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        # JSON mode lets YAML lists stand for tuples while keeping strict scalar types.
        return Params.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise SegpipeError(_describe(exc, source)) from None
    except TypeError as exc:  # a value JSON cannot hold, e.g. a YAML date
        raise SegpipeError(f"{source}: unsupported value ({exc})") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegpipeError(f"{path}: params file not found (pass --params PATH)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SegpipeError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(data, str(path))
