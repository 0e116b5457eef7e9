"""The data a run trains and evaluates on, behind one small interface for points and images."""
from __future__ import annotations

from typing import Dict, Optional

import torch

import plotting
import toy_data

Tensor = torch.Tensor


class PointData:
    """A 2-D toy data set: fixed train and test splits drawn from config.data.name."""

    kind = "points"

    def __init__(self, config):
        self.name = config.data.name
        self.train, self.test = toy_data.load_points(self.name, config.data.n_train, config.data.n_test, config.seed)
        self.true_density = toy_data.true_density(self.name)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """batch_size training points drawn with replacement by `generator`."""
        return self.train[torch.randint(0, len(self.train), (batch_size,), generator=generator)]

    def sample_shape(self, n: int) -> tuple:
        return (n, self.train.shape[1])

    def plot(self, x: Tensor, path: str, title: str = "") -> None:
        plotting.scatter(x, path, title, reference=self.test)

    def quality(self, samples: Tensor) -> Dict[str, float]:
        """Distances between samples and held-out data (0 for identical distributions)."""
        n = min(len(samples), len(self.test))
        return {"sliced_wasserstein": toy_data.sliced_wasserstein(samples[:n], self.test[:n]),
                "mmd_rbf": toy_data.mmd_rbf(samples[:n], self.test[:n])}

    def true_nll_nats(self, x: Tensor) -> Optional[Tensor]:
        """-log p_data(x) per point where the density is known, else None."""
        return None if self.true_density is None else -self.true_density.log_prob(x.double())


def load(config):
    if config.data.kind == "points":
        return PointData(config)
    raise ValueError(f"config.data.kind = {config.data.kind!r}: only 'points' is available in this build")
