"""Shared settings of the image configurations: data, SDE and network by name, at two widths.

`small` trains on a 2-core CPU (nf=32, ch_mult (1, 2, 2), 2 residual blocks, batch 64); `paper` is
the width of Song et al. 2021 for CIFAR-10 (nf=128, ch_mult (1, 2, 2, 2), 4 blocks, batch 128),
for GPUs. Select with the config file's argument: `--config configs/<file>.py:paper`.
"""
import ml_collections

from configs.default import get_default_config

DATA = {
    # 1x28x28 padded with zeros to 32x32, so the reference's 32x32 networks apply unchanged.
    "fashion_mnist": dict(name="fashion_mnist", root="", image_size=32, num_channels=1, pad_to=32, random_flip=False),
    "cifar10": dict(name="cifar10", root="data/cifar10", image_size=32, num_channels=3, pad_to=0, random_flip=True),
}
NETWORK = {  # the reference's choices for each network at CIFAR-10
    "ncsnpp": dict(fir=True, fir_kernel=(1, 3, 3, 1), resblock_type="biggan", progressive="none",
                   progressive_input="residual", progressive_combine="sum", embedding_type="fourier",
                   fourier_scale=16.0, scale_by_sigma=True, skip_rescale=True, init_scale=0.0,
                   resample_first=False, skip_scale=1.0),
    "ddpmpp": dict(fir=False, resblock_type="biggan", progressive="none", progressive_input="none",
                   embedding_type="positional", scale_by_sigma=False, skip_rescale=True, init_scale=0.0,
                   resample_first=False, skip_scale=1.0),
}
# Imagen's efficient U-Net (models/ncsnpp.py): more blocks at low resolution, resampling before the
# down blocks and after the up blocks, skip features scaled by 1/sqrt(2). For a 3-level network.
EFFICIENT = dict(num_res_blocks=(1, 2, 4), resample_first=True, skip_scale=2 ** -0.5)


def options(arg: str, allowed) -> tuple:
    """A config file's argument "<width>[,<option>...]" as (width, set of options); ValueError naming
    what is not allowed."""
    width, *opts = (arg or "small").split(",")
    bad = sorted(set(opts) - set(allowed))
    if bad:
        raise ValueError(f"config argument options must be among {sorted(allowed)}, got {bad}")
    return width, set(opts)
WIDTH = {
    "small": dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    "paper": dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1),
}


def get_image_config(data: str, sde: str, network: str, width: str) -> ml_collections.ConfigDict:
    if width not in WIDTH:
        raise ValueError(f"config argument (width) must be one of {sorted(WIDTH)}, got {width!r}")
    config = get_default_config()
    config.num_threads = 0  # convolutions use every core
    config.device = "auto"  # a GPU when there is one
    config.data = ml_collections.ConfigDict(dict(kind="images", centered=True, **DATA[data]))
    config.sde.name = sde
    config.model = ml_collections.ConfigDict(dict(
        name=network, ema_rate=0.999 if width == "small" else 0.9999, parametrization="auto", centered=True,
        num_channels=config.data.num_channels, image_size=config.data.image_size,
        resamp_with_conv=True, conditional=True, conv_size=3, **NETWORK[network], **WIDTH[width],
        num_classes=0, p_uncond=0.0, learn_variance=False, sr_from=0, sr_upsample="bilinear",
        sr_p_uncond=0.0))  # see configs/default.py
    t = config.training
    t.batch_size, t.n_iters = (64, 30000) if width == "small" else (128, 1300001)
    t.log_freq, t.snapshot_freq, t.checkpoint_freq, t.keep_checkpoints = 50, 2000, 500, 3
    config.optim.lr, config.optim.warmup, config.optim.grad_clip = 2e-4, 500 if width == "small" else 5000, 1.0
    s = config.sampling
    s.N, s.n_samples, s.batch_size = 1000, 64, 64
    s.eps = 1e-5 if sde == "vesde" else 1e-3
    s.predictor, s.corrector = ("reverse_diffusion", "langevin") if sde == "vesde" else ("euler_maruyama", "none")
    e = config.eval
    e.batch_size, e.n_nll, e.n_samples, e.divergence = 100, 1000, 10000, "rademacher"
    e.feature_extractor = "none"   # none | classifier | inception
    e.feature_path = ""            # the classifier file or the Inception TorchScript file
    e.stats_path = ""              # reference feature statistics (.npz) of the data
    e.classifier_steps = 3000      # training steps of the feature classifier (--mode classifier)
    return config
