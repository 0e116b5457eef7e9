"""Eight 2-D Gaussians with the VP SDE: the data density is known, so eval shows the true NLL beside the model's."""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.data.name = "gmm"
    return config
