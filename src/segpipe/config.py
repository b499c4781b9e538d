"""Typed, frozen configuration loaded from `params.yaml`, the one source of settings.

Each stage reads its own section; `dvc.yaml` declares exactly those keys as the stage's params, so
DVC re-runs a stage when, and only when, a setting it reads changes. Unknown keys and wrong types
are errors that name the file and the key (`params.yaml: augment.copies: ...`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

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
    # The convert stage's input folder; dvc.yaml templates it (`${data.raw}`), so that
    # `dvc exp run -S data.raw=...` brings other data without editing dvc.yaml.
    raw: str = "data/sample"
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
    image_size: int = Field(default=96, ge=16)  # letterboxed square side
    # letterbox: each whole image fitted into image_size; patches: random patch_size crops of the
    # image scaled by patch_scale (validated by tiled prediction over whole images).
    sampling: Literal["letterbox", "patches"] = "letterbox"
    patch_size: int = Field(default=256, ge=16)  # square side fed to the model (patches only)
    patch_scale: float = Field(default=1.0, gt=0.0)  # of native resolution: 1.0 native, 0.5 half
    patches_per_image: int = Field(default=4, ge=1)  # crops of every training image per epoch
    # Probability that a crop is centred on a pixel of a present non-background class (nnU-Net's
    # foreground oversampling); 0 = uniform crops.
    patch_class_balance: float = Field(default=0.33, ge=0.0, le=1.0)
    epochs: int = Field(default=10, ge=1)  # in total, frozen epochs included
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
    surface_tolerance: float = Field(default=2.0, ge=0.0)  # pixels of the mask: normalised surface Dice
    tta: bool = False  # average over the 8 rotations and flips
    largest_component: bool = False  # keep each foreground class's largest region (one object per image)
    fill_holes: bool = False  # background enclosed by one foreground class becomes that class


class ServeSection(Section):
    host: str = "127.0.0.1"  # loopback: this machine only
    port: int = Field(default=8000, ge=1, le=65535)
    max_upload_mb: float = Field(default=20.0, gt=0.0)  # larger request bodies get 413
    max_pixels: int = Field(default=25_000_000, ge=1)  # larger images get 413, read from their header
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides serve.host's own; "*": any
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


class Params(Section):
    base: BaseSection = BaseSection()
    data: DataSection = DataSection()
    split: SplitSection = SplitSection()
    augment: AugmentSection = AugmentSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()
    serve: ServeSection = ServeSection()
    # How the params file spelt each value it gives ("augment.rotate_limit" -> "30", where the
    # typed value is 30.0), for records that must read as the file does (MLflow params).
    _spelling: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def spelling(self) -> dict[str, str]:
        """Flat key -> the value's text in the params file; empty when not loaded from a file."""
        return dict(self._spelling)

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        # mask_colors only means something for image/mask folders; labelme files carry class names.
        if self.data.format == "masks":
            mask_color_keys(self.data.mask_colors, self.base.classes)
        weights = self.train.class_weights
        if weights and len(weights) != len(self.base.classes):
            raise ValueError(
                f"train.class_weights has {len(weights)} values but base.classes has {len(self.base.classes)}"
            )
        return self


_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def mask_color_keys(mask_colors: Mapping[str, int | str], classes: Sequence[str]) -> tuple[bool, dict[int, str]]:
    """data.mask_colors checked against base.classes: (gray, {key: class name}).

    `gray` is True when every value is an integer (masks compared as gray levels); otherwise keys
    are colours packed as 0xRRGGBB, an integer v standing for the gray colour (v, v, v). Raises
    ValueError naming the key for an unknown class, a malformed value, or a value given twice.
    """
    if not mask_colors:
        raise ValueError("data.mask_colors is empty; map each class to its mask value, e.g. {background: 0, lesion: 255}")
    gray = all(isinstance(v, int) and not isinstance(v, bool) for v in mask_colors.values())
    by_key: dict[int, str] = {}
    for name, value in mask_colors.items():
        where = f"data.mask_colors.{name}"
        if name not in classes:
            raise ValueError(f"{where}: {name!r} is not in base.classes {list(classes)}")
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 255:
                raise ValueError(f"{where}: gray value {value} is outside 0-255")
            key = value if gray else value * 0x010101
        elif isinstance(value, str) and _HEX.fullmatch(value):
            key = int(value[1:], 16)
        else:
            raise ValueError(f"{where}: expected a gray value 0-255 or a colour '#RRGGBB', got {value!r}")
        if key in by_key:
            raise ValueError(f"{where}: value {value!r} is also given to {by_key[key]!r}; each class needs its own value")
        by_key[key] = name
    return gray, by_key


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
            message = item["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
            lines.append(f"{source}: {where}{message}{value}")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params.yaml") -> Params:
    """Validate already-parsed YAML data into `Params`; errors name `source` and each bad key.
    (Whether the model's input fits its stride is the training stage's check,
    `training.stage.check_model_input`: it needs the model registry.)"""
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
    except RecursionError:
        raise SegpipeError(f"{source}: nested too deeply to read (thousands of levels); params are two or three levels deep") from None


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
    except RecursionError:
        raise SegpipeError(f"{path}: nested too deeply to read (thousands of levels); params are two or three levels deep") from None
    params = parse_params(data, str(path))
    params._spelling = yaml_spelling(yaml.compose(text), text)
    return params


def yaml_spelling(node: yaml.Node | None, text: str, prefix: str = "") -> dict[str, str]:
    """Every leaf of a YAML document under its flat key, as written: {"train.lr": "0.003",
    "augment.blur_sigma": "[0.3, 1.5]"}. Scalars lose their quotes; a block list reads "[a, b]"."""
    if isinstance(node, yaml.MappingNode):
        spelt: dict[str, str] = {}
        for key, value in node.value:
            spelt.update(yaml_spelling(value, text, f"{prefix}{key.value}."))
        return spelt
    name = prefix.removesuffix(".")
    if isinstance(node, yaml.ScalarNode):
        return {name: node.value}
    if isinstance(node, yaml.SequenceNode) and all(isinstance(item, yaml.ScalarNode) for item in node.value):
        if node.flow_style:
            return {name: " ".join(text[node.start_mark.index : node.end_mark.index].split())}
        return {name: "[" + ", ".join(item.value for item in node.value) + "]"}
    return {}  # empty document, or nested lists, which no setting has
