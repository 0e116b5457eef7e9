"""Fashion-MNIST, VP SDE, DDPM++ `small`, with trained EMA weights shipped in score_toolkit/pretrained/.

    python main.py --mode sample --config configs/fashionmnist_vp_ddpmpp_pretrained.py

samples on a fresh clone with no training and no data files (eval's loss, NLL and FID need the
data). The weights are the EMA weights of `configs/fashionmnist_vp_ddpmpp.py` after 5,675 steps
at batch 64 (one H100), written by `--mode export`; README.md gives the figures. Sampling is the
probability-flow ODE with 25 RK4 steps (100 score calls per batch).
"""
from score_toolkit import pretrained_path
from configs.fashionmnist_vp_ddpmpp import get_config as get_base_config

WEIGHTS = pretrained_path("fashionmnist_vp_ddpmpp_small.pt")  # package data: found after any install


def get_config():
    config = get_base_config("small")
    config.eval.weights_path = WEIGHTS
    s = config.sampling
    s.method, s.ode_method, s.ode_steps, s.denoise = "ode", "rk4", 25, True
    s.n_samples, s.batch_size = 64, 64
    return config
