"""--mode autoencoder: train the autoencoder of latent diffusion on config.data, then measure and export it.

Per step, on a batch x of training images (Rombach et al. 2022, Esser et al. 2021):

    L_ae   = rec(x, x_hat) + kl_weight KL(q(z | x) || N(0, I))     (kind kl; per image: summed over pixels
             or rec + the codebook and commitment terms            and latents, then averaged over the batch)
             (kind vq)
           + perceptual_weight ||phi(x) - phi(x_hat)||^2             (phi: the feature classifier's embedding)
           + disc_weight lambda_adapt (-D(x_hat))                    (from step disc_start)
    L_disc = 0.5 (E relu(1 - D(x)) + E relu(1 + D(x_hat)))           (hinge; from step disc_start)

with lambda_adapt = ||grad_last rec|| / (||grad_last g|| + 1e-4) at the decoder's last layer. The
autoencoder's Adam steps on L_ae, then the discriminator's on L_disc. Every draw (batches, posterior
samples, dropout) comes from RNGs whose states are in each checkpoint, so a resumed run ends with the
same weights, bit for bit, as one that never stopped; SIGINT / SIGTERM save the step in progress.

After the last step: the latent scale s = 1 / std of the latents of (up to) 10,000 training images,
PSNR and classifier-FID of reconstructions of autoencoder.n_eval test images, and for VQ the codebook's
usage -> <workdir>/results.json; the weights and s -> <workdir>/export/autoencoder_step<N>.pt.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from typing import Dict, Optional

import torch
from tqdm.auto import tqdm

from score_toolkit import autoencoders
from score_toolkit import checkpoints
from score_toolkit import data_lib
from score_toolkit import features
from score_toolkit import image_data
from score_toolkit import latent_data
from score_toolkit import runtime
from score_toolkit.run_config import config_differences, describe_differences
from score_toolkit.training import MetricsLog, StopRequest, TrainingStopped, _stop_if_not_finite
import models.autoencoder
import models.discriminator
import models.vq

Tensor = torch.Tensor
SCALE_IMAGES = 10_000  # training images the latent scale is measured on


def check_inputs(config, workdir: str) -> None:
    """The config (autoencoders.check_config), the training data's files, the feature classifier and
    statistics where the perceptual loss or the reconstruction FID need them, and a workdir made with an
    equivalent config. Writes nothing."""
    autoencoders.check_config(config)
    data_lib.check_files(config, ("train", "test"))
    data_lib.check_quality_files(config)  # with eval.feature_extractor set: the reconstructions' FID at the end
    checkpoints.check_run_config(workdir, config)


class AutoencoderState:
    """Autoencoder, discriminator, their optimizers, the step and the RNG states."""

    def __init__(self, config):
        a = config.autoencoder
        torch.manual_seed(config.seed)
        self.device = runtime.get_device(config)
        self.ae = autoencoders.build(a, config.data).to(self.device)
        betas = (0.5, 0.9)  # latent-diffusion's, for the autoencoder and its discriminator alike
        self.opt = torch.optim.Adam(self.ae.parameters(), lr=a.lr, betas=betas)
        self.disc = self.opt_disc = None
        if a.disc_weight > 0:
            self.disc = models.discriminator.PatchDiscriminator(config.data.num_channels, a.disc_nf, a.disc_layers)
            self.disc = self.disc.to(self.device)
            self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=a.lr, betas=betas)
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed + 1)

    def state_dict(self, config) -> dict:
        state = {"ae": self.ae.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
                 "config": config.to_json()}
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), opt_disc=self.opt_disc.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.ae.load_state_dict(state["ae"])
        self.opt.load_state_dict(state["opt"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_disc.load_state_dict(state["opt_disc"])
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])


def resume_or_start(config, ckpt_dir: str) -> AutoencoderState:
    state = AutoencoderState(config)
    latest = checkpoints.load_latest(ckpt_dir, move_aside=True)
    if latest is not None:
        step, saved = latest
        refused, _ = config_differences(json.loads(saved["config"]), config)
        if refused:
            raise checkpoints.WorkdirMismatchError(f"the checkpoint of step {step} in {ckpt_dir} was trained with "
                                                   f"another config: {describe_differences(refused)}")
        state.load_state_dict(saved)
        logging.info("resumed from step %d (%s)", step, ckpt_dir)
    return state


def autoencoder_loss(ae, x: Tensor, config, generator) -> tuple:
    """(L_ae without the adversarial term, x_hat, logs) of the module docstring, for either kind."""
    a = config.autoencoder
    if a.kind == "kl":
        loss, logs, x_hat = models.autoencoder.kl_autoencoder_loss(ae, x, generator, kl_weight=a.kl_weight,
                                                                    rec=a.rec_loss, return_recon=True)
    else:
        loss, logs, x_hat = models.vq.vq_autoencoder_loss(ae, x, rec=a.rec_loss, return_recon=True)
    return loss, x_hat, logs


def train_step(state: AutoencoderState, x: Tensor, config, perceptual) -> Dict[str, float]:
    """One step of each optimizer (module docstring); the logged terms as floats."""
    a = config.autoencoder
    loss, x_hat, logs = autoencoder_loss(state.ae, x, config, state.generator)
    if perceptual is not None:  # per image, summed over features (the KL loss's normalisation)
        with torch.no_grad():  # the data's features carry no gradient
            target = perceptual(x)
        p = (perceptual(x_hat) - target).pow(2).sum(1).mean()
        loss, logs["perceptual"] = loss + a.perceptual_weight * p, p.item()
    adversarial = state.disc is not None and state.step >= a.disc_start
    if adversarial:
        g = models.discriminator.generator_loss(state.disc(x_hat))
        w = models.discriminator.adaptive_weight(loss, g, state.ae.last_layer())
        loss, logs["g_loss"], logs["adaptive_weight"] = loss + a.disc_weight * w * g, g.item(), float(w)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    state.opt.step()
    if adversarial:
        d = models.discriminator.hinge_d_loss(state.disc(x), state.disc(x_hat.detach()))
        state.opt_disc.zero_grad(set_to_none=True)
        d.backward()
        state.opt_disc.step()
        logs["d_loss"] = d.item()
    state.step += 1
    return {"loss": loss.item(), **logs}


def perceptual_features(config, device):
    """phi(x): the feature classifier's embedding of model-space images (differentiable), or None."""
    if config.autoencoder.perceptual_weight == 0:
        return None
    net = features.load_extractor(config).net.to(device).eval().requires_grad_(False)
    to_unit = image_data.get_inverse_scaler(config.data.centered)
    return lambda x: net.embed(to_unit(x))


