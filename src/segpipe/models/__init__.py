"""U-Net models built from parts: encoders, CBAM attention, decoder, head (see ``registry``)."""

from segpipe.models.registry import BACKBONES, LoadReport, build_model
from segpipe.models.unet import UNet

__all__ = ["BACKBONES", "LoadReport", "UNet", "build_model"]
