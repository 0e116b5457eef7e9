"""2-D point data sets (swiss roll, Gaussian mixture, moons, checkerboard) and distances between point clouds.

Each data set is a function `sample(n, generator) -> [n, 2]` in float32, scaled to roughly unit
spread. Train and test splits are fixed draws from disjoint generator streams of one seed.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch

from sde_lib.analytic import GaussianMixture
from sde_lib.registry import Registry

Tensor = torch.Tensor


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> Tensor:
    """The 2-D swiss roll of Sohl-Dickstein et al. 2015: (t cos t, t sin t) / 5 with
    t ~ U[1.5 pi, 4.5 pi], plus isotropic Gaussian noise of std `noise`."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
    return x + noise * torch.randn(n, 2, generator=generator)


def gaussian_mixture() -> GaussianMixture:
    """Eight Gaussians of std 0.15 on a circle of radius 2 (unequal weights), known density."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    weights = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    return GaussianMixture(weights, means, torch.full((8,), 0.15 ** 2))


def moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles, centred and scaled to unit spread."""
    k = torch.rand(n, generator=generator) < 0.5
    a = math.pi * torch.rand(n, generator=generator)
    upper = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    lower = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    x = torch.where(k[:, None], upper, lower) - torch.tensor([0.5, 0.25])
    return 1.5 * x + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 board spanning [-2, 2]^2."""
    u = torch.rand(n, 2, generator=generator)
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0


_GMM = gaussian_mixture()
DATASETS = Registry("point data set")  # name -> draw(n, generator) -> [n, 2]
for _name, _draw in (("swiss_roll", swiss_roll), ("gmm", lambda n, g=None: _GMM.sample(n, g)),
                     ("moons", moons), ("checkerboard", checkerboard)):
    DATASETS.register(_name)(_draw)


def true_density(name: str) -> Optional[GaussianMixture]:
    return _GMM if name == "gmm" else None


# Data sets whose points carry a class label (the mixture component that drew them).
LABELLED: Dict[str, Callable[[int, Optional[torch.Generator]], Tuple[Tensor, Tensor]]] = {
    "gmm": lambda n, g=None: _GMM.sample(n, g, return_labels=True),
}


def load_points(name: str, n_train: int, n_test: int, seed: int, labels: bool = False) -> Tuple:
    """Fixed train [n_train, 2] and test [n_test, 2] splits of data set `name`; with `labels`,
    also their labels ([n] int64, or None for an unlabelled set): (train, test, train_y, test_y)."""
    if name not in DATASETS:
        raise ValueError(f"config.data.name: unknown point data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    draw = LABELLED.get(name, lambda n, g: (DATASETS[name](n, g), None))  # the same draws either way
    train, train_y = draw(n_train, torch.Generator().manual_seed(seed))
    test, test_y = draw(n_test, torch.Generator().manual_seed(seed + 1_000_003))
    return (train, test, train_y, test_y) if labels else (train, test)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: sqrt(mean over random directions of W2^2 of the 1-D
    projections), with the 1-D W2 from sorted samples (quantiles when sizes differ)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x.double() @ dirs).sort(0).values, (y.double() @ dirs).sort(0).values
    q = torch.linspace(0, 1, max(len(x), len(y)), dtype=torch.float64)
    qx = torch.quantile(px, q, dim=0) if len(x) != len(q) else px
    qy = torch.quantile(py, q, dim=0) if len(y) != len(q) else py
    return ((qx - qy) ** 2).mean().sqrt().item()


def mmd_rbf(x: Tensor, y: Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels
    k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))."""
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.mean()).item()
