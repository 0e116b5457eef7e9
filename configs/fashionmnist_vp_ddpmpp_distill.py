"""Fashion-MNIST, VP SDE, DDPM++ `small`: a few-step student of the shipped weights (score_toolkit/pretrained/),
trained by --mode distill. The argument picks the method (default `progressive`):

    python main.py --mode distill --config configs/fashionmnist_vp_ddpmpp_distill.py:progressive
    python main.py --mode distill --config configs/fashionmnist_vp_ddpmpp_distill.py:cd      # consistency distillation
    python main.py --mode distill --config configs/fashionmnist_vp_ddpmpp_distill.py:ct      # consistency training

progressive: DDIM with 64 steps on the uniform-t grid, halved 6 times to 1 step, 300 training steps each, the
loss weighted by the SNR (the teacher's eps-loss: with this eps-predicting network the truncated-SNR weight makes
the x-space errors at t = T, amplified 1 / alpha_T ~ 150 times, dominate every batch);
each halving's student is written to <workdir>/distilled/steps_<n>.pt. Sampling: DDIM with distill.final_steps
steps (--config.sampling.steps=n with --config.eval.weights_path=<workdir>/distilled/steps_<n>.pt for another).
cd / ct: a consistency model (N = 18 boundaries, target EMA 0.95), the teacher's Heun step for cd, started from the
teacher's weights in both; 1800 steps. Sampling: one-step consistency sampling (--config.sampling.steps=k for k).
All train at batch 32 with Adam at 1e-4, no dropout and no warm-up: the student starts from a trained network.
"""
from configs.fashionmnist_vp_ddpmpp_pretrained import WEIGHTS
from configs.image_defaults import get_image_config

METHODS = {"progressive": "progressive", "cd": "consistency_distillation", "ct": "consistency_training"}


def get_config(method: str = "progressive"):
    if method not in METHODS:
        raise ValueError(f"the config's argument must be one of {', '.join(METHODS)}, got {method!r}")
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", "small")
    d, t, s = config.distill, config.training, config.sampling
    d.method, d.teacher = METHODS[method], WEIGHTS
    config.model.dropout = 0.0
    config.optim.lr, config.optim.warmup = 1e-4, 0
    t.batch_size, t.log_freq, t.checkpoint_freq, t.snapshot_freq = 32, 50, 200, 100000
    config.eval.enable_nll = False
    s.denoise = False  # the student's last step ends at the data: no extra Tweedie call
    if method == "progressive":
        d.teacher_steps, d.final_steps, d.steps_per_halving, d.weighting = 64, 1, 300, "snr"
        t.n_iters = 6 * d.steps_per_halving
        s.method, s.grid, s.steps = "ddim", d.grid, d.final_steps
    else:
        d.schedule, d.s1, d.mu0 = "fixed", 18, 0.95  # N = s1 = 18 boundaries, as Song et al.'s CD
        t.n_iters = 1800
        s.method, s.steps, s.grid = "consistency", 1, "karras"
    return config
