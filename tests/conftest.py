"""Shared fixtures: Gaussian-mixture data with closed-form scores and densities."""
import pytest
import torch

from score_toolkit import analytic
import sde_lib
from sde_lib import append_dims

# The known-answer tests run many small ops, for which one thread is faster than two
# (no thread hand-offs) and gives the same bits on every machine.
torch.set_num_threads(1)


def make_sdes():
    return {"vp": sde_lib.VPSDE(N=1000), "subvp": sde_lib.subVPSDE(N=1000), "ve": sde_lib.VESDE(N=1000)}


@pytest.fixture(params=["vp", "subvp", "ve"])
def sde(request):
    return make_sdes()[request.param]


def mixture_2d():
    """Two well-separated 2-D components with different weights and anisotropic stds."""
    return analytic.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [[0.25, 0.16], [0.09, 0.12]])


def random_mixture(dim: int, k: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g) * 1.5
    A = torch.randn(k, dim, dim, generator=g) * 0.3
    covs = A @ A.transpose(1, 2) + 0.1 * torch.eye(dim)
    w = torch.linspace(1, 2, k)
    return analytic.GaussianMixture(w, means, covs)


class Counted:
    """A score function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def point_mass_score(sde, mu):
    """The exact score of p_t = N(alpha_t mu, sigma_t^2 I): data that are the single point mu."""
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t.double())
        return (-(x - append_dims(alpha, x.ndim) * mu) / append_dims(sigma ** 2, x.ndim)).to(x.dtype)
    return score
