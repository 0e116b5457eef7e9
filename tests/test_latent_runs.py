"""Latent diffusion through the application on tiny 8x8 images: --mode autoencoder (resume, export,
latent scale), a score model trained on its latents (cache, decoding, likelihoods) and bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from configs.fashionmnist_autoencoder import get_config as autoencoder_config
from configs.fashionmnist_vp_ddpmpp_latent import get_config as latent_config
from score_toolkit import autoencoder_run, autoencoders, checkpoints, data_lib, evaluation, image_data, latent_data, training
from score_toolkit.errors import ConfigError, MissingInputError
from tests.helpers import write_tiny_image_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return str(write_tiny_image_set(tmp_path_factory.mktemp("data"), 64, 32))


def ae_config(root, arg="kl_f2", **keys):
    c = autoencoder_config(arg)
    c.data.root, c.data.image_size, c.data.pad_to = root, 8, 0
    a = c.autoencoder
    a.nf, a.ch_mult, a.n_iters, a.batch_size, a.n_eval, a.checkpoint_freq, a.log_freq = 8, (1, 2), 4, 8, 16, 2, 2
    c.eval.batch_size = 8
    for k, v in keys.items():
        a[k] = v
    return c


def lat_config(root, ae_dir, channels=4):
    c = latent_config()
    c.data.root, c.data.image_size, c.data.pad_to = root, 8, 0
    c.latent.autoencoder = str(ae_dir)
    m = c.model
    m.num_channels, m.image_size, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = channels, 4, 8, (1, 2), 1, (2,)
    t = c.training
    t.n_iters, t.batch_size, t.checkpoint_freq, t.snapshot_freq = 4, 8, 2, 4
    c.sampling.N, c.sampling.n_samples, c.sampling.batch_size = 3, 8, 8
    e = c.eval
    e.n_nll, e.batch_size, e.n_samples, e.nll_rtol, e.nll_atol = 8, 8, 8, 1e-3, 1e-3
    return c


@pytest.fixture(scope="module")
def trained_ae(images, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ae")
    results = autoencoder_run.run(ae_config(images), str(workdir))
    return workdir, results


def test_autoencoder_resumes_bit_for_bit(images, tmp_path):
    c = ae_config(images, disc_weight=0.5, disc_start=2, disc_nf=8, disc_layers=1)
    autoencoder_run.train(c, str(tmp_path / "straight"))
    autoencoder_run.train(c, str(tmp_path / "split"), max_steps=3)
    autoencoder_run.train(c, str(tmp_path / "split"))
    a, b = (checkpoints.load_latest(str(tmp_path / d / "checkpoints"))[1] for d in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    for key in ("ae", "disc"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    logged = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert "d_loss" in logged[-1] and "d_loss" not in logged[0]  # the discriminator from step disc_start on


def test_export_holds_the_scale_that_makes_latents_unit_std(trained_ae, images):
    workdir, results = trained_ae
    ae, meta = autoencoders.load(str(workdir))
    assert meta["path"].endswith("autoencoder_step4.pt") and meta["latent_shape"] == [2, 4, 4]
    assert results["latent_scale"] == meta["latent_scale"] and 5 < results["psnr"] < 60
    # the scale is 1 / std of the posterior draws it was measured on: rebuild them
    c = ae_config(images)
    imgs = data_lib.load(c)
    g = torch.Generator().manual_seed(c.seed + 23)
    idx = torch.randperm(len(imgs.train_uint8), generator=g)[:autoencoder_run.SCALE_IMAGES]
    z = autoencoder_run.encode_latents(ae, imgs.scaler(image_data.to_unit_interval(imgs.train_uint8[idx])), 8, g)
    assert abs(float((meta["latent_scale"] * z).std()) - 1) < 1e-6


def test_latent_model_trains_samples_and_reports_both_likelihoods(trained_ae, images, tmp_path):
    ae_dir, _ = trained_ae
    c = lat_config(images, ae_dir, channels=2)
    net = training.check_inputs(c, str(tmp_path))
    training.train(c, str(tmp_path), net=net)
    caches = sorted(os.listdir(ae_dir / "latents"))
    assert [n.split("_")[0] for n in caches] == ["train"]
    res = evaluation.evaluate(c, str(tmp_path))
    assert sorted(os.listdir(ae_dir / "latents"))[0].startswith("test") and len(os.listdir(ae_dir / "latents")) == 2
    assert 0 < res["nll_bits_per_dim"] < 32 and 0 < res["latent_bits_per_dim"] < 32
    folder = evaluation.sample(c, str(tmp_path))
    x = evaluation.load_samples(folder)
    assert x.shape == (8, 1, 8, 8) and x.dtype.name == "uint8"
    # the workdir is pinned to this autoencoder
    pin = json.load(open(tmp_path / latent_data.PIN))
    assert pin["fingerprint"] == autoencoders.load(str(ae_dir))[1]["fingerprint"]
    # inpainting runs on the latents: the left half of the images known, so the left half of the latents
    data = latent_data.wrap(c, data_lib.load(c))
    mask = data_lib.inpainting_mask("right", (1, 8, 8))  # the right half missing
    assert torch.equal(data.latent_mask(mask), torch.tensor([1.0, 1, 0, 0]).expand(2, 4, 4))
    np_path = tmp_path / "observed.npz"
    import numpy as np
    np.savez(np_path, samples=data.test_uint8[:2].numpy())
    c.sampling.task, c.sampling.observed, c.sampling.mask = "inpaint", str(np_path), "right"
    x = evaluation.load_samples(evaluation.sample(c, str(tmp_path), eval_folder="inpaint"))
    assert x.shape == (8, 1, 8, 8)


def test_a_missing_or_mismatched_autoencoder_is_refused_before_work(trained_ae, images, tmp_path):
    ae_dir, _ = trained_ae
    with pytest.raises(MissingInputError, match="config.latent.autoencoder"):
        training.check_inputs(lat_config(images, tmp_path / "nothing", channels=2), str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="model.num_channels = 4 .*latent channels, 2"):
        training.check_inputs(lat_config(images, ae_dir, channels=4), str(tmp_path / "w"))
    c = lat_config(images, ae_dir, channels=2)
    c.data.centered = False
    with pytest.raises(ConfigError, match="data.centered"):
        training.check_inputs(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_bad_autoencoder_config_names_its_key(images, tmp_path):
    for key, value, words in (("kind", "vae", "autoencoder.kind"), ("rec_loss", "nll", "autoencoder.rec_loss"),
                              ("ch_mult", (1, 2, 2, 2, 2), "config.autoencoder"), ("kl_weight", -1.0, "kl_weight")):
        arg = "vq_f2" if key == "rec_loss" else "kl_f2"
        with pytest.raises(ConfigError, match=words):
            autoencoder_run.check_inputs(ae_config(images, arg, **{key: value}), str(tmp_path))


@pytest.mark.slow
def test_command_line_autoencoder_mode(images, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--mode=autoencoder",
           f"--config={ROOT}/configs/fashionmnist_autoencoder.py:vq_f2", f"--workdir={tmp_path}",
           f"--config.data.root={images}", "--config.data.image_size=8", "--config.data.pad_to=0",
           "--config.autoencoder.nf=8", "--config.autoencoder.ch_mult=(1, 2)", "--config.autoencoder.n_iters=3",
           "--config.autoencoder.batch_size=8", "--config.autoencoder.n_eval=16", "--config.eval.batch_size=8"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(tmp_path / "results.json"))
    assert 0 < res["codebook_used_fraction"] <= 1 and res["codebook_perplexity"] >= 1
    assert (tmp_path / "export" / "autoencoder_step3.pt").exists()


def test_mirrored_images_come_from_their_own_cache(trained_ae, images, tmp_path):
    ae_dir, _ = trained_ae
    c = lat_config(images, ae_dir, channels=2)
    c.data.random_flip, c.latent.sample_posterior = True, False
    data = latent_data.wrap(c, data_lib.load(c))
    g = torch.Generator().manual_seed(0)
    idx = data.draw_indices(64, g)
    w, cond = data.batch_at(idx, g)
    plain, mirrored = (cache["mean"][idx] * data.scale for cache in data.train_latents)
    is_plain = (w == plain).flatten(1).all(1)
    is_mirrored = (w == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_mirrored).all()) and 10 < int(is_mirrored.sum()) < 54
    assert torch.equal(cond["y"], data.train_labels[idx])
    # the mirrored cache holds the latents of the mirrored images
    first = data.scaler(image_data.to_unit_interval(data.train_uint8[:4].flip(-1)))
    assert torch.allclose(latent_data.posterior_moments(data.ae, first, "cpu")[0], data.train_latents[1]["mean"][:4], atol=1e-6)
