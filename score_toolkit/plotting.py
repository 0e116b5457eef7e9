"""PNG figures through matplotlib: point clouds, image grids, loss curves."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
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


def moving_median(values: Sequence[float], half_width: int) -> np.ndarray:
    """The median of values[i - h : i + h + 1] at each i (h = half_width), the window cut at the ends:
    centred, so it does not lag a falling loss, and robust to spikes."""
    v, h = np.asarray(values, dtype=np.float64), max(int(half_width), 0)
    if h == 0 or len(v) <= 2 * h:
        return np.array([np.median(v[max(0, i - h):i + h + 1]) for i in range(len(v))])
    out = np.empty_like(v)
    out[h:len(v) - h] = np.median(np.lib.stride_tricks.sliding_window_view(v, 2 * h + 1), axis=1)
    for i in list(range(h)) + list(range(len(v) - h, len(v))):
        out[i] = np.median(v[max(0, i - h):i + h + 1])
    return out


def smoothing_half_width(n: int) -> int:
    """The moving median's half width for n logged points: ~1/100 of them on long runs, at least 2 on
    short ones (the default run logs 30 points), and never a window wider than ~1/3 of the points."""
    return min(max(2, n // 100), (n - 1) // 6)


def loss_curve(steps: Sequence[int], values: Sequence[float], path: str, title: str = "training loss") -> None:
    """The logged loss (faint) and its moving median (`smoothing_half_width`; bold): linear steps,
    log loss with ticks at 1, 2, 5 (and 3 within a decade and a half) times powers of ten."""
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = [(s, v) for s, v in zip(steps, values) if v > 0 and math.isfinite(v)]
    if positive:
        xs, ys = zip(*positive)
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8, label="logged loss")
        ax.plot(xs, moving_median(ys, smoothing_half_width(len(ys))), color="tab:blue", linewidth=2, label="moving median")
        ax.set_yscale("log")
        decades = math.log10(max(ys) / min(ys)) if min(ys) < max(ys) else 0.0
        subs = (1.0, 2.0, 3.0, 5.0) if decades < 1.5 else (1.0, 2.0, 5.0) if decades < 4 else (1.0,)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
