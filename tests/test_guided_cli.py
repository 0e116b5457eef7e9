"""Class-conditional sampling and guidance from the command line: labels reach the sampler,
guidance is refused where it means nothing, and a trained conditional toy samples the asked class."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs.gmm_vp_mlp_cond import get_config as get_cond_config
from configs.swissroll_vp_mlp import get_config
from score_toolkit import errors, factories, toy_data, validation
from score_toolkit.config_keys import set_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config, overrides, message", [
    (get_config, {"sampling.guidance_scale": 1.0},
     r"config.sampling.guidance_scale = 1.0 .*needs a class-conditional network, and config.model.num_classes = 0"),
    (get_config, {"sampling.class_label": 2}, r"config.sampling.class_label = 2 .*must be -1: the network is unconditional"),
    (get_cond_config, {"sampling.class_label": 8}, r"config.sampling.class_label = 8 .*a class in \[0, 8\)"),
    (get_cond_config, {"sampling.guidance_scale": -1.0}, r"config.sampling.guidance_scale = -1.0 .*>= 0"),
    (get_cond_config, {"sampling.guidance": "classifier", "sampling.guidance_scale": 1.0},
     r"config.sampling.classifier_path = '' .*noise-conditional classifier"),
    (get_config, {"model.num_classes": 3}, r"config.model.num_classes = 3 .*'swiss_roll' has no labels"),
    (get_cond_config, {"model.num_classes": 4}, r"config.model.num_classes = 4 .*'gmm' has 8 classes"),
])
def test_meaningless_guidance_settings_are_refused(config, overrides, message):
    with pytest.raises(errors.ConfigError, match=message):
        validation.validate_config(set_keys(config(), **overrides))


def test_sample_labels_cycle_through_classes_or_fix_one():
    config = get_cond_config()
    assert torch.equal(factories.sample_labels(config, 10, start=5)["y"], torch.arange(5, 15) % 8)
    assert torch.equal(factories.sample_labels(set_keys(config, **{"sampling.class_label": 3}), 4)["y"], torch.full((4,), 3))
    assert factories.sample_labels(get_config(), 4) == {}


@pytest.mark.slow
def test_trained_conditional_toy_samples_the_asked_class_with_and_without_guidance(tmp_path):
    work = str(tmp_path / "run")
    base = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={ROOT}/configs/gmm_vp_mlp_cond.py",
            f"--workdir={work}"]
    subprocess.run(base + ["--mode=train", "--config.training.n_iters=400"], check=True, capture_output=True, cwd=ROOT)
    means = toy_data.true_density("gmm").means.float()
    for w in ("0", "2"):
        args = ["--mode=sample", "--config.sampling.class_label=5", f"--config.sampling.guidance_scale={w}",
                "--config.sampling.method=dpmpp_2m", "--config.sampling.steps=20", "--config.sampling.n_samples=300",
                f"--eval_folder=eval_w{w}"]
        r = subprocess.run(base + args, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        folder = os.path.join(work, f"eval_w{w}", [f for f in os.listdir(os.path.join(work, f"eval_w{w}"))
                                                  if os.path.isdir(os.path.join(work, f"eval_w{w}", f))][0])
        x = torch.from_numpy(np.concatenate([np.load(os.path.join(folder, f))["samples"] for f in os.listdir(folder)]))
        share = (torch.cdist(x, means).argmin(1) == 5).float().mean().item()
        assert share > 0.9, (w, share)
