"""Fashion-MNIST, VP SDE, DDPM++ with a variance head trained by improved DDPM's hybrid objective
L_simple + 0.001 L_vlb (the mean's gradient stopped in L_vlb) on the SDE's 1000-step chain; otherwise
`configs/fashionmnist_vp_ddpmpp.py` (`:small` by default, `:paper` for GPUs). It samples ancestrally with
its learned variances on 50 strided steps, and its evaluation reports the chain's bound beside the ODE's
bits/dim:

    python main.py --mode train --config configs/fashionmnist_vp_ddpmpp_hybrid.py --workdir workdirs/fm_hybrid
    python main.py --mode eval  --config configs/fashionmnist_vp_ddpmpp_hybrid.py --workdir workdirs/fm_hybrid
"""
from configs.fashionmnist_vp_ddpmpp import get_config as get_base_config


def get_config(width: str = "small"):
    config = get_base_config(width or "small")
    config.model.learn_variance = True
    config.training.objective = "hybrid"
    s = config.sampling
    s.method, s.steps, s.grid, s.variance = "ancestral", 50, "ddpm_strided", "learned_range"
    e = config.eval
    e.enable_bound, e.bound_steps, e.bound_variance = True, 50, "learned_range"
    return config
