"""CIFAR-10 with the sub-VP SDE and DDPM++; `:small` (default, CPU) or `:paper` width."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    return get_image_config("cifar10", "subvpsde", "ddpmpp", width or "small")
