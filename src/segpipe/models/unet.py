"""The U-Net assembled from parts: encoder -> attention on skips/bottleneck -> decoder -> head.

Data flow for an input of shape (B, 3, H, W) (already ImageNet-normalised by the data pipeline):

    features = encoder(x)                      # 5 maps, shallow to deep, e.g. strides 1..16
    features = [att_i(f_i) for each i]         # CBAM (or Identity) on every skip and the bottleneck
    y = decoder(features)                      # (B, decoder_channels[-1], H, W)
    logits = head(y)                           # (B, num_classes, H, W)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from segpipe.errors import SegpipeError
from segpipe.shapes import next_multiple
from segpipe.models.encoders import DoubleConv, Encoder


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip feature (if any), DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.convs = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)  # (B, in, 2h, 2w)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)  # (B, skip + in, 2h, 2w)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """One DecoderBlock per skip (deepest first), then skip-less blocks up to full resolution.

    Args:
        encoder_channels: channels of the encoder features, shallow to deep; the last one is
            the bottleneck, the others are skips.
        encoder_strides: their strides; when the shallowest skip is not at full resolution
            (resnet50: stride 2) extra x2 blocks without skip bring the output back to H, W.
        decoder_channels: output channels of the skip blocks, deepest first; the extra blocks
            keep the last value.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        decoder_channels: Sequence[int],
    ) -> None:
        super().__init__()
        skip_channels = list(encoder_channels[:-1])[::-1]
        if len(decoder_channels) != len(skip_channels):
            raise ValueError(
                f"need one decoder channel count per skip ({len(skip_channels)}), "
                f"got {list(decoder_channels)}"
            )
        blocks = []
        in_channels = encoder_channels[-1]
        for skip, out in zip(skip_channels, decoder_channels):
            blocks.append(DecoderBlock(in_channels, skip, out))
            in_channels = out
        self.skip_blocks = nn.ModuleList(blocks)
        extra = int(math.log2(encoder_strides[0]))
        self.final_blocks = nn.ModuleList(
            DecoderBlock(in_channels, 0, in_channels) for _ in range(extra)
        )
        self.out_channels = in_channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        *skips, x = features
        for block, skip in zip(self.skip_blocks, reversed(skips)):
            x = block(x, skip)
        for block in self.final_blocks:
            x = block(x)
        return x


class UNet(nn.Module):
    """U-Net for semantic segmentation; returns logits (B, num_classes, H, W).

    Expects images already normalised by the data pipeline (ImageNet mean/std, as the
    pretrained encoders were trained with); the model itself does not normalise. H and W must
    be multiples of ``required_multiple``.

    Args:
        encoder: the feature extractor (``model.encoder``, frozen by ``freeze_encoder``).
        attentions: one module per encoder feature (CBAM or nn.Identity): on every skip and,
            last, on the bottleneck.
        decoder: turns the features into a full-resolution map.
        num_classes: output channels of the 1x1 head.
        args: the keyword arguments of `build_model` that made this architecture (backbone, ...).
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        attentions: Sequence[nn.Module],
        decoder: UNetDecoder,
        num_classes: int,
        args: dict[str, Any],
    ) -> None:
        super().__init__()
        if len(attentions) != len(encoder.out_channels):
            raise ValueError("need one attention module (or Identity) per encoder feature")
        self.encoder = encoder
        self.attentions = nn.ModuleList(attentions)
        self.decoder = decoder
        self.head = nn.Conv2d(decoder.out_channels, num_classes, kernel_size=1)
        self.args = dict(args)
        self.num_classes = num_classes
        self._encoder_frozen = False

    @property
    def required_multiple(self) -> int:
        """Input H and W must be divisible by this (the encoder's total stride)."""
        return self.encoder.total_stride

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_size(x)
        features = self.encoder(x)
        features = [attend(f) for attend, f in zip(self.attentions, features)]
        return self.head(self.decoder(features))

    def _check_input_size(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise SegpipeError(f"expected a (B, C, H, W) batch, got a tensor of shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        m = self.required_multiple
        if height % m or width % m:
            valid = (next_multiple(height, m), next_multiple(width, m))
            raise SegpipeError(
                f"input size {height}x{width} (HxW) is not a multiple of {m}, which the "
                f"{self.args['backbone']} U-Net needs (its total stride); "
                f"letterbox (pad) or resize the images to a valid size, e.g. the next one up, "
                f"{valid[0]}x{valid[1]}."
            )

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the encoder: no gradients, and its norm layers stay in eval mode
        (running statistics unchanged) even after ``train()`` while frozen."""
        self._encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self._encoder_frozen:
            # The whole encoder, not just BatchNorm: a frozen encoder is a fixed feature extractor.
            self.encoder.eval()
        return self

    def model_args(self) -> dict[str, Any]:
        """What rebuilds this architecture: `num_classes` and `build_model`'s keyword arguments.

        ``pretrained`` is always "none": a checkpoint restores the weights itself, and rebuilding
        from it must not need the ImageNet file or the original weights path.
        """
        return {"num_classes": self.num_classes, **self.args, "pretrained": "none"}