def train(config, workdir: str, max_steps: Optional[int] = None) -> AutoencoderState:
    """Train per config.autoencoder into workdir (resuming from its newest readable checkpoint), then
    `finish`. `max_steps` stops after that many steps of this call (a test hook)."""
    checkpoints.start_run(workdir, config)
    a, ckpt_dir = config.autoencoder, os.path.join(workdir, "checkpoints")
    data = data_lib.load(config)
    state = resume_or_start(config, ckpt_dir)
    perceptual = perceptual_features(config, state.device)
    metrics = MetricsLog(os.path.join(workdir, "metrics.jsonl"), state.step)
    end = a.n_iters if max_steps is None else min(a.n_iters, state.step + max_steps)
    state.ae.train()
    with StopRequest() as stop, tqdm(total=a.n_iters, initial=state.step, desc="autoencoder", disable=None) as bar:
        while state.step < end and stop.signum is None:
            x, _ = data.train_batch(a.batch_size, state.generator)
            logs = train_step(state, x.to(state.device), config, perceptual)
            _stop_if_not_finite(logs["loss"], state.step, ckpt_dir)
            bar.update(1)
            if state.step % a.log_freq == 0 or state.step == end:
                metrics.write({"step": state.step, **logs})
                logging.info("step %d  %s", state.step, "  ".join(f"{k} {v:.5g}" for k, v in logs.items()))
            if state.step % a.checkpoint_freq == 0 or state.step == a.n_iters:
                checkpoints.save_checkpoint(ckpt_dir, state.step, state.state_dict(config), a.keep_checkpoints)
    if stop.signum is not None:
        if state.step and not os.path.exists(checkpoints.checkpoint_path(ckpt_dir, state.step)):
            checkpoints.save_checkpoint(ckpt_dir, state.step, state.state_dict(config), a.keep_checkpoints)
        raise TrainingStopped(f"{signal.Signals(stop.signum).name}: autoencoder training stopped after step "
                              f"{state.step}, which is saved in {ckpt_dir}", stop.signum)
    if state.step == a.n_iters:
        finish(config, workdir, state, data)
    return state


