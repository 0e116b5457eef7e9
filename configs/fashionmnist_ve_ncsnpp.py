"""Fashion-MNIST (32x32, padded) with the VE SDE and NCSN++; `:small` (default, CPU) or `:paper` width."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    return get_image_config("fashion_mnist", "vesde", "ncsnpp", width or "small")
