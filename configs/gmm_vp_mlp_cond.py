"""Eight labelled 2-D Gaussians (label = component), VP SDE, a class-conditional MLP with 10% label dropout."""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.data.name = "gmm"
    # Labels 0..7 name the mixture components; label 8 is the null label, which training gives to 10%
    # of the points, so one network gives p(x | y) and p(x) for classifier-free guidance.
    config.model.num_classes = 8
    config.model.p_uncond = 0.1
    config.training.n_iters = 2000
    return config
