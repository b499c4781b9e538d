"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

Channel attention re-weights the feature maps, then spatial attention re-weights the positions:

    x' = Mc(x) * x,     Mc(x)  = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))      # (B, C, 1, 1)
    x'' = Ms(x') * x',  Ms(x') = sigmoid(conv_k([mean_c(x'); max_c(x')]))          # (B, 1, H, W)

Where the U-Net uses it (see ``unet.UNet``): one CBAM on every skip connection, applied to the
encoder feature before the decoder concatenates it, and one on the bottleneck (the deepest encoder
feature) before the decoder starts. With CBAM off those places hold ``nn.Identity``, so every other
state_dict key is the same with and without attention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segpipe.errors import SegpipeError


class ChannelAttention(nn.Module):
    """Per-channel gate from a shared MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        # Deep features may have fewer channels than the reduction (e.g. plain U-Net, base 4).
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        peak = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Per-pixel gate from a k x k conv over the channel-wise mean and max maps."""

    def __init__(self, *, kernel_size: int = 7) -> None:
        super().__init__()
        # Same-size output needs symmetric padding, hence an odd kernel.
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat(
            [torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1
        )  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention; output has the input's shape."""

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        check_cbam_args(reduction=reduction, kernel_size=kernel_size)
        self.channel = ChannelAttention(channels, reduction=reduction)
        self.spatial = SpatialAttention(kernel_size=kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


def check_cbam_args(*, reduction: int, kernel_size: int) -> None:
    """Raise SegpipeError for a CBAM reduction < 1 or an even / non-positive kernel size."""
    if reduction < 1:
        raise SegpipeError(
            f"model.cbam_reduction must be a positive integer, got {reduction}; "
            "the paper uses 16."
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SegpipeError(
            f"model.cbam_kernel must be a positive odd integer so the spatial attention keeps "
            f"the feature size, got {kernel_size}; use 7 (the paper's choice) or 3."
        )


def make_attention(channels: int, *, enabled: bool, reduction: int, kernel_size: int) -> nn.Module:
    """A CBAM for a feature with `channels` channels, or nn.Identity when attention is off."""
    if not enabled:
        return nn.Identity()
    return CBAM(channels, reduction=reduction, kernel_size=kernel_size)
