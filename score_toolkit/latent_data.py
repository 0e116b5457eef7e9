"""The data of a latent model (config.latent.autoencoder set): images seen through the autoencoder.

Training draws latents w = s z of training images, z ~ q(z | x) (or its mean, or a VQ code), from a
cache written once per (autoencoder, data) pair; samples are decoded, x = decode(w / s), and then are
the image data's: plots, classifier-FID and the image NLL bound all work on decoded images.

    <autoencoder workdir>/latents/<split>_<autoencoder fingerprint>_<data key>.pt
        {"mean": [N, *latent], "std": [N, *latent] (kl), "fingerprint", "data"}

The cache is written atomically and never over an existing file, so two runs that encode at once
both end up reading one whole file. With data.random_flip the mirrored images are encoded too.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from typing import Dict, Optional, Tuple

import torch

from score_toolkit import autoencoders
from score_toolkit import checkpoints
from score_toolkit import image_data
from score_toolkit.errors import ConfigError, require
import likelihood
import models.vq

Tensor = torch.Tensor
DECODERS = ("gaussian", "discretized")
CACHE_BATCH = 500
DATA_KEYS = ("name", "image_size", "num_channels", "pad_to", "centered")


def is_latent(config) -> bool:
    return bool(config.get("latent", {}).get("autoencoder", ""))


def check_config(config) -> Dict:
    """The autoencoder file (which must exist) agrees with config.data and config.model; returns its
    entries. Each mismatch is a ConfigError naming the key, before any work."""
    _, meta = autoencoders.load(config.latent.autoencoder)
    for key in DATA_KEYS:
        require(meta["data"].get(key) == config.data[key], f"data.{key}", config.data[key],
                f"the autoencoder {meta['path']} was trained on data.{key} = {meta['data'].get(key)!r}")
    c, size = meta["latent_shape"][0], meta["latent_shape"][1:]
    require(config.model.num_channels == c, "model.num_channels", config.model.num_channels,
            f"a latent model's channels are its autoencoder's latent channels, {c} ({meta['path']})")
    require(not size or config.model.image_size == size[0], "model.image_size", config.model.image_size,
            f"a latent model's size is its autoencoder's latent size, {size[0] if size else None} ({meta['path']})")
    require(config.latent.decoder in DECODERS, "latent.decoder", config.latent.decoder, f"must be one of {list(DECODERS)}")
    b = config.latent.bound_samples
    require(isinstance(b, int) and not isinstance(b, bool) and b > 0, "latent.bound_samples", b,
            "must be a positive integer")
    kl = meta["autoencoder"]["kind"] == "kl"
    require(kl or not config.eval.enable_nll, "eval.enable_nll", True,
            "a VQ autoencoder's latents are discrete codes: the likelihoods need a KL autoencoder's posterior")
    return meta


def data_key(config, split: str) -> str:
    d = {k: config.data[k] for k in DATA_KEYS}
    return hashlib.sha256(json.dumps({"split": split, **d}, sort_keys=True).encode()).hexdigest()[:12]


@torch.no_grad()
def posterior_moments(ae, images: Tensor, device, batch_size: int = CACHE_BATCH) -> Tuple[Tensor, Optional[Tensor]]:
    """(mean, std) of q(z | x) of model-space images [N, C, H, W] (kl), or (codes, None) (vq), on the CPU."""
    means, stds = [], []
    for x in images.split(batch_size):
        x = x.to(device)
        if isinstance(ae, models.vq.VQAutoencoder):
            means.append(ae.quantize(ae.encode(x))[0].cpu())
            continue
        q = ae.encode(x)
        means.append(q.mean.cpu())
        stds.append(q.std.cpu())
    return torch.cat(means), (torch.cat(stds) if stds else None)


class LatentData:
    """An image data set (`data_lib.ImageData`) as latents of config.latent.autoencoder (module
    docstring); what is not about latents (labels, uint8 test images, plots, quality) is the image data's."""

    def __init__(self, data, config, device="cpu"):
        self.images, self.config = data, config
        self.device = torch.device(device)
        self.ae, self.meta = autoencoders.load(config.latent.autoencoder, self.device)
        self.scale = float(self.meta["latent_scale"])
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.cache_dir = os.path.join(os.path.dirname(os.path.dirname(self.meta["path"])), "latents")

    def __getattr__(self, name):
        if name == "images":
            raise AttributeError(name)
        return getattr(self.images, name)

    # ----------------------------------------------------------------- the cache

    def _cache(self, split: str, flip: bool = False) -> Dict[str, Tensor]:
        """The cached posterior moments of a split (module docstring), encoded now if not yet there."""
        name = f"{split}{'_flip' if flip else ''}_{self.meta['fingerprint']}_{data_key(self.config, split)}.pt"
        path = os.path.join(self.cache_dir, name)
        if not os.path.exists(path):
            uint8 = self.images.train_uint8 if split == "train" else self.images.test_uint8
            if flip:
                uint8 = uint8.flip(-1)
            logging.info("encoding %d %s images with %s -> %s", len(uint8), split, self.meta["path"], path)
            mean, std = posterior_moments(self.ae, self.images.scaler(image_data.to_unit_interval(uint8)), self.device)
            entry = {"mean": mean, "fingerprint": self.meta["fingerprint"], "data": data_key(self.config, split)}
            if std is not None:
                entry["std"] = std
            try:
                checkpoints.atomic_save(entry, path, what=f"the latent cache of the {split} split")
            except FileExistsError:  # another run wrote it meanwhile: the same latents
                pass
        saved = checkpoints.load_file(path, ("mean", "fingerprint"), "latent cache", "delete it to encode again")
        if saved["fingerprint"] != self.meta["fingerprint"]:
            raise ConfigError(f"{path} holds latents of another autoencoder; delete it to encode again")
        return saved

    @functools.cached_property
    def train_latents(self) -> Tuple[Dict[str, Tensor], ...]:
        flips = (False, True) if self.config.data.random_flip else (False,)
        return tuple(self._cache("train", f) for f in flips)

    @functools.cached_property
    def test(self) -> Tensor:
        """The test images' latents as the score model sees them: s times the posterior mean."""
        return self.scale * self._cache("test")["mean"]

    # ----------------------------------------------------------------- what the training loop reads

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Latents w = s z of a batch of training images, z ~ q(z | x) (config.latent.sample_posterior)
        or its mean, and {"y": the images' labels [B]} when the data set has them."""
        return self.batch_at(self.draw_indices(batch_size, generator), generator)

    def batch_at(self, idx: Tensor, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The latents of training images idx [B] (`train_batch`)."""
        caches = self.train_latents
        mirrored = (torch.rand(len(idx), generator=generator) < 0.5) if len(caches) == 2 else None

        def pick(key: str) -> Tensor:  # the mirrored image's latents where `mirrored`
            rows = caches[0][key][idx]
            if mirrored is None:
                return rows
            return torch.where(mirrored.view(-1, *[1] * len(self.latent_shape)), caches[1][key][idx], rows)

        z = pick("mean")
        if self.config.latent.sample_posterior and "std" in caches[0]:
            z = z + pick("std") * torch.randn(z.shape, generator=generator, dtype=z.dtype)
        labels = self.images.train_labels
        return self.scale * z, ({} if labels is None else {"y": labels[idx]})

    def sample_shape(self, n: int) -> tuple:
        return (n, *self.latent_shape)

    @torch.no_grad()
    def decode(self, w: Tensor) -> Tensor:
        """Model-space images decode(w / s) of latents w [N, *latent_shape], on the CPU."""
        return torch.cat([self.ae.decode(b.to(self.device, torch.float32) / self.scale).cpu()
                          for b in w.split(CACHE_BATCH)])

    @torch.no_grad()
    def encode_observed(self, images: Tensor) -> Tensor:
        """Latents w = s E[z | x] of model-space images [N, C, H, W] (for inpainting), on the CPU."""
        return self.scale * posterior_moments(self.ae, images, self.device)[0]

    def latent_mask(self, mask: Tensor) -> Tensor:
        """An image mask [C, H, W] (1 where known) at the latents' resolution [C', H/f, W/f]: a latent
        position is known where its whole f x f block of pixels, in every channel, is known (its encoder
        features still see past the block's edge, so the known latents near a hole's border are close to,
        not exactly, those of the observed image)."""
        c, h, w = self.latent_shape
        known = -torch.nn.functional.adaptive_max_pool2d(-mask.float().amin(0, keepdim=True)[None], (h, w))[0]
        return known.expand(c, h, w).clone()

    def to_data_space(self, w: Tensor) -> Tensor:
        """Samples as saved and measured: the decoded uint8 images [N, C, H, W]."""
        return self.images.to_uint8(self.decode(w))

    def true_nll_nats(self, x: Tensor) -> Optional[Tensor]:
        return None

    def nll(self, sde, score_fn, start: int, stop: int, e, seed: int, device=None):
        """(image NLL bound in nats [B], in bits/dim [B], nfe, {"latent_bits_per_dim": [B]}) of test images
        start:stop: LSGM's bound with config.latent.decoder (`likelihood.image_bits_per_dim_bound`), and the
        probability flow's density of their posterior means, in bits per latent dimension."""
        k = self.images.test_uint8[start:stop].to(device)
        ode = dict(divergence=e.divergence, n_probes=e.n_probes, rtol=e.nll_rtol, atol=e.nll_atol, eps=e.nll_eps)
        ae, lat = self.ae, self.config.latent
        bpd, parts = likelihood.image_bits_per_dim_bound(
            sde, score_fn, ae.encode, functools.partial(self._decoder_log_prob, lat.decoder), k,
            decoder=lat.decoder, centered=self.config.data.centered, scale=self.scale,
            n_samples=lat.bound_samples, seed=seed, **ode)
        z = self._cache("test")["mean"][start:stop].to(device)
        latent_bpd, _, nfe = likelihood.latent_bits_per_dim(sde, score_fn, z, scale=self.scale, seed=seed, **ode)
        bpd = bpd.double().cpu()
        nats = likelihood.nats_from_bits(bpd, k[0].numel())
        return nats, bpd, parts["nfe"] + nfe, {"latent_bits_per_dim": latent_bpd.double().cpu()}

    def _decoder_log_prob(self, kind: str, x: Tensor, z: Tensor) -> Tensor:
        lo, hi = (-1.0, 1.0) if self.config.data.centered else (0.0, 1.0)
        return self.ae.decoder_log_prob(x, z, kind=kind, data_range=(lo, hi))


def wrap(config, data, device="cpu"):
    """`data` as latents when config.latent.autoencoder is set, else unchanged."""
    return LatentData(data, config, device) if is_latent(config) else data



PIN = "autoencoder.json"


def pin_autoencoder(workdir: str, data) -> None:
    """A latent model's workdir records the autoencoder its checkpoints belong to (<workdir>/autoencoder.json:
    its file and fingerprint), written on the first run; a later run whose config.latent.autoencoder gives
    other weights (retrained, or another file) is refused, naming both: its samples would be decoded wrong."""
    if not isinstance(data, LatentData):
        return
    path = os.path.join(workdir, PIN)
    here = {"path": data.meta["path"], "fingerprint": data.meta["fingerprint"], "step": data.meta.get("step")}
    if not os.path.exists(path):
        checkpoints.atomic_write_text(path, json.dumps(here, indent=2), what="the latent model's autoencoder")
        return
    with open(path) as f:
        there = json.load(f)
    if there.get("fingerprint") != here["fingerprint"]:
        raise ConfigError(f"config.latent.autoencoder = {data.config.latent.autoencoder!r} gives the autoencoder "
                          f"{here['path']} (fingerprint {here['fingerprint']}), but {workdir} was trained on "
                          f"{there.get('path')} (fingerprint {there.get('fingerprint')}); use that one, or another --workdir")
