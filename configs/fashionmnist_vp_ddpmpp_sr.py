"""Fashion-MNIST super-resolution, 16x16 -> 32x32 (padded), VP SDE, DDPM++ (`:small` default, CPU, or
`:paper` width): the second stage of a 16 -> 32 cascade, its low-resolution input noised at a level
s ~ U[0, 0.5] in training (Ho et al. 2021's noise-conditioning augmentation) and sampled at s = 0.2."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width or "small")
    config.model.sr_from = 16
    config.training.sr_aug_max = 0.5
    config.sampling.aug_level = 0.2
    config.eval.enable_nll = False
    return config
