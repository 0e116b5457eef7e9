"""The shipped Fashion-MNIST weights: small enough for git, loadable, and sampling garments."""
import os

import pytest
import torch

from score_toolkit import factories
from score_toolkit import evaluation
import models
import samplers
from configs.fashionmnist_vp_ddpmpp_pretrained import WEIGHTS, get_config

# Samples the shipped image model (a 32x32 U-Net on the CPU).
pytestmark = pytest.mark.slow

# Fashion-MNIST's training images, 28x28 padded with 2 black pixels to 32x32, scaled to [0, 1]:
# mean 0.2190, std 0.3318; the mean of 16 images has a standard error of 0.024.
DATA_MEAN, DATA_STD = 0.2190, 0.3318


def test_pretrained_weights_sample_fashion_mnist_statistics():
    assert os.path.getsize(WEIGHTS) < 10 * 2 ** 20
    config = get_config()  # test_configs validates it with every other config
    model, step = evaluation.load_ema_model(config, workdir="unused: the weights file is configured")
    assert step == 5675
    sde = factories.build_sde(config)
    with torch.no_grad():
        x, nfe = samplers.ode_sample(sde, models.get_score_fn(sde, model), (16, 1, 32, 32), method="rk4", steps=10,
                                     denoise=True, seed=0)
    assert nfe == 41
    images = ((x + 1) / 2).clamp(0, 1)
    # An untrained network gives noise: mean near 0.5 and a grey frame.
    assert abs(images.mean().item() - DATA_MEAN) < 0.08
    assert abs(images.std().item() - DATA_STD) < 0.05
    frame = torch.cat([images[..., :2, :].flatten(), images[..., -2:, :].flatten(),
                       images[..., :, :2].flatten(), images[..., :, -2:].flatten()])
    assert frame.mean().item() < 0.02  # the padding is black in every training image
