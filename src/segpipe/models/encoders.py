"""U-Net encoders: each is a list of stages that return one feature per resolution.

Every encoder has

* ``stages``: an ``nn.ModuleList``; stage ``i`` maps the previous feature to the next one,
* ``out_channels``: channels of each stage's output, shallow to deep,
* ``strides``: downsampling factor of each stage's output relative to the input,
* ``torchvision_key(key)``: the encoder's name for a key of the matching torchvision
  classification model's state_dict (or None when the encoder has no such tensor), so ImageNet
  weights and torchvision checkpoints can be loaded by name.

Inputs are images already normalised by the data pipeline (ImageNet mean/std); the encoders do
not normalise.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torchvision
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias: the BatchNorm has one) + BatchNorm + ReLU; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU blocks: the U-Net's basic unit in the plain encoder and every decoder."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class Encoder(nn.Module):
    """Runs the stages in order and returns every stage's output, shallow to deep.

    Subclasses declare their ``STRIDES`` on the class, so the input multiple a backbone needs is
    known without building it (``registry.required_multiple``).
    """

    STRIDES: tuple[int, ...] = ()

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self, stages: Sequence[nn.Module], out_channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        if not len(stages) == len(out_channels) == len(strides):
            raise ValueError("an encoder needs one out_channels and one stride per stage")
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(out_channels)
        self.strides = tuple(strides)

    @property
    def total_stride(self) -> int:
        """Downsampling of the deepest feature: input H and W must be multiples of it."""
        return self.strides[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def torchvision_key(self, key: str) -> str | None:
        """This encoder's state_dict key for a torchvision model's `key`; None if it has none."""
        return None


class PlainEncoder(Encoder):
    """Classic U-Net encoder: DoubleConv at full resolution, then 4 x (maxpool, DoubleConv).

    Channels are ``base_channels * (1, 2, 4, 8, 16)`` at strides ``(1, 2, 4, 8, 16)``.
    """

    STRIDES = (1, 2, 4, 8, 16)

    def __init__(self, *, in_channels: int = 3, base_channels: int = 32) -> None:
        channels = [base_channels * 2**i for i in range(5)]
        stages: list[nn.Module] = [DoubleConv(in_channels, channels[0])]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            stages.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out)))
        super().__init__(stages, channels, strides=self.STRIDES)


# torchvision's vgg16 "D" configuration: numbers are 3x3 conv widths, "M" a 2x2 maxpool.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)
# Index in torchvision's vgg16().features where each of our stages starts; the last stage ends
# before the final maxpool (index 30), which the U-Net does not use.
_VGG16_STAGE_STARTS = (0, 4, 9, 16, 23)


class VGG16Encoder(Encoder):
    """torchvision vgg16 ``features`` split before each maxpool (bubbliiiing-style VGG U-Net).

    Stage outputs: 64, 128, 256, 512, 512 channels at strides 1, 2, 4, 8, 16. Layers are built
    here with the same order and init as torchvision (``features[:30]``), so its state_dict maps
    one to one; building only the features skips torchvision's 120M-parameter classifier.
    """

    STRIDES = (1, 2, 4, 8, 16)

    def __init__(self) -> None:
        layers = _vgg16_feature_layers()
        bounds = (*_VGG16_STAGE_STARTS, len(layers))
        stages = [nn.Sequential(*layers[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        super().__init__(stages, out_channels=(64, 128, 256, 512, 512), strides=self.STRIDES)

    def torchvision_key(self, key: str) -> str | None:
        prefix, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if prefix != "features" or not index.isdigit():
            return None
        index_in_features = int(index)
        stage = bisect.bisect_right(_VGG16_STAGE_STARTS, index_in_features) - 1
        local = index_in_features - _VGG16_STAGE_STARTS[stage]
        if local >= len(self.stages[stage]):
            return None
        return f"stages.{stage}.{local}.{name}"


def _vgg16_feature_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1)
        # torchvision.models.VGG's own init for its convs.
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        in_channels = int(item)
    return layers


# torchvision resnet50 module name -> our stage prefix. Stage 1 starts with the stem's maxpool.
_RESNET_PREFIXES = {
    "conv1.": "stages.0.0.",
    "bn1.": "stages.0.1.",
    "layer1.": "stages.1.1.",
    "layer2.": "stages.2.",
    "layer3.": "stages.3.",
    "layer4.": "stages.4.",
}


class ResNet50Encoder(Encoder):
    """torchvision resnet50 without avgpool/fc.

    Stages: stem (conv1, bn1, relu: 64 ch, stride 2), maxpool + layer1 (256 ch, 4),
    layer2 (512, 8), layer3 (1024, 16), layer4 (2048, 32).
    """

    STRIDES = (2, 4, 8, 16, 32)

    def __init__(self) -> None:
        net = torchvision.models.resnet50(weights=None)
        stages = [
            nn.Sequential(net.conv1, net.bn1, net.relu),
            nn.Sequential(net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            net.layer4,
        ]
        super().__init__(stages, out_channels=(64, 256, 512, 1024, 2048), strides=self.STRIDES)

    def torchvision_key(self, key: str) -> str | None:
        for source, target in _RESNET_PREFIXES.items():
            if key.startswith(source):
                return target + key[len(source):]
        return None
