"""Noise-conditional classifiers p(y | x_t, t) for classifier guidance (`samplers.guidance`).

A classifier sees noisy data x_t = alpha(t) x_0 + sigma(t) z, z ~ N(0, I), t ~ U(eps, T), and is
trained by cross-entropy on the clean sample's label; its log-softmax gradient in x then guides
an unconditional score toward a class:

    s(x, t, y) = s(x, t) + c grad_x log p(y | x, t).

Two small networks, both called as net(x, c_noise) -> logits [B, K]:
  * "points": an MLP for [B, D] point data,
  * "images": a conv net for [B, C, H, W] images,
each conditioned on the SDE's noise label c_noise = `models.noise_label(sde, t)` (999 t for VP-type
SDEs, sigma for VE, embedded as log sigma) through the networks' sinusoidal embedding.
`classifier_logits_fn(net, sde)` is the one place that turns (x, t) into the network's inputs:
c_noise, and the input scale c_in = 1 / sqrt(alpha^2 + sigma^2) (EDM's, for data of unit scale),
which keeps VE's x_t, whose std grows to sigma_max, at O(1).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.embeddings import sinusoidal_embedding
from models.precond import noise_label
from sde_lib import SDE, append_dims
from score_toolkit import checkpoints
from score_toolkit.checkpoints import atomic_save
from sde_lib.checks import check_labels, check_one_of, check_positive, check_positive_int

Tensor = torch.Tensor
KINDS = ("points", "images")
EVAL_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # times t / T at which accuracy is reported

__all__ = ["KINDS", "PointClassifier", "ImageClassifier", "build_noisy_classifier", "classifier_logits_fn",
           "noisy_accuracy", "train_noisy_classifier", "save_noisy_classifier", "load_noisy_classifier"]


def _embed_label(c_noise: Tensor, conditioning: str, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] of the noise label: of 999 t as it is, of sigma by its log
    (sigma spans four orders of magnitude under VE)."""
    label = torch.log(c_noise.double()) if conditioning == "sigma" else c_noise
    return sinusoidal_embedding(label, dim)


class PointClassifier(nn.Module):
    """x [B, D], c_noise [B] -> logits [B, num_classes].

    e = MLP(sinusoidal(c_noise)); h = W_in x + e; `num_layers` residual blocks
    h <- h + W2 SiLU(W1 SiLU(h) + E_l e); logits = W_out SiLU(h). SiLU keeps grad_x smooth for guidance.
    """

    def __init__(self, num_classes: int, dim: int = 2, hidden: int = 128, num_layers: int = 2,
                 embedding_dim: int = 64, conditioning: str = "time"):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("dim", dim), ("hidden", hidden),
                        ("num_layers", num_layers), ("embedding_dim", embedding_dim)):
            check_positive_int(v, name)
        check_one_of("conditioning", conditioning, ("time", "sigma"))
        self.arch = dict(kind="points", num_classes=num_classes, dim=dim, hidden=hidden, num_layers=num_layers,
                         embedding_dim=embedding_dim, conditioning=conditioning)
        self.embed = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.ModuleDict({"fc1": nn.Linear(hidden, hidden), "fc2": nn.Linear(hidden, hidden),
                                                   "emb": nn.Linear(hidden, hidden)}) for _ in range(num_layers))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        e = self.embed(_embed_label(c_noise, self.arch["conditioning"], self.arch["embedding_dim"]).to(x.dtype))
        h = self.inp(x) + e
        for b in self.blocks:
            h = h + b["fc2"](F.silu(b["fc1"](F.silu(h)) + b["emb"](e)))
        return self.out(F.silu(h))


