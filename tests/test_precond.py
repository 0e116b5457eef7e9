"""The preconditioning wrapper against the exact score, x0 and noise estimates of a Gaussian mixture,
for every SDE and parametrization; its losses against the score-space loss; conditioning checks."""
import pytest
import torch

import models
from models.precond import Precond
from score_toolkit import losses
from tests.conftest import make_sdes, random_mixture


class OracleNet(torch.nn.Module):
    """A 'network' that returns the exact target of a parametrization, recovering t from its noise label.

    Targets are written from their definitions (x_t = alpha x0 + sigma z), independently of the
    wrapper's coefficient table: eps = E[z | x_t], score, x0 = E[x0 | x_t], v = alpha eps - sigma x0.
    """

    def __init__(self, sde, gm, param):
        super().__init__()
        self.sde, self.gm, self.param = sde, gm, param

    def forward(self, x, c_noise):
        t = c_noise / 999 if self.sde.conditioning == "time" else self.sde.t_from_sigma(c_noise)
        alpha, sigma = (v[:, None] for v in self.sde.marginal_coeffs(t))
        s = self.gm.score(x, self.sde, t)
        x0 = (x + sigma ** 2 * s) / alpha
        eps = -sigma * s
        return {"eps": eps, "score": s, "x0": x0, "v": alpha * eps - sigma * x0}[self.param]


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("param", models.PARAMETRIZATIONS)
def test_wrapper_outputs_are_the_exact_score_x0_and_eps(sde_name, param):
    sde, gm = make_sdes()[sde_name], random_mixture(3, k=2, seed=3)
    wrapper = Precond(sde, OracleNet(sde, gm, param), param)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g, dtype=torch.float64) * (sde.T - 1e-3) + 1e-3
    x = gm.sample(64, g).double() * sde.marginal_coeffs(t)[0][:, None] + \
        torch.randn(64, 3, generator=g, dtype=torch.float64) * sde.marginal_coeffs(t)[1][:, None]
    s = gm.score(x, sde, t)
    alpha, sigma = (v[:, None] for v in sde.marginal_coeffs(t))
    torch.testing.assert_close(wrapper(x, t), s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(wrapper.denoise(x, t), (x + sigma ** 2 * s) / alpha, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(wrapper.eps(x, t), -sigma * s, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_edm_coefficients_of_each_parametrization(sde_name):
    """D = c_skip x + c_out F, as in EDM's Table 1 (VE's 'score' network with c_out sigma^2 is EDM's
    VE preconditioning c_out = sigma once the network divides by sigma itself)."""
    sde = make_sdes()[sde_name]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    expected = {"eps": (1 / alpha, -sigma / alpha), "score": (1 / alpha, sigma ** 2 / alpha), "x0": (0 * t, 1 + 0 * t),
                "v": (alpha / (alpha ** 2 + sigma ** 2), -sigma / (alpha ** 2 + sigma ** 2))}
    for param, (c_skip, c_out) in expected.items():
        c = Precond(sde, torch.nn.Identity(), param).coefficients(t)
        torch.testing.assert_close(c["c_skip"], c_skip, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(c["c_out"], c_out, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(c["c_in"], torch.ones_like(t))
    label = Precond(sde, torch.nn.Identity()).coefficients(t)["c_noise"]
    torch.testing.assert_close(label, 999 * t if sde_name == "vp" else sigma)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("param", models.PARAMETRIZATIONS)
def test_loss_through_raw_output_equals_score_space_loss(sde_name, param):
    """Training through F (no division by sigma) is the same objective as sigma^2 ||s_hat - s||^2,
    for an imperfect network too: the oracle plus a perturbation."""
    sde, gm = make_sdes()[sde_name], random_mixture(2, k=2, seed=4)
    net = OracleNet(sde, gm, param)

    class Perturbed(torch.nn.Module):
        def forward(self, x, c_noise):
            return net(x, c_noise) + 0.1 * torch.sin(3 * x)

    wrapper = Precond(sde, Perturbed(), param)
    x0 = gm.sample(256, torch.Generator().manual_seed(1)).double()
    for weighting in ("std2", "likelihood"):
        loss_fn = losses.get_loss_fn(sde, weighting=weighting)
        raw = loss_fn(wrapper, x0, torch.Generator().manual_seed(2))
        via_score = loss_fn(lambda x, t: wrapper(x, t), x0, torch.Generator().manual_seed(2))
        torch.testing.assert_close(raw, via_score, rtol=1e-9, atol=0)


def test_bad_parametrization_and_conditioning_are_refused():
    sde = make_sdes()["vp"]
    with pytest.raises(ValueError, match="parametrization must be one of .*'eps'.*got 'epsilon'"):
        Precond(sde, torch.nn.Identity(), "epsilon")

    class Labelled(torch.nn.Module):
        def forward(self, x, c_noise, y=None):
            return x

    x, t = torch.zeros(2, 2), torch.full((2,), 0.5)
    wrapper = Precond(sde, Labelled())
    assert wrapper.cond_keys == ("y",)
    wrapper(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="'mask' is not taken by network Labelled; it takes \\['y'\\]"):
        wrapper(x, t, mask=torch.ones(2, 2))
    assert wrapper.select({"y": 1, "mask": 2}) == {"y": 1}
    assert Precond(sde, torch.nn.Identity()).cond_keys == ()
