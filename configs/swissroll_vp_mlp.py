"""The default: the 2-D swiss roll, the VP SDE, a small MLP. Trains in about a minute on a laptop CPU."""
from configs.default import get_default_config


def get_config():
    return get_default_config()
