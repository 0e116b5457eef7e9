"""The data a run trains and evaluates on, behind one small interface for points and images."""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch

from score_toolkit import image_data
import likelihood
from score_toolkit import plotting
from score_toolkit import toy_data

Tensor = torch.Tensor


class PointData:
    """A 2-D toy data set: fixed train and test splits drawn from config.data.name."""

    kind = "points"

    def __init__(self, config):
        self.name = config.data.name
        self.train, self.test, self.train_labels, self.test_labels = toy_data.load_points(
            self.name, config.data.n_train, config.data.n_test, config.seed, labels=True)
        self.true_density = toy_data.true_density(self.name)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        """batch_size training points drawn with replacement by `generator`, and their conditioning:
        {"y": class labels [B]} when the data set has labels, else {}."""
        idx = torch.randint(0, len(self.train), (batch_size,), generator=generator)
        return self.train[idx], _labels(self.train_labels, idx)

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

    def nll(self, sde, score_fn, start: int, stop: int, e, seed: int, device=None) -> Tuple[Tensor, Tensor, int]:
        """(NLL in nats [B], bits/dim [B], nfe) of test points start:stop, computed on `device`. The
        data are continuous, so bits/dim = nats / (D ln 2), with no dequantization."""
        x = self.test[start:stop].to(device)
        logp, _, nfe = likelihood.log_likelihood(sde, score_fn, x, divergence=e.divergence, n_probes=e.n_probes,
                                                 rtol=e.nll_rtol, atol=e.nll_atol, eps=e.nll_eps, seed=seed)
        nats = -logp.double().cpu()
        return nats, likelihood.bits_from_nats(nats, x[0].numel()), nfe


class ImageData:
    """Images from image_data.load_split, scaled to [-1, 1] (config.data.centered) or [0, 1].

    Each split is read on first use, so that sampling from trained weights needs no data files.
    """

    kind = "images"

    def __init__(self, config):
        d = config.data
        self.centered, self.random_flip = d.centered, d.random_flip
        self.scaler, self.inverse_scaler = image_data.get_scaler(d.centered), image_data.get_inverse_scaler(d.centered)
        self.true_density, self.config, self._quality_fn = None, config, None
        self._splits: Dict[str, Tuple[Tensor, Tensor]] = {}

    def _split(self, split: str) -> Tuple[Tensor, Tensor]:
        """(uint8 images [N, C, H, W], labels [N]) of "train" or "test", read once."""
        if split not in self._splits:
            d = self.config.data
            self._splits[split] = image_data.load_split(
                d.name, split=split, root=d.root or None, image_size=d.image_size,
                num_channels=d.num_channels, pad_to=d.pad_to or None)
        return self._splits[split]

    train_uint8 = property(lambda self: self._split("train")[0])
    train_labels = property(lambda self: self._split("train")[1])
    test_uint8 = property(lambda self: self._split("test")[0])
    test_labels = property(lambda self: self._split("test")[1])

    @functools.cached_property
    def test(self) -> Tensor:
        """The test images in model space."""
        return self.scaler(image_data.to_unit_interval(self.test_uint8))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        """A batch of training images in model space, and {"y": their class labels [B]}."""
        idx = torch.randint(0, len(self.train_uint8), (batch_size,), generator=generator)
        images = self.train_uint8[idx]
        if self.random_flip:
            images = image_data.random_hflip(images, generator)
        return self.scaler(image_data.to_unit_interval(images)), _labels(self.train_labels, idx)

    def sample_shape(self, n: int) -> tuple:
        d = self.config.data  # load_split returns images of exactly this shape
        return (n, d.num_channels, d.image_size, d.image_size)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Model-space samples -> uint8 images."""
        return image_data.to_uint8(self.inverse_scaler(x).clamp(0, 1))

    def plot(self, x: Tensor, path: str, title: str = "") -> None:
        plotting.image_grid(self.inverse_scaler(x[:64]).clamp(0, 1), path, title)

    def quality(self, samples: Tensor) -> Dict[str, float]:
        """FID / KID / IS against the configured stats file, when one is configured."""
        if self.config.eval.feature_extractor == "none":
            return {}
        if self._quality_fn is None:  # loaded on first use: `--mode stats` runs before the stats exist
            from score_toolkit import features
            self._quality_fn = features.quality_fn(self.config)
        return self._quality_fn(self.to_uint8(samples))

    def true_nll_nats(self, x: Tensor) -> Optional[Tensor]:
        return None

    def nll(self, sde, score_fn, start: int, stop: int, e, seed: int, device=None) -> Tuple[Tensor, Tensor, int]:
        """(NLL in nats [B], bits/dim [B], nfe) of test images start:stop, uniformly dequantized, on `device`."""
        k = self.test_uint8[start:stop].to(device)
        bpd, _, nfe = likelihood.bits_per_dim(sde, score_fn, k, centered=self.centered, seed=seed,
                                              divergence=e.divergence, n_probes=e.n_probes,
                                              rtol=e.nll_rtol, atol=e.nll_atol, eps=e.nll_eps)
        bpd = bpd.double().cpu()
        return likelihood.nats_from_bits(bpd, k[0].numel()), bpd, nfe


def _labels(labels: Optional[Tensor], idx: Tensor) -> Dict[str, Tensor]:
    return {} if labels is None else {"y": labels[idx]}


def load(config):
    """The data of config.data.kind: 'points' or 'images'."""
    return PointData(config) if config.data.kind == "points" else ImageData(config)
