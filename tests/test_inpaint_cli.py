"""Inpainting from the command line: the observed part comes back exactly, bad masks and shapes are
refused before any work."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs.fashionmnist_vp_ddpmpp_pretrained import get_config
from score_toolkit import data_lib, errors, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _observation(path, shape=(2, 1, 32, 32)):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(shape, generator=g) * 255).to(torch.uint8)
    np.savez(path, samples=images.numpy())
    return images


def test_named_masks_hide_the_named_part():
    m = data_lib.inpainting_mask("right", (1, 4, 4))
    assert m[0, :, :2].eq(1).all() and m[0, :, 2:].eq(0).all()
    c = data_lib.inpainting_mask("center", (3, 8, 8))
    assert c.shape == (3, 8, 8) and c[:, 2:6, 2:6].eq(0).all() and c.sum() == 3 * (64 - 16)


def test_bad_observations_and_masks_are_refused(tmp_path):
    config = get_config()
    config.sampling.task = "inpaint"
    config.sampling.observed = str(tmp_path / "missing.npz")
    with pytest.raises(errors.ConfigError, match="config.sampling.observed = .*missing.npz.* must name an image file"):
        validation.validate_config(config)
    _observation(tmp_path / "small.npz", (2, 1, 28, 28))
    config.sampling.observed = str(tmp_path / "small.npz")
    with pytest.raises(errors.ConfigError, match=r"shape \(1, 28, 28\); the data's images are uint8 of shape \(1, 32, 32\)"):
        validation.validate_config(config)
    _observation(tmp_path / "ok.npz")
    config.sampling.observed, config.sampling.mask = str(tmp_path / "ok.npz"), "diagonal"
    with pytest.raises(errors.ConfigError, match=r"config.sampling.mask = 'diagonal' .*\['left', 'right'"):
        validation.validate_config(config)
    config.sampling.mask, config.sampling.method = "right", "adaptive"
    with pytest.raises(errors.ConfigError, match="config.sampling.method = 'adaptive' .*one grid interval at a time"):
        validation.validate_config(config)


@pytest.mark.slow
def test_inpainting_with_the_shipped_model_keeps_the_observed_half(tmp_path):
    observed = _observation(tmp_path / "obs.npz")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--mode=sample",
           f"--config={ROOT}/configs/fashionmnist_vp_ddpmpp_pretrained.py", f"--workdir={tmp_path / 'run'}",
           "--config.sampling.task=inpaint", f"--config.sampling.observed={tmp_path / 'obs.npz'}",
           "--config.sampling.mask=right", "--config.sampling.method=ddim", "--config.sampling.steps=4",
           "--config.sampling.n_samples=2", "--config.sampling.batch_size=2", "--config.device=cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.load(tmp_path / "run" / "eval" / "samples_ddim_ckpt5675" / "batch_0.npz")["samples"]
    assert np.array_equal(x[..., :16], observed.numpy()[..., :16])       # the known left half, exactly
    assert not np.array_equal(x[..., 16:], observed.numpy()[..., 16:])   # the right half is the model's
