"""Will a training batch fit? A measured estimate, made before any large allocation.

A training step keeps, per sample, the activations autograd saves for the backward pass; that
grows linearly with the batch while the weights, their gradients and Adam's two moments do not. Both
are measured on the network itself: the bytes of the tensors autograd saves in one forward pass at
batch 1 and at batch 2 (their difference is one sample's share), and the parameters' bytes. The
estimate of a step at batch B is B * per_sample + 4 * parameter bytes, against the memory the device
has free now (CUDA: `torch.cuda.mem_get_info`; CPU: MemAvailable of /proc/meminfo).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from score_toolkit.errors import ConfigError


def saved_bytes(net: torch.nn.Module, shape: Sequence[int], batch: int) -> int:
    """Bytes of the tensors autograd saves in one forward pass net(x, c_noise) of a batch [batch, *shape]."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    device = next(net.parameters()).device
    x, c = torch.zeros((batch, *shape), device=device), torch.full((batch,), 0.5, device=device)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, c)
    return total


def step_bytes(net: torch.nn.Module, shape: Sequence[int], batch: int) -> int:
    """The estimated memory of one training step at `batch` (module docstring)."""
    per_sample = max(saved_bytes(net, shape, 2) - saved_bytes(net, shape, 1), 0)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return int(batch * per_sample + 4 * params)


def free_bytes(device: torch.device) -> Optional[int]:
    """The memory `device` has free now, or None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def lower_bound(shape: Sequence[int], batch: int) -> int:
    """Bytes a training step needs at the least: eight float32 tensors of the batch's size (data, noise,
    x_t, the output, their gradients): the cheap test of whether `step_bytes` is worth measuring."""
    n = 1
    for d in shape:
        n *= d
    return 8 * 4 * batch * n


def check_batch_fits(net: torch.nn.Module, shape: Sequence[int], batch: int, device: torch.device, key: str) -> None:
    """ConfigError naming `key` when a training step at `batch` needs more memory than `device` has free
    (`step_bytes`), measured only when even `lower_bound` is a noticeable share (1%) of what is free."""
    free = free_bytes(device)
    if free is None or lower_bound(shape, batch) < 0.01 * free:
        return
    need = step_bytes(net, shape, batch)
    if need > free:
        raise ConfigError(f"config.{key} = {batch} is not allowed: a training step at that batch needs about "
                          f"{gib(need)} ({need / batch / 2 ** 10:.3g} KiB per sample, measured on the network), and "
                          f"{device} has {gib(free)} free; use a batch of at most {int(batch * free / need)}")
