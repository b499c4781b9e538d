"""Backbone registry, ``build_model``, and loading pretrained weights (offline only).

One table (`_TABLE`) gives each backbone name its encoder, the decoder widths that go with it and
the ImageNet weights; ``build_model`` adds the attention modules, decoder and head, then loads
weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from segpipe.errors import SegpipeError
from segpipe.models.cbam import check_cbam_args, make_attention
from segpipe.models.encoders import Encoder, PlainEncoder, ResNet50Encoder, VGG16Encoder
from segpipe.models.unet import UNet, UNetDecoder

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Backbone:
    """One row of the backbone table: how to build its encoder, the decoder widths that go with
    it (per skip, deepest first; `plain` scales them with base_channels), and the torchvision
    weights "imagenet" means (None: there are none)."""

    encoder: type[Encoder]
    decoder_channels: Callable[[int], tuple[int, ...]]
    imagenet: torchvision.models.WeightsEnum | None = None
    uses_width: bool = False  # the encoder takes base_channels (only `plain`)

    def build(self, base_channels: int) -> tuple[Encoder, tuple[int, ...]]:
        encoder = self.encoder(base_channels=base_channels) if self.uses_width else self.encoder()
        return encoder, self.decoder_channels(base_channels)


_TABLE: dict[str, Backbone] = {
    "plain": Backbone(PlainEncoder, lambda b: (8 * b, 4 * b, 2 * b, b), uses_width=True),
    # Decoder widths of the bubbliiiing VGG U-Net: each block outputs its skip's width.
    "resnet50": Backbone(ResNet50Encoder, lambda b: (512, 256, 128, 64), torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    "vgg16": Backbone(VGG16Encoder, lambda b: (512, 256, 128, 64), torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}
BACKBONES: tuple[str, ...] = tuple(_TABLE)


@dataclass(frozen=True)
class LoadReport:
    """What loading a weights file did: tensors copied, file keys unused, model keys not set."""

    loaded: int
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    loaded_encoder: int = 0  # how many of `loaded` went into the encoder


def required_multiple(backbone: str) -> int:
    """The input side `backbone`'s U-Net needs a multiple of (its total stride), without building it."""
    return _backbone(backbone).encoder.STRIDES[-1]


