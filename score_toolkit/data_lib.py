"""The data a run trains and evaluates on, behind one small interface for points and images.

Samples leave a run in data space (`to_data_space`): float32 points, or uint8 images in [0, 255];
`plot` and `quality` take them in that form. `check_files` finds a run's data files before any
work starts, without reading them.
"""
from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from score_toolkit import features
from score_toolkit import image_data
from score_toolkit.errors import BadFileError, ConfigError, MissingInputError
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

    def to_data_space(self, x: Tensor) -> Tensor:
        """Samples as saved and measured: the points themselves, float32 on the CPU."""
        return x.detach().float().cpu()

    def plot(self, x: Tensor, path: str, title: str = "") -> None:
        """A scatter plot of points [N, 2] over the test points."""
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
        return self.batch_at(self.draw_indices(batch_size, generator), generator)

    def draw_indices(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Which training images a batch holds, [B] int64, drawn with replacement."""
        return torch.randint(0, len(self.train_uint8), (batch_size,), generator=generator)

    def batch_at(self, idx: Tensor, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The training images idx [B] (randomly mirrored with data.random_flip) and their labels."""
        images = self.train_uint8[idx]
        if self.random_flip:
            images = image_data.random_hflip(images, generator)
        return self.scaler(image_data.to_unit_interval(images)), _labels(self.train_labels, idx)

    def sample_shape(self, n: int) -> tuple:
        d = self.config.data  # load_split returns images of exactly this shape
        return (n, d.num_channels, d.image_size, d.image_size)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Model-space samples -> uint8 images."""
        return image_data.to_uint8(self.inverse_scaler(x.detach().float().cpu()).clamp(0, 1))

    to_data_space = to_uint8  # samples as saved and measured: uint8 images [N, C, H, W]

    def plot(self, images: Tensor, path: str, title: str = "") -> None:
        """A grid of the first 64 uint8 images [N, C, H, W]."""
        plotting.image_grid(image_data.to_unit_interval(images[:64]), path, title)

    def plot_by_class(self, images: Tensor, labels: Tensor, path: str, title: str = "", per_class: int = 10) -> None:
        """A grid with one row per class: the first `per_class` images [N, C, H, W] of each label."""
        rows = [images[labels == k][:per_class] for k in range(int(labels.max()) + 1)]
        width = max(len(r) for r in rows)
        blank = torch.zeros((1,) + tuple(images.shape[1:]), dtype=images.dtype)
        grid = torch.cat([torch.cat([r] + [blank] * (width - len(r))) for r in rows])
        plotting.image_grid(image_data.to_unit_interval(grid), path, title, nrow=width)

    def quality(self, samples: Tensor) -> Dict[str, float]:
        """FID / KID / IS of uint8 samples against the configured stats file, when one is configured."""
        if self.config.eval.feature_extractor == "none":
            return {}
        if self._quality_fn is None:  # loaded on first use: `--mode stats` runs before the stats exist
            self._quality_fn = features.quality_fn(self.config)
        return self._quality_fn(samples)

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


MASKS = ("left", "right", "top", "bottom", "center", "random75")


def load_observed(path: str, shape: Tuple[int, int, int]) -> Tensor:
    """uint8 images [N, C, H, W] of the expected shape (C, H, W) from a .png or a .npz ("samples");
    a file that does not read is a BadFileError naming it."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as f:
                images = torch.from_numpy(f["samples"] if "samples" in f else f[f.files[0]])
        else:
            mode = "L" if shape[0] == 1 else "RGB"
            with Image.open(path) as image:
                images = torch.from_numpy(np.array(image.convert(mode)))
            images = images[None] if images.ndim == 2 else images.permute(2, 0, 1)
    except (OSError, ValueError, IndexError, zipfile.BadZipFile) as e:
        raise BadFileError(f"{path}: not a readable {'.npz of uint8 images' if path.endswith('.npz') else 'image'} "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    images = images[None] if images.ndim == 3 else images
    if tuple(images.shape[1:]) != tuple(shape) or images.dtype != torch.uint8:
        raise ValueError(f"config.sampling.observed = {path!r} holds {images.dtype} images of shape "
                         f"{tuple(images.shape[1:])}; the data's images are uint8 of shape {tuple(shape)}")
    return images


def inpainting_mask(spec: str, shape: Tuple[int, int, int]) -> Tensor:
    """The known part [C, H, W] (1 = known): a named half or centre square, "random75" (a fixed random
    quarter of the pixels known), or a .png/.npz mask."""
    C, H, W = shape
    if spec == "random75":  # 3/4 of the pixels hidden, the same ones for every image and run
        hidden = torch.rand(H, W, generator=torch.Generator().manual_seed(0)).flatten().argsort()[:3 * H * W // 4]
        m = torch.zeros(H * W)
        m[hidden] = 1
        return (1 - m.reshape(H, W)).expand(C, H, W).clone()
    if spec in MASKS:
        m = torch.zeros(H, W)
        regions = {"left": (slice(None), slice(0, W // 2)), "right": (slice(None), slice(W // 2, None)),
                   "top": (slice(0, H // 2), slice(None)), "bottom": (slice(H // 2, None), slice(None)),
                   "center": (slice(H // 4, 3 * H // 4), slice(W // 4, 3 * W // 4))}
        m[regions[spec]] = 1  # the named part is hidden ("center": inpaint the centre), the rest known
        return (1 - m).expand(C, H, W).clone()
    if not os.path.isfile(spec):
        raise ValueError(f"config.sampling.mask = {spec!r} is not allowed: must be one of {list(MASKS)} "
                         f"(the part to fill in) or a mask file (.png or .npz, 1 = known)")
    if spec.endswith(".png"):
        mask = load_observed(spec, (1, H, W))[0]
    else:
        try:
            with np.load(spec) as f:
                mask = torch.from_numpy(f[f.files[0]])
        except (OSError, ValueError, IndexError, zipfile.BadZipFile) as e:
            raise BadFileError(f"{spec}: not a readable .npz mask ({str(e).splitlines()[0]})") from e
    if mask.shape[-2:] != (H, W):
        raise ValueError(f"config.sampling.mask = {spec!r} has shape {tuple(mask.shape)}; the images are {(C, H, W)}")
    return (mask > 0).float().expand(C, H, W).clone()


def load_matrix(path: str, d: int) -> Tensor:
    """The observation matrix A [m, d] (float64) of sampling.task = "linear", from a .npz holding "A" (or
    its one array); a file that does not read, or an A that does not act on d values, names itself."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"config.sampling.matrix = {path!r} must name a .npz file holding A [m, {d}] for "
                         "sampling.task = 'linear'")
    try:
        with np.load(path) as f:
            A = torch.from_numpy(np.asarray(f["A"] if "A" in f else f[f.files[0]], dtype=np.float64))
    except (OSError, ValueError, IndexError, zipfile.BadZipFile) as e:
        raise BadFileError(f"{path}: not a readable .npz matrix ({str(e).splitlines()[0]})") from e
    if A.ndim != 2 or A.shape[1] != d or not bool(torch.isfinite(A).all()):
        raise ValueError(f"config.sampling.matrix = {path!r} holds an array of shape {tuple(A.shape)}; A must be "
                         f"a finite matrix [m, {d}] acting on the image's {d} values")
    return A


def _labels(labels: Optional[Tensor], idx: Tensor) -> Dict[str, Tensor]:
    return {} if labels is None else {"y": labels[idx]}


def load(config):
    """The data of config.data.kind: 'points' or 'images'."""
    return PointData(config) if config.data.kind == "points" else ImageData(config)


def check_files(config, splits: Sequence[str]) -> None:
    """Raise MissingInputError naming the file when one of the data files of `splits` ("train",
    "test") is absent or unreadable. Finds them as image_data's loaders do, reads none of them
    (a folder data set is listed, not decoded). The 2-D data sets are drawn, so they always pass."""
    if config.data.kind != "images":
        return
    d = config.data
    name = d.name.lower().replace("-", "_")
    root = d.root or image_data.DEFAULT_ROOTS.get(name)
    if not root:
        raise ConfigError(f"config.data.root = {d.root!r}: {name} has no default location; name the data folder")
    for split in splits:
        try:
            paths = _split_files(name, Path(root), split)
        except FileNotFoundError as e:
            raise MissingInputError(f"{e} (config.data.root = {d.root!r})") from e
        for path in paths:
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise MissingInputError(f"{name}: cannot read {path} ({e.strerror})") from e
        if name not in ("cifar10", "folder"):  # IDX: the header and the length, before any work
            image_data.check_idx(paths[0], image_data.IDX_IMAGES_MAGIC)
            image_data.check_idx(paths[1], image_data.IDX_LABELS_MAGIC)


def _split_files(name: str, root: Path, split: str) -> List[Path]:
    """The files image_data.load_split reads for one split (FileNotFoundError for the first missing)."""
    if name == "cifar10":
        first = image_data.CIFAR_BATCHES[split][0]
        folder = root if (root / first).is_file() else root / "cifar-10-batches-py"
        paths = [folder / b for b in image_data.CIFAR_BATCHES[split]]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"cifar10: no batch file {path}; {image_data.HOW_TO_GET['cifar10']}")
        return paths
    if name == "folder":
        if (root / split).is_dir():
            return image_data.list_image_folder(root / split)[0]
        if split == "train" and not (root / "test").is_dir():
            return image_data.list_image_folder(root)[0]
        raise FileNotFoundError(f"folder: split {split!r} needs the sub-folder {root / split}")
    return [image_data._find_idx(root, stem, name) for stem in image_data.IDX_STEMS[split]]


def check_quality_files(config, keys: Sequence[str] = ("eval.feature_path", "eval.stats_path")) -> None:
    """For image data with config.eval.feature_extractor != "none": raise MissingInputError when
    the feature network or the data's feature statistics (config.eval.feature_path, .stats_path)
    are not files; the message names the --mode that makes each."""
    if config.data.kind != "images" or config.eval.feature_extractor == "none":
        return
    makers = {"eval.feature_path": "classifier" if config.eval.feature_extractor == "classifier" else None,
              "eval.stats_path": "stats"}
    for key in keys:
        path = config.eval[key.split(".")[1]]
        if not os.path.isfile(path):
            maker = makers[key]
            how = f"; make it first with --mode {maker}" if maker else " (the Inception TorchScript file of the FID tools)"
            raise MissingInputError(f"config.{key} = {path!r}: no such file{how}", make_with=maker)
