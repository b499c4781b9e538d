"""The training loop's data path: datasets read from the decoded cache, loaders whose worker
processes live for the whole run, and the step that makes each uint8 batch model input on the device.

Every epoch's sample order comes from (seed, epoch) alone (`epoch_order`), split across ranks,
and is handed to the loader's batch sampler, so a loader (and its workers) is built once per
batch size, not once per epoch. A dataset whose items change with the epoch (patches: new crops
every epoch) is asked for (epoch, index) keys, because its copies in the workers live on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from segpipe.config import TrainSection
from segpipe.data.batches import DeviceBatches, OnlineAugment, default_online_transforms
from segpipe.data.cache import DecodedCache, Letterboxed, Scaled, available_cores
from segpipe.data.dataset import SegmentationDataset
from segpipe.data.patches import MemoryScaledCache, PatchDataset, ScaledLoader
from segpipe.data.spec import InputSpec
from segpipe.layout import Sample
from segpipe.runtime import Distributed, Runtime, worker_init

log = logging.getLogger(__name__)


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch, fixed by (seed, epoch) alone."""
    return random.Random(f"{seed}:{epoch}").sample(range(count), count)


class EpochBatches(Sampler[list[int]]):
    """Batches of dataset indices for one epoch at a time: this rank's share of `epoch_order`.

    Args:
        count: the dataset's length.
        seed: the run's seed.
        dist: this process's place in the process group.
        batch_size: indices per batch.
        drop_last: leave out a last, smaller batch (so a compiled model sees one shape), as long
            as at least one full batch remains.
        keyed_by_epoch: yield (epoch, index) keys instead of indices, for a dataset whose items
            change with the epoch (`PatchDataset`).
    """

    def __init__(
        self,
        count: int,
        seed: int,
        dist: Distributed,
        batch_size: int,
        *,
        drop_last: bool = False,
        keyed_by_epoch: bool = False,
    ) -> None:
        self.count, self.seed, self.dist = count, seed, dist
        self.batch_size, self.drop_last, self.keyed_by_epoch = batch_size, drop_last, keyed_by_epoch
        self.order: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = self.dist.shard(epoch_order(self.count, self.seed, epoch))

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        for start in range(0, len(self), self.batch_size):
            batch = self.order[start : start + self.batch_size]
            yield [(self.epoch, index) for index in batch] if self.keyed_by_epoch else batch

    def __len__(self) -> int:
        if self.drop_last and len(self.order) >= self.batch_size:
            return len(self.order) - len(self.order) % self.batch_size
        return len(self.order)


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The loader's collate function: `SegmentationDataset.__getitems__` already returns whole batches."""
    return batch


def make_loader(dataset: SegmentationDataset | PatchDataset, batches: Sampler[list[int]], workers: int, device: torch.device) -> DataLoader:
    """A loader of `batches`; its workers (if any) stay alive across epochs; pinned memory on CUDA."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=keep_batch,
        num_workers=workers,
        worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


class DeviceLoader:
    """A loader's batches as device-ready (images, masks) (see `segpipe.data.batches`)."""

    def __init__(self, loader: DataLoader, to_device: DeviceBatches, epoch: int | None = None) -> None:
        self.loader, self.to_device, self.epoch = loader, to_device, epoch

    @property
    def batch_size(self) -> int:
        return self.loader.batch_sampler.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            yield self.to_device(batch, self.epoch)


class TrainData:
    """The training and validation data of one run: datasets (from the decoded cache when
    `train.cache` is on, built before the first epoch), loaders and the device step.

    The input spec says what the datasets are: letterboxed whole images for both, or random crops
    of the training images at the spec's scale and the validation images whole at their own
    size (`scaled`, for tiled validation; `val_loader` is then None).

    Args:
        cfg: the train section (cache, batch_size, workers, compile, online_augment).
        spec: how the model is fed (`data.spec`).
        seed: base.seed.
        train_samples, val_samples: what to train on and validate with.
        runtime: device and process group.
        channels_last: give the model channels-last batches.
        progress: show a progress bar while the cache is built.
    """

    def __init__(
        self,
        cfg: TrainSection,
        spec: InputSpec,
        seed: int,
        train_samples: Sequence[Sample],
        val_samples: Sequence[Sample],
        runtime: Runtime,
        *,
        channels_last: bool,
        progress: bool = False,
    ) -> None:
        self.cfg, self.spec, self.seed, self.runtime = cfg, spec, seed, runtime
        self.val_samples = list(val_samples)
        cache = DecodedCache.default() if cfg.cache else None
        self.scaled: ScaledLoader = scaled_loader(cache)
        self.train_set = spec.train_dataset(train_samples, seed=seed, cache=cache, load=self.scaled)
        val_set = spec.val_dataset(val_samples, cache)  # None: validated on whole images, by `scaled`
        if cache is not None:
            parts = [(list(train_samples), spec.train_shaping()), (self.val_samples, spec.val_shaping())]
            self._warm(cache, parts, progress)
        augment = OnlineAugment(default_online_transforms(), self.seed, len(self.train_set)) if cfg.online_augment else None
        self.to_device = DeviceBatches(runtime.device, channels_last=channels_last, augment=augment)
        self.val_loader: DeviceLoader | None = None
        if val_set is not None:
            val_batches = BatchSampler(runtime.dist.rank_indices(len(val_set)), cfg.batch_size, drop_last=False)
            self.val_loader = DeviceLoader(make_loader(val_set, val_batches, cfg.workers, runtime.device), self.to_device)
        self._train_loader: DataLoader | None = None

    def train_loader(self, epoch: int, batch_size: int) -> DeviceLoader:
        """The epoch's training batches, augmented per (seed, epoch, index) when online_augment is on."""
        loader = self._train_loader
        if loader is None or loader.batch_sampler.batch_size != batch_size:
            batches = EpochBatches(
                len(self.train_set), self.seed, self.runtime.dist, batch_size,
                drop_last=self.cfg.compile, keyed_by_epoch=self.train_set.keyed_by_epoch,
            )
            loader = self._train_loader = make_loader(self.train_set, batches, self.cfg.workers, self.runtime.device)
        loader.batch_sampler.set_epoch(epoch)
        return DeviceLoader(loader, self.to_device, epoch)

    def _warm(self, cache: DecodedCache, parts: Sequence[tuple[list[Sample], Letterboxed | Scaled]], progress: bool) -> None:
        started = time.perf_counter()
        dist = self.runtime.dist
        built = total = 0
        for samples, shaping in parts:
            # Each rank builds its share; any entry still missing later is built by whoever reads it.
            share = samples[dist.rank :: dist.world_size]
            built += cache.warm(share, shaping, workers=available_cores(), progress=progress and dist.is_main)
            total += len(samples)
        dist.all_sum(torch.zeros(1))  # wait for every rank's share
        log.info("decoded cache %s: %d of %d entries built in %.1f s", cache.root, built, total, time.perf_counter() - started)


def scaled_loader(cache: DecodedCache | None) -> ScaledLoader:
    """Where patch training and its tiled validation get whole decoded images, scaled: the decoded
    cache, or with `train.cache: false` a copy in memory per process."""
    return cache.scaled if cache is not None else MemoryScaledCache()
