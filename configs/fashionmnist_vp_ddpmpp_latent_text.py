"""Text-to-image on Fashion-MNIST, offline: the latent model of configs/fashionmnist_vp_ddpmpp_latent.py
conditioned on captions made from each training image's class and measured attributes (brightness, size,
which way footwear points; score_toolkit/captions.py). A small transformer trained from scratch encodes
the caption (its vocabulary is built from the captions and saved with the weights); the U-Net reads it
by cross-attention (SpatialTransformer blocks at 8x8 and 4x4), and the encoding of its last token is added to
the time embedding (GLIDE). 10% caption dropout gives the null caption for classifier-free guidance:

    python main.py --mode sample --config configs/fashionmnist_vp_ddpmpp_latent_text.py \\
        --config.sampling.prompt="a dark sneaker pointing right" --config.sampling.guidance_scale=2
"""
from configs.fashionmnist_vp_ddpmpp_latent import get_config as latent_config


def get_config(width: str = "small"):
    config = latent_config(width)
    t = config.text
    t.encoder, t.dim, t.depth, t.heads, t.max_len, t.p_uncond = "transformer", 64, 2, 4, 16, 0.1
    m = config.model
    m.context_dim, m.context_resolutions, m.context_heads = t.dim, (8, 4), 4
    m.context_dim_head, m.context_depth, m.max_context_len, m.context_pool = 0, 1, t.max_len, True
    config.sampling.guidance, config.sampling.guidance_scale = "cfg", 0.0
    return config
