"""segpipe: a reproducible U-Net segmentation pipeline (DVC stages over this library)."""

__version__ = "0.1.0"
