"""Linear observations and the exact posterior of a Gaussian mixture given one: the operators' SVDs, and
the mixture's conditional against direct numerical integration."""

import pytest
import torch

import sde_lib
from samplers.observations import AveragePooling, Colorization, Inpainting, MatrixObservation
from sde_lib import GaussianMixture

F64 = torch.float64


def operators():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 4, 4, generator=g) < 0.4
    return {"inpaint": Inpainting(mask), "pool": AveragePooling((2, 4, 4), 2), "color": Colorization((3, 2, 4)),
            "matrix": MatrixObservation(torch.randn(5, 8, generator=g, dtype=F64)),
            "wide": MatrixObservation(torch.randn(3, 2, generator=g, dtype=F64) @ torch.randn(2, 6, generator=g, dtype=F64))}


@pytest.mark.parametrize("name", ["inpaint", "pool", "color", "matrix", "wide"])
def test_each_operator_is_its_svd(name):
    op = operators()[name]
    A = op.matrix()
    d = op.d
    x = torch.randn(7, *op.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(7, op.m, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op(x), x.reshape(7, -1) @ A.T)
    torch.testing.assert_close(op.adjoint(y).reshape(7, -1), y @ A)          # <Ax, y> = <x, A^T y>
    torch.testing.assert_close(op.v(op.vt(x)), x)                           # V orthogonal
    z = torch.randn(7, d, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op.vt(op.v(z)), z)
    # the singular values are A's nonzero ones, and the observed directions are the first r of V^T x
    expected = torch.linalg.svdvals(A)
    expected = expected[expected > 1e-9 * expected.max()]
    torch.testing.assert_close(op.singulars.sort().values, expected.sort().values)
    torch.testing.assert_close(op.ut(op(x))[:, :op.r], op.vt(x)[:, :op.r] * op.singulars)
    if name == "wide":
        assert op.r == 2 and op.m == 3  # a rank-deficient A: y's third direction is noise alone


def test_average_pooling_is_the_block_mean():
    op = AveragePooling((1, 4, 4), 2)
    x = torch.arange(16, dtype=F64).reshape(1, 1, 4, 4)
    torch.testing.assert_close(op(x), torch.nn.functional.avg_pool2d(x, 2).reshape(1, -1))


def test_colorization_is_the_channel_mean():
    x = torch.randn(2, 3, 2, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(Colorization((3, 2, 4))(x), x.mean(1).reshape(2, -1))


def test_bad_operators_are_refused():
    with pytest.raises(ValueError, match="mask must hold 0 and 1"):
        Inpainting(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="observes nothing"):
        Inpainting(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by an integer factor"):
        AveragePooling((1, 6, 6), 4)
    with pytest.raises(ValueError, match="Colorization needs shape"):
        Colorization((1, 4, 4))
    with pytest.raises(ValueError, match="A is zero"):
        MatrixObservation(torch.zeros(2, 3))
    op = Inpainting(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="x must be \\[B, 2\\]"):
        op(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="the observation y must be \\[B, 1\\]"):
        op.adjoint(torch.zeros(3, 2))


def mixture():
    return GaussianMixture([0.3, 0.5, 0.2], [[-1.0, -1.0], [1.0, 0.8], [0.2, 2.0]],
                           [[[0.5, 0.4], [0.4, 0.6]], [[0.4, -0.3], [-0.3, 0.5]], [[0.2, 0.0], [0.0, 0.3]]])


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
def test_the_mixtures_posterior_is_bayes_rule_by_quadrature(sigma_y):
    """Observe y = x_0 + sigma_y n: the posterior of x_1 (and of x_0) by integrating p(x) p(y | x) on a fine
    grid against the closed form's mean, variance and mode weights."""
    gm, y = mixture(), 0.4
    post = gm.condition(torch.tensor([[1.0, 0.0]]), torch.tensor([y]), sigma_y)
    u = torch.arange(-7, 7, 0.01, dtype=F64)  # the rectangle rule: spectrally accurate for Gaussians
    X0, X1 = torch.meshgrid(u, u, indexing="ij") if sigma_y > 0 else (torch.full_like(u, y)[None], u[None])
    pts = torch.stack([X0.reshape(-1), X1.reshape(-1)], 1)
    like = torch.exp(-0.5 * (pts[:, 0] - y) ** 2 / sigma_y ** 2) if sigma_y > 0 else torch.ones(len(pts), dtype=F64)
    dens = gm.log_prob(pts).exp() * like
    dens = dens / dens.sum()
    resp = gm.posterior(pts)                                    # p(k | x): the same given y, a function of x
    torch.testing.assert_close(post.weights, (dens[:, None] * resp).sum(0), rtol=1e-6, atol=1e-9)
    mean = (dens[:, None] * pts).sum(0)
    torch.testing.assert_close(post.mean(), mean, rtol=1e-6, atol=1e-9)
    cov = (dens[:, None, None] * (pts - mean)[:, :, None] * (pts - mean)[:, None, :]).sum(0)
    torch.testing.assert_close(post.covariance(), cov, rtol=1e-5, atol=1e-9)


def test_the_mixture_at_time_t_is_its_marginal():
    gm, sde = mixture(), sde_lib.VPSDE()
    x = torch.randn(10, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gm.at(sde, 0.3).log_prob(x), gm.log_prob(x, sde, torch.tensor(0.3)))


def test_bad_conditions_are_refused():
    gm = mixture()
    with pytest.raises(ValueError, match="A must be \\[m, 2\\] and y \\[m\\]"):
        gm.condition(torch.ones(1, 3), torch.ones(1))
    with pytest.raises(ValueError, match="sigma_y must be >= 0"):
        gm.condition(torch.ones(1, 2), torch.ones(1), -0.1)
