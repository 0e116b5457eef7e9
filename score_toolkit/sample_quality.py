"""Sample-quality metrics (FID, KID, Inception Score) and the feature extractors they run on.

An extractor is a callable: images [B, C, H, W] (uint8 levels, or float in [0, 1]) ->
features float32 [B, D]; it also has `probabilities(images) -> [B, K]`,
`features_and_probabilities(images)`, a `name` (stored in statistics files) and
`metric_label(metric)`. Two kinds:
  * InceptionFeatures: the TorchScript "inception-2015-12-05" network shared by FID tools
    (2048-d pool features), loaded from a local path; its numbers compare with published FIDs.
  * ClassifierFeatures: a small CNN trained here on the data set itself; its metrics are
    labelled "FID (classifier features: <name>)" and compare only with each other.
"""
from __future__ import annotations

import hashlib
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from score_toolkit import checkpoints, image_data
from score_toolkit.errors import BadFileError

# --------------------------------------------------------------------------- statistics


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mu [D], sigma [D, D]) in float64; sigma is the unbiased sample
    covariance sum_i (f_i - mu)(f_i - mu)^T / (N - 1), as FID tools use."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features of shape {features.shape}: need [N, D] with N >= 2")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


@dataclass
class FeatureStats:
    """Gaussian summary of a feature set, plus the features themselves when KID needs them."""

    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    num_samples: int
    extractor_name: str
    features: Optional[np.ndarray] = None  # [N, D] float32

    @classmethod
    def from_features(cls, features, extractor_name: str, keep_features: bool = True):
        mu, sigma = feature_statistics(features)
        kept = np.asarray(features, dtype=np.float32) if keep_features else None
        return cls(mu, sigma, len(features), extractor_name, kept)

    def save(self, path) -> None:
        """Write an .npz: mu, sigma, num_samples, extractor_name (and features if kept)."""
        arrays = dict(mu=self.mu, sigma=self.sigma, num_samples=np.int64(self.num_samples),
                      extractor_name=np.str_(self.extractor_name))
        if self.features is not None:
            arrays["features"] = self.features
        with open(path, "wb") as f:  # an open file keeps np.savez from appending ".npz"
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file {path} does not exist; compute it from the "
                                    f"reference images with the same feature extractor")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"mu", "sigma", "num_samples", "extractor_name"} - set(data.files)
                if missing:
                    raise BadFileError(f"{path}: not a statistics file, missing {sorted(missing)}")
                features = data["features"] if "features" in data.files else None
                return cls(data["mu"], data["sigma"], int(data["num_samples"]),
                           str(data["extractor_name"]), features)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            if isinstance(e, BadFileError):
                raise
            raise BadFileError(f"{path}: not a readable statistics file ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- FID, KID, IS


def _check_psd(values: np.ndarray, arg: str) -> None:
    """Eigenvalues of a covariance may dip below 0 by rounding only."""
    if values.min() < -1e-6 * max(values.max(), 1e-300):
        raise ValueError(f"{arg} is not positive semi-definite (eigenvalue {values.min():.3g})")


def _psd_sqrt(matrix: np.ndarray, arg: str) -> np.ndarray:
    """Symmetric square root of a covariance by eigh; rounding-level negative eigenvalues -> 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    _check_psd(values, arg)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of N(mu1, S1) and N(mu2, S2):
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as sum_i sqrt(lambda_i) over the eigenvalues of the symmetric
    PSD matrix M = S1^(1/2) S2 S1^(1/2), which is similar to S1 S2. Why this route rather than
    scipy.linalg.sqrtm(S1 @ S2): symmetric eigensolvers are backward stable and give real,
    non-negative spectra by construction, so no eps*I offset is needed when S1 S2 is singular
    (N < D, as with 2048-d features of few samples) and no imaginary parts have to be discarded.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[0]
    for arg, value, shape in (("mu2", mu2, (dim,)), ("sigma1", sigma1, (dim, dim)),
                              ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{arg} has shape {value.shape}, expected {shape} (mu1 is [{dim}])")
    root1 = _psd_sqrt(sigma1, "sigma1")
    _check_psd(np.linalg.eigvalsh((sigma2 + sigma2.T) / 2), "sigma2")
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_from_features(features1, features2) -> float:
    """Frechet distance between the Gaussian fits of two feature sets [N1, D], [N2, D]."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """Frechet distance of two FeatureStats, refusing stats from different extractors."""
    if stats1.extractor_name != stats2.extractor_name:
        raise ValueError(f"statistics from different extractors: {stats1.extractor_name!r} vs "
                         f"{stats2.extractor_name!r}")
    return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples [m, d] with k(a, b) = (a.b / d + 1)^3:
    sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] / (m(m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2."""
    m, d = x.shape

    def kernel(a, b):
        base = a @ b.T / d + 1
        return base * base * base  # ~5x faster than ** 3, which goes through pow()

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m ** 2)


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance: mean and std over `num_subsets` random subsets (drawn without
    replacement, each of min(subset_size, N1, N2) rows of each set) of polynomial_mmd2."""
    x = np.asarray(features1, dtype=np.float64)
    y = np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features of shapes {x.shape} and {y.shape}: need [N1, D] and [N2, D]")
    m = min(subset_size, len(x), len(y))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"subset size {m} (subset_size={subset_size}, N1={len(x)}, N2={len(y)}) "
                         f"and num_subsets={num_subsets}: need >= 2 and >= 1")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(x[rng.choice(len(x), m, replace=False)],
                              y[rng.choice(len(y), m, replace=False)]) for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score(probs=None, *, logits=None, splits: int = 10) -> Tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) with p(y) the mean prediction, computed on `splits`
    consecutive parts of the N predictions [N, K]; returns the mean and std over the parts.
    Give class probabilities or (more accurate for confident predictions) logits."""
    if (probs is None) == (logits is None):
        raise ValueError("give exactly one of probs or logits")
    with np.errstate(divide="ignore"):
        log_p = (torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
                 if logits is not None else np.log(np.asarray(probs, dtype=np.float64)))
    n = len(log_p)
    if not 1 <= splits <= n:
        raise ValueError(f"splits={splits} with {n} predictions: need 1 <= splits <= N")
    scores = []
    for i in range(splits):
        part_log = log_p[i * n // splits:(i + 1) * n // splits]
        part = np.exp(part_log)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = part * (part_log - np.log(part.mean(axis=0)))
        # A class with p(y|x) = 0 adds 0 * log 0 = 0 (the formula above gives nan there).
        scores.append(math.exp(np.where(part > 0, terms, 0.0).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------- extractors


def as_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] uint8, or float in [0, 1] (rounded to levels as a saved PNG would be),
    -> uint8 [B, 3, H, W]; one channel is repeated to three."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images of shape {tuple(images.shape)}: need [B, 1 or 3, H, W]")
    if images.dtype != torch.uint8:
        images = image_data.to_uint8(images)
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


class InceptionFeatures:
    """The TorchScript Inception-v3 of the FID tools (e.g. inception-2015-12-05.pt of the
    StyleGAN2-ADA metrics), read from a local file; nothing is downloaded.

    The network takes uint8 levels [B, 3, H, W] and resizes to 299x299 itself, so images are
    passed at their own size (as StyleGAN/EDM do, whose FIDs these then match). Called with
    return_features=True it gives the 2048-d pool features; with no_output_bias=True the
    softmax over its 1008 classes, which Inception Score uses.
    """

    name = "inception-2015-12-05"
    feature_dim = 2048

    def __init__(self, path, device="cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception network file {path} does not exist; place the "
                                    f"TorchScript file inception-2015-12-05.pt there")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is this file's format
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:  # e.g. a plain state_dict such as pytorch-fid's .pth
            raise ValueError(f"{path} is not a TorchScript archive ({err}); expected the "
                             f"TorchScript Inception network inception-2015-12-05.pt") from err
        self.device = torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = as_uint8_rgb(images).to(self.device)
        return self.net(images, return_features=True).reshape(len(images), -1).float()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        images = as_uint8_rgb(images).to(self.device)
        return self.net(images, no_output_bias=True).float()

    def features_and_probabilities(self, images: torch.Tensor):
        # The file offers features and probabilities as separate calls only.
        return self(images), self.probabilities(images)

    def metric_label(self, metric: str) -> str:
        return metric


class SmallClassifier(nn.Module):
    """Conv net: 3x3 conv + ReLU + 2x2 max-pool twice, a third 3x3 conv + ReLU, adaptive average
    pooling to a 4x4 grid (any image size), an embedding layer (its ReLU output is the
    feature vector [B, embed_dim]) and a linear classifier. Input uint8 [B, C, H, W] or float
    in [0, 1], mapped to [-1, 1] inside.
    Why: max-pooling rather than strided convolutions trained ~10x faster per step on CPU here;
    a 4x4 grid rather than global pooling keeps where things are (Fashion-MNIST test accuracy
    after 600 steps: 84% vs 75%)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 embed_dim: int = 128):
        super().__init__()
        self.arch = dict(in_channels=in_channels, num_classes=num_classes, width=width,
                         embed_dim=embed_dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.embed_layer = nn.Sequential(nn.Linear(4 * w * 16, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = image_data.to_unit_interval(images) if images.dtype == torch.uint8 else images.float()
        return self.embed_layer(self.body(2 * x - 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


def weights_fingerprint(net: nn.Module) -> str:
    """First 12 hex digits of a SHA-256 over the state_dict, to tell classifiers apart."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class ClassifierFeatures:
    """Extractor over a SmallClassifier: features = its embedding, probabilities = softmax.
    Its `name` carries a fingerprint of the weights, so statistics from another classifier
    (even one trained on the same data) are refused by fid_from_stats."""

    def __init__(self, net: SmallClassifier, name: str, test_accuracy: float, device="cpu"):
        self.net = net.to(device).eval()
        self.name = f"classifier:{name}:{weights_fingerprint(net)}"
        self.data_name = name
        self.test_accuracy = test_accuracy
        self.feature_dim = net.arch["embed_dim"]
        self.device = torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # Float samples are rounded to levels like the uint8 data they are compared with.
        if images.dtype != torch.uint8:
            images = image_data.to_uint8(images)
        return self.net.embed(images.to(self.device))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net.head(self(images)), dim=1)

    def features_and_probabilities(self, images: torch.Tensor):
        features = self(images)
        return features, torch.softmax(self.net.head(features), dim=1)

    def metric_label(self, metric: str) -> str:
        return f"{metric} (classifier features: {self.data_name})"


