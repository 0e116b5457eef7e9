"""Fashion-MNIST super-resolution, 16x16 -> 32x32 (padded), VP SDE, DDPM++ (`:small` default, CPU, or
`:paper` width): the second stage of a 16 -> 32 cascade, its low-resolution input noised at a level
s ~ U[0, 0.5] in training (Ho et al. 2021's noise-conditioning augmentation) and sampled at s = 0.2.

Options after the width, comma-separated (e.g. `configs/fashionmnist_vp_ddpmpp_sr.py:small,efficient`):
  from8      the 8x8 -> 16x16 stage of an 8 -> 16 -> 32 cascade (the 16x16 block means as the target)
  efficient  Imagen's efficient U-Net options (configs/image_defaults.py EFFICIENT)
  noaug      no noise-conditioning augmentation in training (sr_aug_max = 0), sampled at level 0
"""
import ml_collections

from configs.image_defaults import EFFICIENT, get_image_config, options


def get_config(arg: str = "small"):
    width, opts = options(arg, ("from8", "efficient", "noaug"))
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width)
    config.model.sr_from = 16
    config.training.sr_aug_max = 0.5
    config.sampling.aug_level = 0.2
    config.eval.enable_nll = False
    if "from8" in opts:
        config.data.image_size = config.model.image_size = 16
        config.model.sr_from, config.model.attn_resolutions = 8, (8,)
    if "efficient" in opts:
        attn = tuple(r // 2 for r in config.model.attn_resolutions)  # level 0's blocks run at half the size
        config.model = ml_collections.ConfigDict({**config.model.to_dict(), **EFFICIENT, "attn_resolutions": attn})
    if "noaug" in opts:
        config.training.sr_aug_max = config.sampling.aug_level = 0.0
    return config
