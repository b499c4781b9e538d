"""Where a run executes: device choice, mixed precision, seeding and the distributed group,
resolved once per run into a `Runtime`."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from segpipe.errors import SegpipeError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no GPU leases; auto takes cuda:0
    fcntl = None

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "SEGPIPE_GPU_LOCK_DIR"
# Seconds between two looks for a free GPU while all are leased.
LEASE_POLL = 5.0


def resolve_device(name: str, setting: str = "train.device", lease: bool = False) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; anything else is passed to torch.device.

    Args:
        setting: where the user chose `name` (`serve.device`, `--device`), for error messages.
        lease: with `auto` on CUDA, take a GPU no other segpipe run holds (`lease_gpu`), so that
            parallel runs (`dvc queue start -j N`) spread over the GPUs instead of all using GPU 0.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", auto_gpu_index(lease))
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


def auto_gpu_index(lease: bool) -> int:
    """The GPU `auto` means: torchrun's LOCAL_RANK; GPU 0 of what CUDA_VISIBLE_DEVICES shows (the
    user or the cluster's scheduler chose it); else a leased GPU (or 0 when not leasing)."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or not lease or fcntl is None:
        return 0
    return lease_gpu(torch.cuda.device_count())


_held: tuple[int, int] | None = None  # (GPU index, lock file descriptor), kept open until exit


def lease_dir() -> Path:
    """Where the per-GPU lock files live: $SEGPIPE_GPU_LOCK_DIR, else one folder in the system's
    temporary directory, shared by every user's runs on this machine."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "segpipe-gpu-locks")


def lease_gpu(count: int) -> int:
    """Take the first of `count` GPUs that no other segpipe process holds, and hold it until this
    process exits: an exclusive `flock` on `<lease_dir>/gpu<K>.lock`, which the OS releases
    when the process ends, however it ends (SIGKILL, out of memory), so no lease outlives its run.

    While every GPU is held, wait for one (running two trainings on one GPU risks running it out
    of memory); an explicit `cuda:K` device shares GPU K instead.
    """
    global _held
    if _held is not None:
        return _held[0]
    folder = lease_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by all users, like /tmp (fails harmlessly if not ours)
        folder.chmod(0o1777)
    waiting_since = None
    while True:
        for index in range(count):
            fd = _try_lock(folder / f"gpu{index}.lock")
            if fd is not None:
                _held = (index, fd)
                log.info("using GPU %d of %d (lease %s)", index, count, folder / f"gpu{index}.lock")
                return index
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.warning(
                "all %d GPUs are held by other segpipe runs (%s); waiting for one to be free "
                "(set the device to cuda:K to share GPU K instead)", count, _holders(folder, count)
            )
        time.sleep(LEASE_POLL)


def _try_lock(path: Path) -> int | None:
    """An open descriptor of `path` holding an exclusive lock on it, or None if another process
    holds it. The holder writes its pid into the file, for the message of who holds what."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: locking needs no write access
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holders(folder: Path, count: int) -> str:
    pids = []
    for index in range(count):
        with contextlib.suppress(OSError):
            pids.append(f"GPU {index}: pid {(folder / f'gpu{index}.lock').read_text().strip() or '?'}")
    return ", ".join(pids)


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
            if device.type == "cuda":  # NCCL's own collectives (barrier) use the current device
                torch.cuda.set_device(device)
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
        device = resolve_device(device_name, lease=True)
        return cls(device=device, precision=Precision.for_device(device), dist=Distributed.from_env(device))
