"""Where a run executes: device choice, mixed precision, seeding and the distributed group,
resolved once per run into a `Runtime`."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from segpipe.errors import SegpipeError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; anything else is passed to torch.device.

    Args:
        setting: where the user chose `name` (`serve.device`, `--device`), for error messages.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SegpipeError(f"{setting}: {name!r} is not a device ({exc}); use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegpipeError(f"{setting} is {name} but no CUDA GPU is visible; set {setting} to auto or cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast settings: bf16 on CUDA where supported, else fp16 with a gradient scaler; fp32 elsewhere."""

    dtype: torch.dtype | None
    use_scaler: bool

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(dtype=None, use_scaler=False)
        if torch.cuda.is_bf16_supported():
            return cls(dtype=torch.bfloat16, use_scaler=False)
        return cls(dtype=torch.float16, use_scaler=True)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """Give every DataLoader worker its own numpy/random stream (torch seeds each worker already)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a `torchrun` group (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Join the process group that torchrun describes in WORLD_SIZE/RANK (NCCL on GPUs, gloo on CPU)."""
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of an epoch's sample order; every rank gets the same count (wrapping)."""
        if not self.enabled:
            return indices
        per_rank = -(-len(indices) // self.world_size)
        padded = (indices * (1 + per_rank * self.world_size // max(len(indices), 1)))[: per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def rank_indices(self, count: int) -> list[int]:
        """This rank's every world_size-th index of range(count), for validation (no padding)."""
        return list(range(count))[self.rank :: self.world_size]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class Runtime:
    """Device, precision and distributed group of one run, resolved once and passed down."""

    device: torch.device
    precision: Precision
    dist: Distributed

    @classmethod
    def resolve(cls, device_name: str) -> Runtime:
        """Pick the device (`auto`, `cpu`, `cuda`, ...) and join torchrun's group if there is one."""
        device = resolve_device(device_name)
        return cls(device=device, precision=Precision.for_device(device), dist=Distributed.from_env(device))
