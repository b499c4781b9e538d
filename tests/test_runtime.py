"""Device choice: errors name the setting the user wrote the device in."""

from __future__ import annotations

import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.runtime import resolve_device


def test_a_device_that_is_not_one_is_named_with_its_setting():
    with pytest.raises(SegpipeError, match=r"^serve\.device: 'gpu0' is not a device"):
        resolve_device("gpu0", "serve.device")
    with pytest.raises(SegpipeError, match=r"^train\.device: 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_tells_which_setting_to_change():
    with pytest.raises(SegpipeError, match=r"^--device is cuda but no CUDA GPU is visible; set --device to auto or cpu$"):
        resolve_device("cuda", "--device")


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu", "evaluate.device") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
