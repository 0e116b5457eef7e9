"""Fashion-MNIST at 16x16 (the 2 x 2 block means of the padded 32x32 images), VP SDE, DDPM++ (`:small`,
CPU): the base stage of a 16 -> 32 cascade under configs/fashionmnist_vp_ddpmpp_sr.py. With the option
`:small,size8`, at 8x8 (the 4 x 4 block means): the base of an 8 -> 16 -> 32 cascade."""
from configs.image_defaults import get_image_config, options


def get_config(arg: str = "small"):
    width, opts = options(arg, ("size8",))
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width)
    size = 8 if "size8" in opts else 16
    config.data.image_size = config.model.image_size = size
    config.model.ch_mult, config.model.attn_resolutions = (1, 2, 2), (size // 2,)
    return config
