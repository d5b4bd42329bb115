"""Process groups, per-rank seeds and deterministic data sharding.

The same entry point runs on one process or under `torchrun --nproc_per_node N`: torchrun sets
`RANK`/`WORLD_SIZE`/`LOCAL_RANK`, and `init_distributed` then joins a gloo (CPU) or NCCL (GPU)
group. Data order is a function of `(seed, epoch)` only, and noise of `(seed, rank, step)`, so a
resumed run sees exactly the batches and noise of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

# stream tags for `derive_seed`, so that data order, noise and init never share a stream
SEED_INIT, SEED_DATA, SEED_NOISE, SEED_GLOBAL, SEED_SAMPLE = range(5)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if `WORLD_SIZE > 1` (gloo on CPU, NCCL on CUDA).

    `device` forces `"cpu"`/`"cuda"`; by default CUDA is used when available, one GPU per
    local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def shutdown_distributed(wait_for_all: bool = False) -> None:
    """Destroy the process group; `wait_for_all` (after a normal end, never after an error on
    one rank) first waits until every rank is done: a rank that tears the group down while
    another still uses it can abort the process at exit ("terminate called without an
    active exception")."""
    if dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from integers via numpy's `SeedSequence` (well mixed, order-sensitive)."""
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed entropy must be non-negative integers, got {entropy}")
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]) >> 1


def all_reduce_mean(value: Tensor, info: DistInfo) -> Tensor:
    """Mean over ranks (identity on one process)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def parameter_hash(module: nn.Module) -> str:
    """sha256 over the bytes of every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ShardedBatchSampler:
    """An endless, resumable stream of per-rank index batches.

    Global batch `k` belongs to epoch `k // steps_per_epoch`; each epoch is a permutation of the
    dataset drawn from `derive_seed(seed, SEED_DATA, epoch)` (identical on every rank), cut into
    `steps_per_epoch = len // global_batch` global batches (the remainder is dropped, as in
    `DistributedSampler(drop_last=True)`); rank `r` takes the `r`-th slice of `global_batch /
    world_size` indices of each. `start` is the number of global batches already consumed.
    """

    def __init__(
        self,
        dataset_len: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"data.batch_size={global_batch} must be divisible by the world size {world_size}"
            )
        if dataset_len < global_batch:
            raise ValueError(
                f"data.batch_size={global_batch} exceeds the dataset size {dataset_len}"
            )
        self.dataset_len, self.global_batch = dataset_len, global_batch
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = dataset_len // global_batch
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, SEED_DATA, epoch))
        return torch.randperm(self.dataset_len, generator=gen)

    def indices(self, k: int) -> list[int]:
        """The indices rank `self.rank` sees at global batch `k`."""
        epoch, i = divmod(k, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.permutation(epoch)
        lo = i * self.global_batch + self.rank * self.local_batch
        return self._perm[lo : lo + self.local_batch].tolist()

    def position(self, k: int) -> dict[str, int]:
        epoch, i = divmod(k, self.steps_per_epoch)
        return {"batches_consumed": k, "epoch": epoch, "batch_in_epoch": i}

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.indices(k)
            k += 1
