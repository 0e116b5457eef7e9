"""Fashion-MNIST, VP SDE, class-conditional DDPM++ (10 classes, 10% label dropout); `:small` (default) or `:paper`."""
from configs.image_defaults import get_image_config


def get_config(width: str = "small"):
    config = get_image_config("fashion_mnist", "vpsde", "ddpmpp", width or "small")
    # Labels 0..9 name the classes; label 10 is the null label, which training gives to 10% of the
    # images, so one network gives p(x | y) and p(x) for classifier-free guidance.
    config.model.num_classes = 10
    config.model.p_uncond = 0.1
    # The probability-flow ODE with 25 RK4 steps (100 score calls), as for the shipped DDPM++ weights.
    s = config.sampling
    s.method, s.ode_method, s.ode_steps, s.denoise = "ode", "rk4", 25, True
    return config
