"""The bottom floor: linear SDEs (`sde_lib.sdes`), and what every layer above shares: the argument
checks (`sde_lib.checks`), the one registry class (`sde_lib.registry`) and Gaussian mixtures with
exact scores and log-densities at every time (`sde_lib.analytic`). It imports nothing of the
project above it.

    import sde_lib
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    mixture = sde_lib.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.25, 0.09])
    score_fn = mixture.score_fn(sde)          # the exact score_fn(x, t) of the noised mixture
"""
from sde_lib.sdes import SDE, SDES, VESDE, VPSDE, ReverseSDE, append_dims, get_sde, subVPSDE
from sde_lib.analytic import GaussianMixture
from sde_lib import analytic, checks, registry, reverse_step  # noqa: F401

__all__ = ["append_dims", "SDE", "VPSDE", "subVPSDE", "VESDE", "ReverseSDE", "get_sde", "SDES", "GaussianMixture"]
