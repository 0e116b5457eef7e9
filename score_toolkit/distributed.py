"""Data-parallel training under torchrun: the process group, rank queries, and the sharded network.

Every rank draws the whole global batch (indices, times, noise) from the same CPU generator, exactly
as one process would, and runs the network on its own contiguous rows only (`ShardedNet`). The
outputs are all-gathered, so every rank computes the same global loss, and each rank's gradient is
(1/B) * sum over its own rows; DistributedDataParallel sums these over ranks (`_sum_hook`), giving
the gradient of the mean over all B rows that one process computes. Without torchrun's environment
(WORLD_SIZE unset or 1) nothing here starts a process group and every query answers as rank 0 of 1.

Evaluation and sampling split their batches instead: batch b goes to rank b % world (`my_batches`),
each rank logs its own work (`rank_path`), and the results travel through the process group
(`gather_dict`), never through another rank's files, so ranks on nodes without a shared filesystem
agree.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch
import torch.distributed as dist
from torch import nn


def env_world_size() -> int:
    """WORLD_SIZE from torchrun's environment (1 when unset); readable before the group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else env_world_size()


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, metrics, logs, plots and samples."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for CUDA under torchrun, `device` otherwise."""
    if device.type == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU) when WORLD_SIZE > 1;
    returns whether a group was started."""
    if env_world_size() <= 1 or active():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


@contextlib.contextmanager
def session(device: torch.device):
    """init_from_env for the duration of a run; the group is destroyed after it."""
    started = init_from_env(device)
    try:
        yield
        barrier()  # rank 0 may still be writing its last checkpoint or samples
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_max(value: int) -> int:
    """The largest `value` over all ranks (for flags: any rank's signal stops every rank)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def my_batches(n: int) -> range:
    """The batch indices in [0, n) this rank handles: every b with b % world == rank; all n without
    a process group. The ranks' sets are disjoint and together cover [0, n)."""
    return range(rank(), n, world()) if active() else range(n)


def gather_dict(mine: dict) -> dict:
    """Every rank's `mine` merged into one dict, on every rank (all_gather_object: no shared
    filesystem needed; the keys must be disjoint across ranks). Without a process group: `mine`."""
    if not active():
        return mine
    parts = [None] * world()
    dist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in part.items()}


def rank_path(path: str) -> str:
    """The file this rank writes for `path`: `path` itself in a run of one process, <stem>.rank<r><ext>
    on rank r of several, so that ranks sharing a folder never append to one file."""
    if not active() or world() == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{rank()}{ext}"


def rank_files(path: str) -> list:
    """Every existing file that `rank_path(path)` named in runs of any number of ranks, sorted:
    `path` and each <stem>.rank<r><ext> beside it."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    pattern = re.compile(re.escape(stem) + r"(\.rank\d+)?" + re.escape(ext))
    names = os.listdir(folder or ".") if os.path.isdir(folder or ".") else []
    return sorted(os.path.join(folder, f) for f in names if pattern.fullmatch(f))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _sum_hook(process_group, bucket):
    """DDP's all-reduce without its division by the world size: ranks hold partial sums of one mean."""
    fut = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class ShardedNet(nn.Module):
    """net(x, noise, **cond) on a global batch [B, ...]: this rank runs DDP(net) on rows
    [rank * B/N, (rank + 1) * B/N) and all-gathers the outputs; only its own rows carry gradients."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        self.ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        self.ddp.register_comm_hook(None, _sum_hook)
        self.cond_keys = getattr(net, "cond_keys", None)  # the wrapped network's conditioning

    def forward(self, x: torch.Tensor, noise: torch.Tensor, **cond) -> torch.Tensor:
        n, r = world(), rank()
        rows = slice(r * (x.shape[0] // n), (r + 1) * (x.shape[0] // n))
        out = self.ddp(x[rows], noise[rows], **{k: None if v is None else v[rows] for k, v in cond.items()})
        parts = [torch.empty_like(out, memory_format=torch.contiguous_format) for _ in range(n)]
        dist.all_gather(parts, out.detach().contiguous())
        parts[r] = out
        return torch.cat(parts)


def seed_rank_rng(seed: int, step: int) -> None:
    """Seed this rank's torch RNG (dropout) from (seed, rank, step), so ranks drop different units."""
    torch.manual_seed(hash((seed, rank(), step)) & 0x7FFF_FFFF_FFFF_FFFF)
