"""The training data path: cached uint8 batches, persistent loaders, and the device-side options
(bf16 autocast, channels-last, torch.compile) run on the CPU exactly as they would on CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from segpipe.data import cache as cache_module
from segpipe.data.spec import spec_from_train
from segpipe.runtime import Distributed, Precision, Runtime
from segpipe.training import loop
from segpipe.training.loaders import EpochBatches, TrainData, epoch_order
from segpipe.training.loop import fit, use_channels_last
from tests.helpers import CountingCalls, tiny_params, tiny_samples


def test_epoch_batches_are_the_epoch_order_in_batches_dropping_a_short_last_one_only_when_asked():
    batches = EpochBatches(5, seed=3, dist=Distributed(), batch_size=2)
    batches.set_epoch(1)
    order = epoch_order(5, 3, 1)
    assert list(batches) == [order[0:2], order[2:4], order[4:]]
    dropping = EpochBatches(5, seed=3, dist=Distributed(), batch_size=2, drop_last=True)
    dropping.set_epoch(1)
    assert list(dropping) == [order[0:2], order[2:4]]
    dropping.set_epoch(2)
    later = epoch_order(5, 3, 2)
    assert list(dropping) == [later[0:2], later[2:4]]  # each epoch leaves out another sample
    too_few = EpochBatches(1, seed=3, dist=Distributed(), batch_size=2, drop_last=True)
    too_few.set_epoch(0)
    assert list(too_few) == [[0]]  # never an epoch without a batch
    ranks = [EpochBatches(5, 3, Distributed(rank, 2), batch_size=8) for rank in (0, 1)]
    for rank in ranks:
        rank.set_epoch(1)
    # two ranks share 5 indices 3 and 3, the first index filling the gap
    assert [list(r) for r in ranks] == [[[order[0], order[2], order[4]]], [[order[1], order[3], order[0]]]]
    keyed = EpochBatches(5, seed=3, dist=Distributed(), batch_size=2, keyed_by_epoch=True)
    keyed.set_epoch(1)
    assert list(keyed)[0] == [(1, order[0]), (1, order[1])]  # the epoch travels with each key


def test_one_loader_serves_every_epoch_of_a_phase_and_its_workers_persist(samples, tmp_path: Path):
    params = tiny_params({"workers": 1})
    runtime = Runtime(torch.device("cpu"), Precision.for_device(torch.device("cpu")), Distributed())
    data = TrainData(params.train, spec_from_train(params.train), params.base.seed, samples, samples, runtime, channels_last=False)
    first, second = data.train_loader(0, 2), data.train_loader(1, 2)
    assert first.loader is second.loader and first.loader.persistent_workers
    assert data.train_loader(2, 1).loader is not first.loader  # another phase, another batch size
    images, masks = next(iter(data.train_loader(3, 2)))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and masks.dtype == torch.int64


PATCHES = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.75, "patches_per_image": 2}


# Patches are new crops every epoch: workers that live across epochs must still cut each epoch's.
@pytest.mark.parametrize("sampling", [{}, PATCHES], ids=["letterbox", "patches"])
def test_a_run_with_loader_workers_ends_with_the_weights_of_one_without(tmp_path: Path, sampling):
    samples = tiny_samples(tmp_path / "processed", count=3)
    train = {"epochs": 2, "online_augment": True, **sampling}
    inline = fit(tiny_params(train), samples, samples[:1], tmp_path / "inline", progress=False)
    workers = fit(tiny_params({**train, "workers": 2}), samples, samples[:1], tmp_path / "workers", progress=False)
    assert workers.history == inline.history
    for key, value in inline.model.state_dict().items():
        assert torch.equal(value, workers.model.state_dict()[key]), key


def test_a_second_run_on_the_same_images_decodes_none_of_them(tmp_path: Path, monkeypatch, decoded_cache_in_tmp):
    samples = tiny_samples(tmp_path / "processed", count=3)
    decodes = CountingCalls(cache_module.read_image_for)
    monkeypatch.setattr(cache_module, "read_image_for", decodes)
    fit(tiny_params({"epochs": 2}), samples, samples[:1], tmp_path / "first", progress=False)
    assert decodes.calls == 3  # the three training images, once each; the validation image is one of them
    fit(tiny_params({"epochs": 2}), samples, samples[:1], tmp_path / "second", progress=False)
    assert decodes.calls == 3
    assert len(list(decoded_cache_in_tmp.rglob("*.seg"))) == 3
    fit(tiny_params({"epochs": 1, "cache": False}), samples, samples[:1], tmp_path / "uncached", progress=False)
    assert decodes.calls == 3 + 3 + 1  # without the cache: every item of the epoch, and validation


def test_patch_training_reads_its_scaled_images_and_whole_validation_images_from_the_cache(
    tmp_path: Path, monkeypatch, decoded_cache_in_tmp
):
    samples = tiny_samples(tmp_path / "processed", count=3)
    decodes = CountingCalls(cache_module.read_image_for)
    monkeypatch.setattr(cache_module, "read_image_for", decodes)
    params = tiny_params({"epochs": 2, **PATCHES})
    fit(params, samples, samples[:1], tmp_path / "first", progress=False)
    assert decodes.calls == 3 + 1  # the training images at 0.75, the validation image at 1.0
    assert sorted(p.parent.name for p in decoded_cache_in_tmp.rglob("*.seg")) == ["scale-0.75"] * 3 + ["scale-1"]
    fit(params, samples, samples[:1], tmp_path / "second", progress=False)
    assert decodes.calls == 4


PRECISIONS = {"bf16": Precision(torch.bfloat16, use_scaler=False), "fp16 + scaler": Precision(torch.float16, use_scaler=True)}


@pytest.mark.parametrize("precision", PRECISIONS.values(), ids=PRECISIONS.keys())
def test_mixed_precision_and_channels_last_train_on_the_cpu_as_on_cuda(samples, tmp_path: Path, precision):
    runtime = Runtime(torch.device("cpu"), precision, Distributed())
    params = tiny_params({"epochs": 2, "channels_last": True, "lr": 0.01})
    state = fit(params, samples, samples, tmp_path / "models", runtime=runtime, progress=False)
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in state.history)
    convs = [m.weight for m in state.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert state.scaler.is_enabled() == precision.use_scaler


def test_channels_last_is_on_unless_switched_off():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for device in (cpu, cuda):
        assert use_channels_last(tiny_params({"channels_last": "auto"}).train, device)
        assert use_channels_last(tiny_params({"channels_last": True}).train, device)
        assert not use_channels_last(tiny_params({"channels_last": False}).train, device)


def test_a_compiled_run_compiles_once_per_phase_and_never_again(tmp_path: Path, monkeypatch):
    # 5 images in batches of 2: without dropping the short last batch, its shape would recompile.
    samples = tiny_samples(tmp_path / "processed", count=5)
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")  # inductor takes minutes on a CPU; guards are the same
    torch._dynamo.reset()
    counters.clear()
    fit(tiny_params({"epochs": 3, "compile": True}), samples, samples[:1], tmp_path / "one phase", progress=False)
    assert counters["frames"]["total"] == counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    counters.clear()
    params = tiny_params({"epochs": 4, "freeze_epochs": 2, "compile": True})
    state = fit(params, samples, samples[:1], tmp_path / "two phases", progress=False)
    assert counters["frames"]["total"] == counters["stats"]["unique_graphs"] == 2
    assert not any(key.startswith("_orig_mod") for key in state.model.state_dict())  # checkpoints stay plain
