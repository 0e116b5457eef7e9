"""Fashion-MNIST, VP SDE, class-conditional DDPM++ `small` with shipped weights: classifier-free guidance.

    python main.py --mode sample --config configs/fashionmnist_vp_ddpmpp_cond_pretrained.py

samples every class (a grid with one row per class) on a fresh clone, with no training and no data
files. The weights are the EMA weights of `configs/fashionmnist_vp_ddpmpp_cond.py` (10 classes,
label dropout 0.1) after 3,150 steps at batch 128 (one H200), written by `--mode export`; README.md
gives accuracy and FID per guidance scale. Sampling: DPM-Solver++(2M), 20 steps, w = 1.
"""
from score_toolkit import pretrained_path
from configs.fashionmnist_vp_ddpmpp_cond import get_config as get_base_config

WEIGHTS = pretrained_path("fashionmnist_vp_ddpmpp_cond_small.pt")  # package data: found after any install


def get_config():
    config = get_base_config("small")
    config.eval.weights_path = WEIGHTS
    config.training.batch_size = 128  # as trained: a workdir's config names how its weights were made
    s = config.sampling
    s.method, s.steps, s.guidance, s.guidance_scale = "dpmpp_2m", 20, "cfg", 1.0
    s.n_samples, s.batch_size = 100, 100
    return config
