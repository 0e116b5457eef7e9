"""A Fashion-MNIST latent model (Rombach et al. 2022): VP SDE, DDPM++ (`:small`) on the 8x8x4 latents of
the f = 4 KL autoencoder of configs/fashionmnist_autoencoder.py, whose workdir config.latent.autoencoder
names (train it first: `python main.py --mode autoencoder --config configs/fashionmnist_autoencoder.py`).
Its width is the pixel model's (configs/fashionmnist_vp_ddpmpp.py:small); its levels run at 8, 4 and 2
pixels, with self-attention at 4. Samples are decoded to 32x32 images."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width or "small")
    config.latent.autoencoder = "workdirs/fashionmnist_autoencoder"
    config.model.num_channels, config.model.image_size = 4, 8
    config.model.attn_resolutions = (4,)
    return config
