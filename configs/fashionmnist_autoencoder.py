"""The autoencoder of a Fashion-MNIST latent model (--mode autoencoder), on the padded 32x32 images.

`:kl_f4` (default): KL-regularised, f = 4 (32x32x1 -> 8x8x4, 4x fewer dimensions), KL weight 1e-6 (the value
of latent-diffusion's f = 4 models), L1 reconstruction. `:kl_f2` (16x16x2) and `:kl_f8` (4x4x8) change the
factor at the same 1/4 ratio of dimensions but for f = 8 (1/2); `:vq_f4` is a VQ autoencoder with 256 codes
of dimension 4. Options after the name, comma-separated: `gan` (the PatchGAN hinge loss with the adaptive
weight from step 2,000), `perceptual` (the feature classifier's features) and `fid` (the reconstructions'
classifier-FID when the run ends); both need the classifier and the data's statistics first:
`--mode classifier` and `--mode stats` with this config.
"""
from configs.image_defaults import get_image_config, options

FACTORS = {"f2": ((1, 2), 2), "f4": ((1, 2, 2), 4), "f8": ((1, 2, 2, 2), 8)}  # ch_mult, latent channels


def get_config(arg: str = "kl_f4"):
    name, opts = options(arg or "kl_f4", ("gan", "perceptual", "fid"))
    kind, _, factor = name.partition("_")
    if kind not in ("kl", "vq") or factor not in FACTORS:
        raise ValueError(f"config argument must be kl_f2, kl_f4, kl_f8, vq_f2, vq_f4 or vq_f8, got {name!r}")
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", "small")
    a = config.autoencoder
    a.kind, (a.ch_mult, a.latent_channels) = kind, FACTORS[factor]
    a.nf, a.num_res_blocks, a.batch_size, a.n_iters = 32, 1, 64, 4000
    if "gan" in opts:
        a.disc_weight, a.disc_start = 0.5, 2000
    if "perceptual" in opts:
        a.perceptual_weight = 1.0
    if opts & {"perceptual", "fid"}:  # the classifier of --mode classifier, at the path that mode writes by default
        e = config.eval
        e.feature_extractor, e.feature_path = "classifier", "workdirs/classifier_fashion_mnist.pt"
        e.stats_path = "workdirs/stats_fashion_mnist.npz"
    return config
