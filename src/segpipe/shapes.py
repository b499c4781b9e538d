"""The one rule for the sizes a model accepts: a multiple of its backbone's total stride.

Shared by the training settings' check (`data.spec`, before any data is read) and the model's own
check of each batch (`models.unet`), so the two cannot suggest different sizes.
"""

from __future__ import annotations

import math


def next_multiple(size: int, multiple: int) -> int:
    """The smallest multiple of `multiple` at or above `size`: up, never down, because a batch can
    only be padded to it (letterboxing adds, never removes) and a larger setting loses nothing."""
    return max(1, math.ceil(size / multiple)) * multiple


def stride_message(key: str, size: int, multiple: int, backbone: str) -> str | None:
    """None when `size` (the setting or tensor side named by `key`) is a multiple of the
    backbone's total stride, else the message to show, with the next valid size up."""
    if size % multiple == 0:
        return None
    return (
        f"{key} {size} must be a multiple of {multiple} for model.backbone {backbone} (its total stride); "
        f"try {next_multiple(size, multiple)}"
    )
