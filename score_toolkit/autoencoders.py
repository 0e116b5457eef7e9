"""The autoencoders of latent diffusion as the application keeps them: built from config.autoencoder,
checked before any work, and exported (after `--mode autoencoder`) as one file that a latent model
reads: the weights, the architecture, the image data it was trained on, its latent shape and the
latent scale s = 1 / std(z) (latent-diffusion's scale_by_std), so the score model sees w = s z.

    <workdir>/export/autoencoder_step<step>.pt   {"kind": "autoencoder", "autoencoder": config.autoencoder,
        "data": config.data, "state_dict", "latent_scale", "latent_shape", "step", "fingerprint"}

Files are never written over: a longer run exports a new step, and `find` takes the newest.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn as nn

from score_toolkit import checkpoints
from score_toolkit.errors import BadFileError, ConfigError, MissingInputError, require
import models.autoencoder
import models.vq

KINDS = ("kl", "vq")
REC_LOSSES = ("l1", "l2", "nll")
EXPORT = "export"
_FILE = re.compile(r"autoencoder_step(\d+)\.pt$")


def check_config(config) -> None:
    """Every config.autoencoder value `build` and the training loop read, each error naming its key."""
    a = config.autoencoder
    require(config.data.kind == "images", "data.kind", config.data.kind, "--mode autoencoder needs image data")
    require(a.kind in KINDS, "autoencoder.kind", a.kind, f"must be one of {list(KINDS)}")
    require(a.rec_loss in REC_LOSSES, "autoencoder.rec_loss", a.rec_loss, f"must be one of {list(REC_LOSSES)}")
    require(a.kind == "kl" or a.rec_loss != "nll", "autoencoder.rec_loss", a.rec_loss,
            "nll (the Gaussian decoder's likelihood) is for kind = 'kl'; a VQ autoencoder takes l1 or l2")
    for key in ("nf", "num_res_blocks", "latent_channels", "n_codes", "batch_size", "n_iters", "log_freq",
                "checkpoint_freq", "keep_checkpoints", "n_eval", "disc_nf", "disc_layers"):
        v = a[key]
        require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"autoencoder.{key}", v,
                "must be a positive integer")
    for key in ("kl_weight", "beta", "disc_weight", "perceptual_weight", "dropout"):
        require(isinstance(a[key], (int, float)) and a[key] >= 0, f"autoencoder.{key}", a[key], "must be a number >= 0")
    require(isinstance(a.lr, (int, float)) and a.lr > 0, "autoencoder.lr", a.lr, "must be a number > 0")
    require(0 < a.ema_decay < 1, "autoencoder.ema_decay", a.ema_decay, "must lie in (0, 1)")
    require(isinstance(a.disc_start, int) and a.disc_start >= 0, "autoencoder.disc_start", a.disc_start,
            "must be an integer >= 0")
    require(a.perceptual_weight == 0 or config.eval.feature_extractor == "classifier", "autoencoder.perceptual_weight",
            a.perceptual_weight, "the perceptual loss uses the feature classifier: set config.eval.feature_extractor "
            "= 'classifier' and config.eval.feature_path (train it with --mode classifier)")
    try:
        build(a, config.data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.autoencoder: {e}") from e


def build(ae: Mapping[str, Any], data: Mapping[str, Any]) -> nn.Module:
    """The autoencoder config.autoencoder (`ae`) describes, for the images config.data (`data`) describes."""
    common = dict(num_channels=data["num_channels"], image_size=data["image_size"], nf=ae["nf"],
                  ch_mult=tuple(ae["ch_mult"]), num_res_blocks=ae["num_res_blocks"], dropout=ae["dropout"])
    if ae["kind"] == "kl":
        return models.autoencoder.AutoencoderKL(latent_channels=ae["latent_channels"], **common)
    return models.vq.VQAutoencoder(n_codes=ae["n_codes"], code_dim=ae["latent_channels"], beta=ae["beta"],
                                   ema=ae["ema_codebook"], decay=ae["ema_decay"], **common)


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The first 16 hex digits of a SHA-256 over the weights: what a latent cache and a latent model are keyed to."""
    digest = hashlib.sha256()
    for key, value in sorted(state_dict.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export(workdir: str, config, ae: nn.Module, step: int, latent_scale: float) -> str:
    """<workdir>/export/autoencoder_step<step>.pt (module docstring); an existing one is kept as it is."""
    path = os.path.join(workdir, EXPORT, f"autoencoder_step{step}.pt")
    if os.path.exists(path):
        return path
    weights = {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}
    shape = ae.latent_shape((config.data.num_channels, config.data.image_size, config.data.image_size))
    saved = {"kind": "autoencoder", "autoencoder": config.autoencoder.to_dict(), "data": config.data.to_dict(),
             "state_dict": weights, "latent_scale": float(latent_scale), "latent_shape": list(shape),
             "step": int(step), "fingerprint": fingerprint(weights)}
    saved["autoencoder"]["ch_mult"] = list(saved["autoencoder"]["ch_mult"])
    return checkpoints.atomic_save(saved, path, what="the autoencoder")


def find(path: str) -> str:
    """The autoencoder file `path` names: the file itself, or a --mode autoencoder workdir's newest export.
    MissingInputError naming config.latent.autoencoder otherwise."""
    if os.path.isfile(path):
        return path
    folder = os.path.join(path, EXPORT)
    found = sorted(((int(m.group(1)), f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                    if (m := _FILE.search(f))), reverse=True)
    if not found:
        what = "a --mode autoencoder workdir" if os.path.isdir(path) else "there"
        raise MissingInputError(f"config.latent.autoencoder = {path!r}: no autoencoder file ({what}, but "
                                f"{folder} holds no autoencoder_step<N>.pt); train one with --mode autoencoder")
    return os.path.join(folder, found[0][1])


def load(path: str, device="cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """(autoencoder in eval mode on `device`, the file's other entries) of `find(path)`."""
    file = find(path)
    saved = checkpoints.load_file(file, ("kind", "autoencoder", "data", "state_dict", "latent_scale", "latent_shape"),
                                  "autoencoder", "train one with --mode autoencoder")
    if saved["kind"] != "autoencoder":
        raise BadFileError(f"{file}: not an autoencoder file (kind {saved['kind']!r})")
    ae = build(saved["autoencoder"], saved["data"])
    ae.load_state_dict(saved["state_dict"])
    meta = {k: v for k, v in saved.items() if k != "state_dict"}
    meta["path"] = file
    return ae.to(device).eval(), meta
