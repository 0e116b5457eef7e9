"""Log-SNR, its inverse and the t <-> sigma maps in closed form; time grids and their checks."""
import math

import pytest
import torch

import samplers
import sde_lib
from samplers import grids

SDES = {"vp": sde_lib.VPSDE(), "vp_cosine": sde_lib.VPSDE(schedule="cosine"), "subvp": sde_lib.subVPSDE(),
        "subvp_cosine": sde_lib.subVPSDE(schedule="cosine"), "ve": sde_lib.VESDE()}


@pytest.mark.parametrize("name", SDES)
def test_log_snr_closed_forms_and_inverses(name):
    sde = SDES[name]
    t = torch.linspace(1e-5, sde.T, 2001, dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    lam = sde.log_snr(t)
    torch.testing.assert_close(lam, alpha.log() - sigma.log(), rtol=1e-12, atol=1e-12)
    assert torch.all(lam[1:] < lam[:-1])                                       # strictly decreasing
    assert (sde.t_from_log_snr(lam) - t).abs().max() < 1e-10                   # round trip in float64
    numeric = sde_lib.SDE.t_from_log_snr(sde, lam)                             # bisection, no closed form
    assert (sde.t_from_log_snr(lam) - numeric).abs().max() < 1e-10
    assert (sde.t_from_sigma(sigma[:-10]) - t[:-10]).abs().max() < 1e-9        # sigma(t) -> 1 flattens for VP at T
    assert (sde_lib.SDE.t_from_sigma(sde, sigma[:-10]) - t[:-10]).abs().max() < 1e-9


def test_log_snr_of_the_linear_vp_schedule_by_hand():
    sde = SDES["vp"]
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    B = 0.1 * t + 0.5 * (20 - 0.1) * t ** 2
    torch.testing.assert_close(sde.log_snr(t), 0.5 * torch.log(torch.exp(-B) / (1 - torch.exp(-B))))
    assert float(SDES["ve"].log_snr(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(-math.log(0.01))


@pytest.mark.parametrize("grid", ["uniform_t", "uniform_log_snr", "karras", "quadratic"])
@pytest.mark.parametrize("name", ["vp", "ve", "subvp_cosine"])
def test_grids_run_from_T_to_eps_strictly_decreasing(grid, name):
    sde = SDES[name]
    t = samplers.get_grid(grid, sde, 7, 1e-3)
    assert t.dtype == torch.float64 and t.shape == (8,)
    assert float(t[0]) == sde.T and float(t[-1]) == 1e-3
    assert torch.all(t[1:] < t[:-1])


def test_grid_spacings_are_what_they_say():
    vp, ve = SDES["vp"], SDES["ve"]
    lam = vp.log_snr(grids.uniform_log_snr(vp, 10, 1e-3))
    torch.testing.assert_close(lam.diff(), torch.full((10,), float(lam.diff()[0]), dtype=torch.float64))
    # EDM's Karras schedule in sigma for VE: (s_max^(1/7) + i/n (s_min^(1/7) - s_max^(1/7)))^7
    i = torch.arange(11, dtype=torch.float64) / 10
    edm = (50 ** (1 / 7) + i * (0.01 ** (1 / 7) - 50 ** (1 / 7))) ** 7
    torch.testing.assert_close(ve.marginal_coeffs(grids.karras(ve, 10, 1e-12))[1], edm, rtol=1e-9, atol=0)
    q = grids.quadratic(vp, 4, 1e-3)
    torch.testing.assert_close(q, 1e-3 + (1 - 1e-3) * torch.tensor([1, 0.5625, 0.25, 0.0625, 0], dtype=torch.float64))


def test_bad_grids_are_refused_naming_the_argument():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=r"grid must be strictly decreasing .*grid\[1\] = 0.5 <= grid\[2\] = 0.6"):
        samplers.check_grid(torch.tensor([1.0, 0.5, 0.6]), sde)
    with pytest.raises(ValueError, match=r"grid must lie in \(0, T\] = \(0, 1\]"):
        samplers.check_grid(torch.tensor([1.5, 0.5]), sde)
    with pytest.raises(ValueError, match=r"grid must lie in \(0, T\]"):
        samplers.check_grid(torch.tensor([1.0, 0.0]), sde)
    with pytest.raises(ValueError, match="at least 2 times"):
        samplers.check_grid(torch.tensor([1.0]), sde)
    with pytest.raises(ValueError, match="unknown grid 'cosine'; registered grids: .*karras, quadratic"):
        samplers.get_grid("cosine", sde, 5, 1e-3)
    calls = []
    with pytest.raises(ValueError, match="grid must be strictly decreasing"):
        samplers.pc_sample(sde, lambda x, t: calls.append(1) or -x, (4, 2), grid=torch.tensor([1.0, 0.2, 0.3]))
    assert not calls


def test_pc_on_an_explicit_grid_uses_its_times_and_its_own_langevin_factor():
    sde, seen = SDES["vp"], []
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 1e-3], dtype=torch.float64)
    samplers.pc_sample(sde, lambda x, t: seen.append(float(t[0])) or -x, (4, 2), grid=grid, corrector="none",
                       denoise=False, seed=0)
    assert seen == pytest.approx(grid[:-1].tolist(), rel=1e-6)
    # Langevin's VP factor is alpha(t)^2 / alpha(t_next)^2 of the sampler's own step, not of sde.N
    t, s = torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    a = sde.marginal_coeffs(t)[0] / sde.marginal_coeffs(s)[0]
    torch.testing.assert_close(sde.langevin_alpha(t, s), a ** 2)
