"""PNG figures through matplotlib: point clouds, image grids, loss curves."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter(points: torch.Tensor, path: str, title: str = "", reference: Optional[torch.Tensor] = None,
            lim: float = 3.5) -> None:
    """A scatter plot of 2-D points [N, 2], optionally over reference points in grey."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
    ax.scatter(points[:, 0].cpu(), points[:, 1].cpu(), s=2, c="tab:blue", label="samples")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(images: torch.Tensor, path: str, title: str = "", nrow: Optional[int] = None) -> None:
    """A grid of images [N, C, H, W] with values in [0, 1]."""
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(c, ncol * (h + 2), nrow * (w + 2))
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = images[i].clamp(0, 1)
    fig, ax = plt.subplots(figsize=(nrow * w / 32 + 1, ncol * h / 32 + 1))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).cpu().numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def loss_curve(steps: Sequence[int], values: Sequence[float], path: str, title: str = "training loss") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