@torch.no_grad()
def classifier_accuracy(net: nn.Module, images, labels, batch_size: int = 500) -> float:
    """Fraction of `images` whose argmax logit equals the label (run on the net's device)."""
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        predicted = net(images[i:i + batch_size].to(device)).argmax(1).cpu()
        correct += int((predicted == labels[i:i + batch_size]).sum())
    return correct / len(images)


def train_classifier(images, labels, test_images, test_labels, *, steps: int = 3000,
                     batch_size: int = 128, seed: int = 0, lr: float = 1e-3, width: int = 32,
                     embed_dim: int = 128, random_flip: bool = False,
                     num_classes: Optional[int] = None, device="cpu"
                     ) -> Tuple[SmallClassifier, float]:
    """Train a SmallClassifier with Adam on uint8 images [N, C, H, W] and int64 labels [N];
    returns the net (in eval mode, on `device`) and its accuracy on the test set.
    Seeded: the same seed gives the same net (on one device and thread count)."""
    num_classes = num_classes or int(max(labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global RNG
        torch.manual_seed(seed)
        net = SmallClassifier(images.shape[1], num_classes, width, embed_dim).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    batches = image_data.iterate_batches(images, labels, batch_size, seed=seed, shuffle=True,
                                         random_flip=random_flip, num_epochs=None)
    net.train()
    for _, (x, y) in zip(range(steps), batches):
        loss = F.cross_entropy(net(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval(), classifier_accuracy(net, test_images, test_labels)


def save_classifier(path, net: SmallClassifier, name: str, test_accuracy: float) -> None:
    """One file: architecture args, state_dict, test accuracy and data name (weights_only-safe)."""
    torch.save({"arch": dict(net.arch), "state_dict": net.state_dict(), "name": name,
                "test_accuracy": float(test_accuracy)}, path)


def load_classifier(path, device="cpu") -> ClassifierFeatures:
    """Read a save_classifier file (with torch.load(weights_only=True)) as an extractor."""
    saved = checkpoints.load_file(path, ("arch", "state_dict", "name", "test_accuracy"), "classifier",
                                  "train one first (sample_quality.train_classifier + save_classifier)", device)
    net = SmallClassifier(**saved["arch"])
    net.load_state_dict(saved["state_dict"])
    return ClassifierFeatures(net, saved["name"], saved["test_accuracy"], device)


# --------------------------------------------------------------------------- streaming


@torch.no_grad()
def compute_features(extractor, image_batches: Iterable, with_probs: bool = False):
    """Run `extractor` over an iterable of image batches [B, C, H, W] (or (images, labels)
    pairs) -> features float32 numpy [N, D], and probabilities [N, K] when with_probs."""
    features, probs = [], []
    for batch in image_batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if with_probs:
            batch_features, batch_probs = extractor.features_and_probabilities(images)
            probs.append(batch_probs.double().cpu().numpy())
        else:
            batch_features = extractor(images)
        features.append(batch_features.float().cpu().numpy())
    if not features:
        raise ValueError("image_batches yielded no batches")
    features = np.concatenate(features)
    return (features, np.concatenate(probs)) if with_probs else features


def quality_report(extractor, image_batches: Iterable, reference: FeatureStats, *,
                   kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                   seed: int = 0) -> dict:
    """FID, KID (when `reference` kept its features) and IS of generated images against
    reference statistics, keyed by the extractor's metric labels (e.g. "FID", or
    "FID (classifier features: fashion_mnist)")."""
    features, probs = compute_features(extractor, image_batches, with_probs=True)
    stats = FeatureStats.from_features(features, extractor.name)
    label = extractor.metric_label
    report = {label("FID"): fid_from_stats(stats, reference)}
    if reference.features is not None:
        report[label("KID")], report[label("KID std")] = kid(
            features, reference.features, kid_subsets, kid_subset_size, seed)
    report[label("IS")], report[label("IS std")] = inception_score(
        probs, splits=min(is_splits, len(probs)))
    return report
