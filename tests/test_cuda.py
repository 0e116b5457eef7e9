"""The same known answers on a CUDA device: samplers, likelihood, training and its exact resume.

Skipped where torch sees no CUDA device.
"""
import math

import pytest
import torch

from score_toolkit import factories
import likelihood
import models
import samplers
import sde_lib
from score_toolkit import training
from configs.fashionmnist_vp_ddpmpp import get_config as get_image_config
from tests.helpers import (assert_recovers, assert_same_state, exact_check, final_weights, make_sdes, mixture_2d,
                           random_mixture, small_config)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_pc_and_ode_recover_mixture_on_cuda(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    x, _ = samplers.pc_sample(sde, gm.score_fn(sde), (3000, 2), steps=200, seed=0, device=CUDA)
    assert x.device.type == "cuda"
    assert_recovers(gm, x.cpu())
    x, _ = samplers.ode_sample(sde, gm.score_fn(sde), (3000, 2), seed=0, device=CUDA)
    assert_recovers(gm, x.cpu())


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_exact_likelihood_on_cuda(sde_name):
    sde, gm = make_sdes()[sde_name], random_mixture(16)
    x = gm.sample(32, torch.Generator().manual_seed(0)).double()
    err, logp, _ = exact_check(sde, gm, x.to(CUDA))
    assert logp.device.type == "cuda"
    assert err.abs().max() < 5e-3


def test_bits_per_dim_same_on_cpu_and_cuda():
    """Dequantization noise comes from a CPU generator: the same seed, the same answer on both."""
    sde, gm = sde_lib.VPSDE(), random_mixture(16)
    k = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(1))
    kw = dict(seed=3, divergence="exact", eps=1e-5, dtype=torch.float64)
    cpu, _, _ = likelihood.bits_per_dim(sde, gm.score_fn(sde), k, **kw)
    gpu, _, _ = likelihood.bits_per_dim(sde, gm.score_fn(sde), k.to(CUDA), **kw)
    assert torch.allclose(cpu, gpu.cpu(), rtol=0, atol=1e-6)


def test_training_on_cuda_resumes_exactly_and_tracks_cpu(tmp_path):
    c = small_config(device="cuda")
    training.train(c, str(tmp_path / "a"))
    training.train(c, str(tmp_path / "b"), max_steps=20)
    training.train(c, str(tmp_path / "b"))
    (step, a), (_, b) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert step == 30
    assert_same_state(a, b)
    # The CPU run draws the same batches, times and noise: the weights differ by rounding only.
    training.train(small_config(device="cpu"), str(tmp_path / "cpu"))
    _, cpu = final_weights(tmp_path / "cpu")
    for key, value in cpu["model"].items():
        assert torch.allclose(value, a["model"][key], rtol=1e-3, atol=1e-5), key


def test_image_network_same_output_on_cpu_and_cuda():
    config = get_image_config()
    config.model.nf, config.model.ch_mult = 16, (1, 2)
    torch.manual_seed(0)
    net = factories.build_model(config).eval()
    sde = factories.build_sde(config)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5)
    with torch.no_grad():
        cpu = models.get_score_fn(sde, net)(x, t)
        gpu = models.get_score_fn(sde, net.to(CUDA))(x.to(CUDA), t.to(CUDA)).cpu()
    assert math.isfinite(float(cpu.abs().max()))
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=5e-3 * float(cpu.abs().max()))  # TF32 convolutions