def encode_latents(ae, images: Tensor, batch_size: int, generator=None) -> Tensor:
    """The latents of model-space images [N, C, H, W]: posterior draws (kl; the mean without a generator),
    drawn batch by batch, or the quantized codes (vq), [N, *latent_shape], on the CPU."""
    mean, std = latent_data.posterior_moments(ae, images, next(ae.parameters()).device, batch_size)
    if std is None or generator is None:
        return mean
    return torch.cat([m + s * torch.randn(m.shape, generator=generator, dtype=m.dtype)
                      for m, s in zip(mean.split(batch_size), std.split(batch_size))])


@torch.no_grad()
def reconstruct(ae, images: Tensor, batch_size: int) -> Tensor:
    """decode(the posterior mean, or the codes) of model-space images [N, C, H, W], on the CPU."""
    device = next(ae.parameters()).device
    return torch.cat([ae.decode(z.to(device)).cpu() for z in encode_latents(ae, images, batch_size).split(batch_size)])


def measure(config, ae, data) -> Dict[str, float]:
    """PSNR (on [0, 1] images rounded to 8 bits) and classifier-FID of reconstructions of n_eval test
    images, the latent scale, and for VQ the codebook's usage on them."""
    a, bs = config.autoencoder, config.eval.batch_size
    test = data.test[:a.n_eval]
    recon = data.to_uint8(reconstruct(ae, test, bs))
    truth = data.test_uint8[:a.n_eval]
    mse = ((recon.double() - truth.double()) / 255).pow(2).flatten(1).mean(1)
    out = {"psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-20))).mean()), "n_eval": len(test)}
    out.update({f"reconstruction_{k}": v for k, v in data.quality(recon).items()})
    g = torch.Generator().manual_seed(config.seed + 23)
    idx = torch.randperm(len(data.train_uint8), generator=g)[:SCALE_IMAGES]
    train = data.scaler(image_data.to_unit_interval(data.train_uint8[idx]))
    z = encode_latents(ae, train, bs, g if a.kind == "kl" else None)
    out["latent_scale"] = models.autoencoder.latent_scale(z)
    if a.kind == "vq":
        codes = torch.cat([ae.quantize(ae.encode(x.to(next(ae.parameters()).device)))[2].cpu()
                           for x in test.split(bs)])
        out.update({f"codebook_{k}": float(v) for k, v in ae.quantizer.usage(codes).items()})
    return out


def finish(config, workdir: str, state: AutoencoderState, data) -> Dict[str, float]:
    """`measure`, results.json and the export of a finished run."""
    state.ae.eval()
    results = {"step": state.step, **measure(config, state.ae, data)}
    path = autoencoders.export(workdir, config, state.ae, state.step, results["latent_scale"])
    results["export"] = path
    checkpoints.atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2),
                                  what="the autoencoder's results")
    logging.info("autoencoder: %s", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in results.items()))
    print(json.dumps(results, indent=2))
    return results


def run(config, workdir: str) -> Dict[str, float]:
    """--mode autoencoder: train to autoencoder.n_iters (a finished run is measured again); the results."""
    train(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)
