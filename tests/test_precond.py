"""The preconditioning wrapper against the exact score, x0 and noise estimates of a Gaussian mixture,
for every SDE and parametrization; its losses against the score-space loss; conditioning checks."""
import pytest
import torch

import models
import samplers
from models.precond import Precond, noise_label
from score_toolkit import losses
from tests.helpers import make_sdes, random_mixture


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


class Fixed(torch.nn.Module):
    """F = `value` everywhere; records the input and the noise label it is called with."""

    def __init__(self, value):
        super().__init__()
        self.value, self.seen = value, []

    def forward(self, x, c_noise):
        self.seen.append((x, c_noise))
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_edm_coefficients_of_each_parametrization(sde_name):
    """D = c_skip x + c_out F(c_in x, c_noise), as in EDM's Table 1 (VE's 'score' network with c_out sigma^2
    is EDM's VE preconditioning c_out = sigma once the network divides by sigma itself): read off the
    wrapper's denoise as D(x; F = 0) = c_skip x and D(0; F = 1) = c_out, with c_in = 1 and c_noise the
    network's inputs."""
    sde = make_sdes()[sde_name]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    expected = {"eps": (1 / alpha, -sigma / alpha), "score": (1 / alpha, sigma ** 2 / alpha), "x0": (0 * t, 1 + 0 * t),
                "v": (alpha / (alpha ** 2 + sigma ** 2), -sigma / (alpha ** 2 + sigma ** 2))}
    x = torch.tensor([[1.5], [-0.5], [2.0]], dtype=torch.float64)
    for param, (c_skip, c_out) in expected.items():
        zero, one = Fixed(0.0), Fixed(1.0)
        torch.testing.assert_close(Precond(sde, zero, param).denoise(x, t)[:, 0], c_skip * x[:, 0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(Precond(sde, one, param).denoise(0 * x, t)[:, 0], c_out, rtol=1e-12, atol=1e-15)
        (x_in, label), = zero.seen
        assert torch.equal(x_in, x)  # c_in = 1
        torch.testing.assert_close(label, 999 * t if sde_name == "vp" else sigma, rtol=1e-15, atol=0)
        torch.testing.assert_close(label, noise_label(sde, t))


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


def test_bad_parametrization_is_refused():
    with pytest.raises(ValueError, match="parametrization must be one of .*'eps'.*got 'epsilon'"):
        Precond(make_sdes()["vp"], torch.nn.Identity(), "epsilon")


class Declared(torch.nn.Module):
    cond_keys = ("y",)

    def forward(self, x, c_noise, y=None):
        return -x if y is None else -x + y[:, None].to(x.dtype)


def test_the_wrapper_takes_the_conditioning_its_network_declares():
    sde = make_sdes()["vp"]
    x, t = torch.zeros(2, 2), torch.full((2,), 0.5)
    wrapper = Precond(sde, Declared())
    assert wrapper.cond_keys == ("y",) and Precond(sde, torch.nn.Identity()).cond_keys == ()
    assert not torch.equal(wrapper(x, t, y=torch.tensor([0, 1])), wrapper(x, t))  # y reaches the network
    assert wrapper.select({"y": 1, "mask": 2}) == {"y": 1}
    # Conditioning the network does not take is refused once per run, before the first call.
    with pytest.raises(TypeError, match=r"conditioning 'mask' is not taken by the score function Precond; it takes \['y'\]"):
        samplers.ddim_sample(sde, wrapper, (2, 2), steps=2, cond={"mask": torch.ones(2, 2)})


def test_a_network_that_declares_nothing_takes_what_its_forward_takes():
    """Without a cond_keys attribute, the keyword parameters of forward after (x, c_noise) say what a
    network takes (sde_lib.checks.cond_keys: "or else by its signature")."""
    class Labelled(torch.nn.Module):
        def forward(self, x, c_noise, y=None):
            return x

    wrapper = Precond(make_sdes()["vp"], Labelled())
    assert wrapper.cond_keys == ("y",)
    assert wrapper.select({"y": 1, "mask": 2}) == {"y": 1}  # training on labelled data passes y on