class ImageClassifier(nn.Module):
    """x [B, C, H, W], c_noise [B] -> logits [B, num_classes].

    Three 3x3 conv stages (width w, 2w, 4w), each followed by a per-channel bias from the noise
    embedding and SiLU; 2x2 average pooling after the first two, adaptive average pooling to a 4x4
    grid after the third (any image size), then a hidden layer and the linear classifier.
    Why average rather than max pooling: the guidance gradient then reaches every pixel.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, hidden: int = 128,
                 embedding_dim: int = 64, conditioning: str = "time"):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width),
                        ("hidden", hidden), ("embedding_dim", embedding_dim)):
            check_positive_int(v, name)
        check_one_of("conditioning", conditioning, ("time", "sigma"))
        self.arch = dict(kind="images", num_classes=num_classes, in_channels=in_channels, width=width,
                         hidden=hidden, embedding_dim=embedding_dim, conditioning=conditioning)
        channels = (width, 2 * width, 4 * width)
        self.embed = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.SiLU())
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1)
                                   for c_in, c_out in zip((in_channels,) + channels[:2], channels))
        self.biases = nn.ModuleList(nn.Linear(hidden, c) for c in channels)
        self.pools = nn.ModuleList([nn.AvgPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(4)])
        self.fc = nn.Linear(channels[-1] * 16, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        e = self.embed(_embed_label(c_noise, self.arch["conditioning"], self.arch["embedding_dim"]).to(x.dtype))
        h = x
        for conv, bias, pool in zip(self.convs, self.biases, self.pools):
            h = pool(F.silu(conv(h) + append_dims(bias(e), 4)))
        return self.out(F.silu(self.fc(h.flatten(1)) + e))


def build_noisy_classifier(kind: str, num_classes: int, **arch) -> nn.Module:
    """A PointClassifier ("points") or an ImageClassifier ("images"); `arch` holds its other
    arguments (e.g. dim=2 or in_channels=3, and conditioning=sde.conditioning)."""
    check_one_of("kind", kind, KINDS)
    return (PointClassifier if kind == "points" else ImageClassifier)(num_classes, **arch)


def classifier_logits_fn(net: nn.Module, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """classifier_fn(x, t) -> logits [B, K] of p(y | x_t = x, t), for `samplers.guidance`.

    The network sees c_in x, c_in = 1 / sqrt(alpha(t)^2 + sigma(t)^2), and c_noise =
    `models.noise_label(sde, t)`; x is cast to the network's dtype (the gradient flows back through
    the cast). `classifier_fn.num_classes` lets guidance check labels before any call. The
    network must have been trained under an SDE of the same conditioning ("time" or "sigma").
    """
    conditioning = net.arch["conditioning"]
    if conditioning != sde.conditioning:
        raise ValueError(f"the classifier was trained on {conditioning!r} noise labels, but the SDE "
                         f"{type(sde).__name__} labels noise by {sde.conditioning!r}: train one under this SDE")
    dtype = next(net.parameters()).dtype

    def classifier_fn(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device).double().expand(x.shape[0])
        alpha, sigma = sde.marginal_coeffs(t)
        c_in = append_dims(torch.rsqrt(alpha ** 2 + sigma ** 2), x.ndim).to(dtype)
        return net(c_in * x.to(dtype), noise_label(sde, t))

    classifier_fn.num_classes = net.arch["num_classes"]
    return classifier_fn


def _noisy(sde: SDE, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
    """x_t = alpha(t) x_0 + sigma(t) z with z ~ N(0, I) drawn by `generator` (on the CPU); t [B] float64."""
    alpha, sigma = sde.marginal_coeffs(t)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return append_dims(alpha.to(x0.dtype), x0.ndim) * x0 + append_dims(sigma.to(x0.dtype), x0.ndim) * z


def _as_model_space(x: Tensor, transform: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
    if transform is not None:
        return transform(x)
    if not x.is_floating_point():
        raise ValueError(f"x of dtype {x.dtype}: pass data in model space (float), or a `transform` that "
                         f"maps it there, e.g. uint8 images -> data.scaler(image_data.to_unit_interval(images))")
    return x


@torch.no_grad()
def noisy_accuracy(classifier_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, y: Tensor,
                   times: Sequence[float], *, seed: int = 0, batch_size: int = 1000,
                   transform: Optional[Callable[[Tensor], Tensor]] = None, device=None) -> Dict[float, float]:
    """{t: fraction of x_t = alpha(t) x0 + sigma(t) z whose argmax logit is the label} at each time.

    The noise at each time is drawn from `seed` alone, so two classifiers (a network and the exact
    posterior) are scored on the same x_t. x0 [N, ...] (float, or raw with `transform`), y [N].
    """
    out = {}
    for t_value in times:
        generator = torch.Generator().manual_seed(seed)
        correct = 0
        for i in range(0, len(x0), batch_size):
            x = _as_model_space(x0[i:i + batch_size], transform).float()
            t = torch.full((len(x),), float(t_value), dtype=torch.float64)
            x_t = _noisy(sde, x, t, generator).to(device if device is not None else x.device)
            logits = classifier_fn(x_t, t.to(x_t.device))
            correct += int((logits.argmax(-1).cpu() == y[i:i + batch_size]).sum())
        out[float(t_value)] = correct / len(x0)
    return out


def train_noisy_classifier(sde: SDE, x_train: Tensor, y_train: Tensor, steps: int = 2000, batch_size: int = 256,
                           seed: int = 0, device="cpu", *, num_classes: Optional[int] = None, lr: float = 2e-3,
                           eps: Optional[float] = None, x_test: Optional[Tensor] = None,
                           y_test: Optional[Tensor] = None, eval_times: Optional[Sequence[float]] = None,
                           transform: Optional[Callable[[Tensor], Tensor]] = None, net: Optional[nn.Module] = None,
                           **arch) -> Tuple[nn.Module, Dict[float, float]]:
    """Train a noise-conditional classifier on (x_train [N, ...], y_train [N]) under `sde`.

    Each step draws a batch (with replacement), t ~ U(eps, T) and z ~ N(0, I), all from one
    torch.Generator seeded with `seed`, and takes an Adam step on the cross-entropy of
    classifier_fn(alpha x_0 + sigma z, t) against the labels. The initialisation is seeded too
    (without touching the global RNG), so the same seed gives the same network on one device.

    Args:
      x_train: data in model space: points [N, D] or images [N, C, H, W] (e.g. in [-1, 1]); raw data
        (e.g. uint8 images) with `transform`, applied per batch, which maps a batch to model space.
      eps: smallest training time (default sde.sampling_eps).
      x_test, y_test: where accuracy is measured (default: the first 2,000 training samples).
      eval_times: times of the accuracy report (default EVAL_FRACTIONS of T).
      net: a network to train (default: build_noisy_classifier with `arch`, kind from x_train's rank).
    Returns (net in eval mode on `device`, {t: accuracy of argmax p(y | x_t)}).
    """
    n = len(x_train)
    check_labels(y_train, n, None if num_classes is None else check_positive_int(num_classes, "num_classes"),
                 name="y_train")
    K = num_classes or int(y_train.max()) + 1
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    check_positive(lr, "lr")
    eps = sde.sampling_eps if eps is None else eps
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T:g}), got {eps!r}")
    sample = _as_model_space(x_train[:1], transform)
    if net is None:
        if sample.ndim not in (2, 4):
            raise ValueError(f"x_train must be points [N, D] or images [N, C, H, W], got {tuple(sample.shape)}")
        kind = "points" if sample.ndim == 2 else "images"
        arch.setdefault("dim" if kind == "points" else "in_channels", sample.shape[1])
        arch.setdefault("conditioning", sde.conditioning)
        with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the global RNG alone
            torch.manual_seed(seed)
            net = build_noisy_classifier(kind, K, **arch)
    net = net.to(device)
    classify = classifier_logits_fn(net, sde)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        x0 = _as_model_space(x_train[idx], transform).float()
        t = eps + (sde.T - eps) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
        x_t = _noisy(sde, x0, t, generator)
        loss = F.cross_entropy(classify(x_t.to(device), t.to(device)), y_train[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    if x_test is None:
        x_test, y_test = x_train[:2000], y_train[:2000]
    times = eval_times if eval_times is not None else [f * sde.T for f in EVAL_FRACTIONS]
    accuracy = noisy_accuracy(classify, sde, x_test, y_test, times, seed=seed, transform=transform, device=device)
    return net, accuracy


def save_noisy_classifier(path, net: nn.Module, accuracy_by_t: Optional[Dict[float, float]] = None,
                          **info) -> str:
    """Write one file atomically (never over an existing one): architecture, weights, the accuracy
    report and plain `info` values (e.g. data="gmm", sde="vpsde"); readable with weights_only=True."""
    accuracy_by_t = accuracy_by_t or {}
    state = {"arch": dict(net.arch), "state_dict": net.state_dict(), "info": dict(info),
             "eval_times": [float(t) for t in accuracy_by_t], "accuracy": [float(a) for a in accuracy_by_t.values()]}
    return atomic_save(state, str(path))


def load_noisy_classifier(path, device="cpu") -> Tuple[nn.Module, Dict[float, float], dict]:
    """Read a save_noisy_classifier file: (net in eval mode on `device`, accuracy_by_t, info)."""
    saved = checkpoints.load_file(path, ("arch", "state_dict", "eval_times", "accuracy"), "noisy classifier",
                                  "train one first (--mode noisy_classifier, or train_noisy_classifier + "
                                  "save_noisy_classifier)", device)
    arch = dict(saved["arch"])
    net = build_noisy_classifier(arch.pop("kind"), arch.pop("num_classes"), **arch)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval(), dict(zip(saved["eval_times"], saved["accuracy"])), saved.get("info", {})
