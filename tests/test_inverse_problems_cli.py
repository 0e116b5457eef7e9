"""Inverse problems from the command line (score_toolkit/inverse_problems.py): a posterior sampler as
sampling.method for inpaint, colorize, superres and linear tasks; the observation kept where the solver
keeps it exactly; every bad value refused before any work, naming its key."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs.fashionmnist_vp_ddpmpp_pretrained import get_config
from score_toolkit import errors, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _observation(path, shape=(2, 1, 32, 32), low=0, high=255):
    images = (low + torch.rand(shape, generator=torch.Generator().manual_seed(0)) * (high - low)).to(torch.uint8)
    np.savez(path, samples=images.numpy())
    return images


def _config(tmp_path, **sampling):
    config = get_config()
    _observation(tmp_path / "obs.npz")
    config.sampling.observed = str(tmp_path / "obs.npz")
    for k, v in sampling.items():
        config.sampling[k] = v
    return config


@pytest.mark.parametrize("sampling, match", [
    ({"task": "superres", "method": "ddrm", "sr_factor": 5}, r"config.sampling.sr_factor = 5 is not allowed"),
    ({"task": "superres", "method": "ddim"}, r"config.sampling.method = 'ddim' .* needs a posterior sampler"),
    ({"task": "linear", "method": "dps"}, r"config.sampling.matrix = '' is not allowed: .*must name a .npz file"),
    ({"task": "inpaint", "method": "particle", "particles": 0}, r"config.sampling.particles = 0 is not allowed"),
    ({"task": "inpaint", "method": "ddrm", "sigma_y": -0.1}, r"config.sampling.sigma_y = -0.1 is not allowed"),
    ({"task": "inpaint", "method": "ddrm", "ddrm_eta": "2"}, r"config.sampling.ddrm_eta = '2' is not allowed"),
    ({"task": "inpaint", "method": "ddrm", "ddrm_eta": "often"}, r"config.sampling.ddrm_eta = 'often' is not allowed"),
    ({"task": "superres", "method": "dps", "dps_zeta": -1.0}, r"config.sampling.dps_zeta = -1.0 is not allowed"),
    ({"task": "superres", "method": "pigdm", "steps": 0}, r"config.sampling.steps = 0 is not allowed"),
    ({"task": "none", "method": "particle"}, r"config.sampling.method = 'particle' .* needs sampling.task"),
    ({"task": "colorize", "method": "ddrm"}, r"config.sampling.task = 'colorize' .* 3-channel images"),
    ({"task": "deblur", "method": "ddrm"}, r"config.sampling.task = 'deblur' is not allowed: must be one of"),
])
def test_bad_inverse_problem_settings_name_their_key(tmp_path, sampling, match):
    with pytest.raises(errors.ConfigError, match=match):
        validation.validate_config(_config(tmp_path, **sampling))


def test_a_matrix_of_the_wrong_width_is_refused(tmp_path):
    np.savez(tmp_path / "A.npz", A=np.ones((3, 10)))
    config = _config(tmp_path, task="linear", method="ddrm", matrix=str(tmp_path / "A.npz"))
    with pytest.raises(errors.ConfigError, match=r"holds an array of shape \(3, 10\); A must be a finite matrix \[m, 1024\]"):
        validation.validate_config(config)
    np.savez(tmp_path / "A.npz", A=np.eye(1024)[:5])
    validation.validate_config(config)   # a good one passes


def _sample(tmp_path, *flags):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--mode=sample",
           f"--config={ROOT}/configs/fashionmnist_vp_ddpmpp_pretrained.py", f"--workdir={tmp_path / 'run'}",
           f"--config.sampling.observed={tmp_path / 'obs.npz'}", "--config.sampling.n_samples=2",
           "--config.sampling.batch_size=2", "--config.device=cpu", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_super_resolution_with_ddrm_keeps_the_block_means(tmp_path):
    observed = _observation(tmp_path / "obs.npz", low=96, high=160).double()  # no sample pixel clipped at 0 or 255
    _sample(tmp_path, "--config.sampling.task=superres", "--config.sampling.method=ddrm", "--config.sampling.steps=3")
    x = torch.from_numpy(np.load(tmp_path / "run" / "eval" / "samples_ddrm_ckpt5675" / "batch_0.npz")["samples"])
    pool = lambda v: torch.nn.functional.avg_pool2d(v.double(), 4)
    inside = pool(((x > 0) & (x < 255)).double()) == 1    # blocks where no pixel was clipped to [0, 255]
    assert inside.double().mean() > 0.9
    assert float((pool(x) - pool(observed))[inside].abs().max()) <= 0.5 + 1e-9   # exact but for the uint8 rounding
    assert not torch.equal(x.double(), observed)


@pytest.mark.slow
def test_inpainting_with_the_particle_sampler_keeps_the_known_half(tmp_path):
    observed = _observation(tmp_path / "obs.npz")
    _sample(tmp_path, "--config.sampling.task=inpaint", "--config.sampling.method=particle",
            "--config.sampling.particles=2", "--config.sampling.steps=3", "--config.sampling.mask=right")
    x = np.load(tmp_path / "run" / "eval" / "samples_particle_ckpt5675" / "batch_0.npz")["samples"]
    assert np.array_equal(x[..., :16], observed.numpy()[..., :16])
