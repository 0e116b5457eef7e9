"""The 2-D swiss roll with the sub-VP SDE and a small MLP."""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.sde.name = "subvpsde"
    return config
