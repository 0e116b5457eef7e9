"""Fashion-MNIST at 16x16 (the 2 x 2 block means of the padded 32x32 images), VP SDE,
DDPM++ (`:small`, CPU): the base stage of a 16 -> 32 cascade under configs/fashionmnist_vp_ddpmpp_sr.py."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width or "small")
    config.data.image_size = config.model.image_size = 16
    config.model.ch_mult, config.model.attn_resolutions = (1, 2, 2), (8,)
    return config
