"""On a CUDA GPU: bf16 training, channels-last, device-side batches and augmentation, the decoded
cache, predict and serve, and a one-process NCCL group. Marked `gpu` and skipped without CUDA;
benchmarks/gpu_check.sh runs them (`pytest -m gpu`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from segpipe.data.batches import DeviceBatches, OnlineAugment, default_online_transforms
from segpipe.data.cache import CACHE_ENV
from segpipe.inference.predictor import Predictor
from segpipe.models.registry import build_model
from segpipe.runtime import Precision
from segpipe.serving.service import ModelService
from segpipe.training.loop import fit
from tests.helpers import png_bytes, random_image, tiny_checkpoint, tiny_params, tiny_samples

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def test_cuda_trains_in_bf16_with_channels_last_the_decoded_cache_and_online_augmentation(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert Precision.for_device(CUDA).name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    samples = tiny_samples(tmp_path / "processed", count=4)
    params = tiny_params({"device": "cuda", "epochs": 3, "cache": True, "channels_last": True, "online_augment": True})
    state = fit(params, samples, samples, tmp_path / "models", progress=False)
    assert next(state.model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in state.model.parameters())
    assert any((tmp_path / "cache").rglob("*")), "the decoded cache wrote no entry"
    assert (tmp_path / "models" / "best.pt").is_file()


def test_channels_last_gives_the_contiguous_forward_pass_on_cuda():
    torch.manual_seed(0)
    model = build_model(2, **tiny_params().model.model_dump()).to(CUDA).eval()
    images = torch.randn(2, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        plain = model(images)
        model.to(memory_format=torch.channels_last)
        last = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(last, plain, rtol=1e-3, atol=1e-3)


def test_device_batches_and_augmentation_on_cuda_are_the_cpus():
    images = torch.from_numpy(np.stack([random_image(16, 16, seed=i) for i in range(8)]))
    masks = torch.randint(0, 2, (8, 16, 16), dtype=torch.uint8)
    batch = (images, masks, torch.arange(8))
    results = {}
    for device in (torch.device("cpu"), CUDA):
        augment = OnlineAugment(default_online_transforms(), seed=5, count=8)
        results[device.type] = DeviceBatches(device, channels_last=True, augment=augment)(batch, epoch=2)
    assert results["cuda"][0].is_cuda
    torch.testing.assert_close(results["cuda"][0].cpu(), results["cpu"][0], rtol=0, atol=1e-4)
    assert torch.equal(results["cuda"][1].cpu(), results["cpu"][1])


def test_predict_and_serve_on_cuda_agree_with_the_cpu(tmp_path: Path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    image = random_image(40, 56, seed=3)
    on_cpu = Predictor.from_checkpoint(checkpoint, torch.device("cpu")).class_maps([image])[0]
    on_cuda = Predictor.from_checkpoint(checkpoint, CUDA).class_maps([image])[0]
    assert on_cuda.shape == (40, 56)
    assert (on_cuda == on_cpu).mean() > 0.99  # float rounding may flip a tie or two
    served = ModelService(checkpoint, CUDA).predict(png_bytes(image), "photo.png")
    assert served.labels.shape == (40, 56)
    assert (served.labels == on_cpu).mean() > 0.99


def test_a_one_process_nccl_group_all_reduces(tmp_path: Path):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        value = torch.full((3,), 2.0, device=CUDA)
        dist.all_reduce(value)
        assert value.tolist() == [2.0, 2.0, 2.0]
    finally:
        dist.destroy_process_group()
