"""The shipped class-conditional Fashion-MNIST weights: each class's samples look like that class."""
import pytest
import torch

import samplers
from configs.fashionmnist_vp_ddpmpp_cond_pretrained import get_config
from score_toolkit import evaluation, factories

# Samples the shipped class-conditional image model (a 32x32 U-Net on the CPU).
pytestmark = pytest.mark.slow

# Mean pixel value (padded 32x32, in [0, 1]) of each class's training images, and its spread over
# images: sandals (5) and sneakers (7) are dark, pullovers (2) and coats (4) bright.
CLASS_MEAN = [0.2493, 0.1707, 0.2884, 0.1982, 0.2950, 0.1047, 0.2540, 0.1284, 0.2707, 0.2306]


def test_guided_samples_of_each_class_have_its_brightness():
    config = get_config()
    model, step = evaluation.load_ema_model(config, workdir="unused: the weights file is configured")
    assert step == 3150
    sde = factories.build_sde(config)
    score = factories.build_score_fn(config, sde, model, torch.device("cpu"))
    y = torch.tensor([1, 4, 5, 8]).repeat_interleave(8)
    x, nfe = samplers.dpmpp_2m_sample(sde, score, (32, 1, 32, 32), steps=10, seed=0, cond={"y": y})
    assert nfe == 10
    means = ((x + 1) / 2).clamp(0, 1).mean((1, 2, 3))
    for k in (1, 4, 5, 8):
        # 8 images: standard error ~0.03 of a class's mean; classes 4 and 5 lie 0.19 apart.
        assert abs(means[y == k].mean().item() - CLASS_MEAN[k]) < 0.06, (k, means[y == k].mean().item())
    assert means[y == 4].mean() > means[y == 5].mean() + 0.1
