"""The 2-D swiss roll with the VE SDE (sigma_max = 10: the data span ~4) and an NCSN-style MLP."""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.sde.name = "vesde"
    config.sde.sigma_max = 10.0
    config.model.embedding_type = "fourier"
    config.model.scale_by_sigma = True
    config.model.scale_input_by_sigma = True
    config.sampling.eps = 1e-5
    return config