def _backbone(name: str) -> Backbone:
    """The table's row for `name`; an unknown name lists the valid ones."""
    if name not in _TABLE:
        raise SegpipeError(f"unknown model.backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return _TABLE[name]


def build_model(
    num_classes: int,
    *,
    backbone: str,
    base_channels: int,
    cbam: bool,
    cbam_reduction: int,
    cbam_kernel: int,
    pretrained: str = "none",
) -> UNet:
    """Build a U-Net from plain keyword arguments (params.yaml's `model` section:
    `build_model(n, **params.model.model_dump())`).

    Args:
        num_classes: output channels (background included).
        backbone: one of ``BACKBONES``.
        base_channels: the `plain` U-Net's width (vgg16/resnet50 fix their own).
        cbam, cbam_reduction, cbam_kernel: CBAM on every skip and the bottleneck, and its settings.
        pretrained: "none", "imagenet" (torchvision's file, which must already be in torch hub's
            cache: nothing is downloaded), or a path to a .pt/.pth state dict or segpipe
            checkpoint. The result of loading is logged and kept in ``model.load_report``.
    """
    row = _backbone(backbone)
    if num_classes < 1:
        raise SegpipeError(f"num_classes must be at least 1, got {num_classes}")
    if base_channels < 1:
        raise SegpipeError(f"model.base_channels must be at least 1, got {base_channels}")
    check_cbam_args(reduction=cbam_reduction, kernel_size=cbam_kernel)

    encoder, decoder_channels = row.build(base_channels)
    attentions = [
        make_attention(c, enabled=cbam, reduction=cbam_reduction, kernel_size=cbam_kernel)
        for c in encoder.out_channels
    ]
    decoder = UNetDecoder(encoder.out_channels, encoder.strides, decoder_channels)
    model = UNet(
        encoder=encoder, attentions=attentions, decoder=decoder,
        num_classes=num_classes,
        args={"backbone": backbone, "base_channels": base_channels, "cbam": cbam,
              "cbam_reduction": cbam_reduction, "cbam_kernel": cbam_kernel},
    )
    model.load_report = load_pretrained(model, backbone, pretrained)
    return model


def pretrained_file(backbone: str, pretrained: str) -> Path | None:
    """The weights file `pretrained` ("none", "imagenet" or a path) names, checked to exist; None for "none".

    Cheap (nothing is read), so a stage can check it before it starts anything.
    """
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        return imagenet_cache_path(backbone)
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise SegpipeError(
            f"model.pretrained: weights file {str(path)!r} does not exist; give an existing "
            f".pt/.pth path, 'imagenet', or 'none'."
        )
    return path


def load_pretrained(model: UNet, backbone: str, pretrained: str) -> LoadReport | None:
    """Load `pretrained` ("none", "imagenet" or a file path) into `model`; None for "none"."""
    path = pretrained_file(backbone, pretrained)
    if path is None:
        return None
    report = load_state_into(model, _load_file(path))
    if not report.loaded_encoder:
        # A file that only matches e.g. the head's bias is the wrong file, not a partial load.
        raise SegpipeError(
            f"model.pretrained={pretrained!r}: no encoder tensor of the file matches the "
            f"{backbone} U-Net (by name and shape); is it a {backbone} torchvision state_dict, an "
            f"encoder state_dict or a segpipe checkpoint of the same backbone?"
        )
    shown = ", ".join(report.skipped[:10]) + (" ..." if len(report.skipped) > 10 else "")
    logger.info("loaded %d tensors, skipped %d: %s", report.loaded, len(report.skipped), shown)
    return report


def imagenet_cache_path(backbone: str) -> Path:
    """Path of the torchvision ImageNet weights for `backbone` in torch hub's cache.

    Raises SegpipeError when there are none for the backbone or the file is not cached: the
    pipeline runs offline, so it never downloads.
    """
    weights = _TABLE[backbone].imagenet if backbone in _TABLE else None
    if weights is None:
        with_weights = [name for name, row in _TABLE.items() if row.imagenet is not None]
        raise SegpipeError(
            f"model.pretrained='imagenet': there are no ImageNet weights for the {backbone!r} "
            f"backbone; use pretrained 'none' or one of {', '.join(with_weights)}."
        )
    filename = os.path.basename(urlparse(weights.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise SegpipeError(
            f"model.pretrained='imagenet': the {backbone} ImageNet weights are not cached at "
            f"{path} and this pipeline runs offline (it does not download). Fix: download "
            f"{weights.url} on a machine with internet and copy it to {path} (or set TORCH_HOME), "
            f"or set model.pretrained to a local .pth path, or to 'none'."
        )
    return path


def _load_file(path: Path) -> Mapping[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise SegpipeError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a segpipe checkpoint
    if not isinstance(state, Mapping):
        raise SegpipeError(
            f"weights file {path} holds a {type(state).__name__}, not a state_dict "
            "(a mapping of names to tensors) or a checkpoint with a 'model' entry"
        )
    return state


def load_state_into(model: UNet, state: Mapping[str, Any]) -> LoadReport:
    """Copy the tensors of `state` whose names and shapes match into `model` (non-strict).

    Names may be the model's own (segpipe state_dict or checkpoint), the encoder's (encoder-only
    state_dict), or torchvision's (vgg16/resnet50 classification state_dict).
    Returns a LoadReport; ``missing`` lists the encoder's tensors (the whole model's, when the
    file held model keys) that were not set.
    """
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        target = _target_key(model, own, key)
        if target is None or not isinstance(value, torch.Tensor):
            skipped.append(key)
        elif value.shape != own[target].shape:
            skipped.append(f"{key} (shape {tuple(value.shape)} != {tuple(own[target].shape)})")
        else:
            matched[target] = value
    model.load_state_dict(matched, strict=False)
    whole_model = any(not k.startswith("encoder.") for k in matched)
    scope = own if whole_model else [k for k in own if k.startswith("encoder.")]
    missing = [k for k in scope if k not in matched]
    in_encoder = sum(k.startswith("encoder.") for k in matched)
    return LoadReport(len(matched), skipped=skipped, missing=missing, loaded_encoder=in_encoder)


def _target_key(model: UNet, own: Mapping[str, Any], key: str) -> str | None:
    if key in own:
        return key
    if f"encoder.{key}" in own:
        return f"encoder.{key}"
    mapped = model.encoder.torchvision_key(key)
    if mapped is not None and f"encoder.{mapped}" in own:
        return f"encoder.{mapped}"
    return None
