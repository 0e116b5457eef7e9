"""PC and ODE samplers against a 2-D Gaussian mixture with its exact score."""
import pytest
import torch

import samplers
import sde_lib
from sde_lib.analytic import GaussianMixture
from tests.helpers import assert_recovers, make_sdes, mixture_2d

N_SAMPLES = 3000
# No predictor and no corrector is not a sampler. Corrector-only sampling (annealed Langevin) takes 10 MCMC
# steps per level, 2-3 s a run: slow.
PAIRS = [pytest.param(p, c, marks=[pytest.mark.slow] if p == "none" else []) for p in samplers.list_predictors()
         for c in samplers.list_correctors() if (p, c) != ("none", "none")]

LAGGING = {("none", "ald", "vp"), ("none", "ald", "subvp")}


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("predictor, corrector", PAIRS)
def test_pc_recovers_mixture(sde_name, predictor, corrector):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    # Corrector-only sampling (NCSN's annealed Langevin) needs several, larger MCMC steps per level.
    n_steps, snr = (10, 0.2) if predictor == "none" else (1, 0.16)
    x, nfe = samplers.pc_sample(sde, gm.score_fn(sde), (N_SAMPLES, 2), predictor=predictor,
                                corrector=corrector, n_steps=n_steps, snr=snr, steps=200, seed=0)
    # Annealed Langevin alone steps by (snr sigma)^2, too little to follow the VP-type mean
    # alpha(t) mu back to mu as sigma -> 0: its means lag by ~0.18 here (it is a VE method).
    assert_recovers(gm, x, 0.25 if (predictor, corrector, sde_name) in LAGGING else 0.1)
    per_step = (predictor != "none") + (n_steps if corrector != "none" else 0)
    assert nfe == 200 * per_step + 1  # real score calls, plus the final Tweedie step


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_ode_sampler_recovers_mixture(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    x, nfe = samplers.ode_sample(sde, gm.score_fn(sde), (N_SAMPLES, 2), seed=0)
    assert_recovers(gm, x)
    assert 20 < nfe < 400


def test_fixed_step_ode_and_probability_flow_predictor_agree():
    """rk4 with many steps, and PC's Euler predictor on the ODE, follow the same flow as dopri5."""
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    z = sde.prior_sampling((64, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, _ = samplers.ode_sample(sde, gm.score_fn(sde), z.shape, x_T=z, rtol=1e-9, atol=1e-9)
    rk4, nfe = samplers.ode_sample(sde, gm.score_fn(sde), z.shape, x_T=z, method="rk4", steps=100)
    assert nfe == 400 and (rk4 - ref).abs().max() < 1e-4
    em, _ = samplers.pc_sample(sde, gm.score_fn(sde), z.shape, x_T=z, predictor="euler_maruyama",
                               corrector="none", probability_flow=True, steps=2000, denoise=False)
    assert (em - ref).abs().max() < 2e-2


def test_same_seed_same_samples_and_generator():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    a, _ = samplers.pc_sample(sde, gm.score_fn(sde), (16, 2), steps=20, seed=7)
    b, _ = samplers.pc_sample(sde, gm.score_fn(sde), (16, 2), steps=20, generator=torch.Generator().manual_seed(7))
    c, _ = samplers.pc_sample(sde, gm.score_fn(sde), (16, 2), steps=20, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_callback_sees_every_step_and_progress_bar_runs():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    seen = []
    samplers.pc_sample(sde, gm.score_fn(sde), (4, 2), steps=10, seed=0, progress=True,
                       callback=lambda d: seen.append((d["i"], d["t"])))
    assert [i for i, _ in seen] == list(range(10))
    assert abs(seen[-1][1] - sde.sampling_eps) < 1e-12 and seen[0][1] < sde.T


def test_langevin_per_sample_norms_are_batch_independent():
    sde = sde_lib.VESDE()
    corr = samplers.get_corrector("langevin")(sde, lambda x, t: -x, snr=0.16, n_steps=1, norm="sample")
    g, z = torch.randn(4, 8), torch.randn(4, 8)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    e1 = corr.step_size(g, z, t)
    g2, z2 = g.clone(), z.clone()
    g2[1:] *= 10  # change the other samples only
    e2 = corr.step_size(g2, z2, t)
    assert e1[0] == e2[0] and not torch.allclose(e1[1:], e2[1:])
    expected = 2 * (0.16 * 8 ** 0.5 / g[0].norm()) ** 2  # ||z|| -> sqrt(D), D = 8
    assert torch.allclose(e1[0].float(), expected)


def test_langevin_per_sample_norms_sample_high_dimensional_gaussian():
    """In 64-D, where ||s|| concentrates, per-sample norms sample N(0, v I) nearly as well as batch ones."""
    sde, gm = sde_lib.VPSDE(N=100), GaussianMixture([1.0], torch.zeros(1, 64), [0.5])
    var = {}
    for norm in ("batch", "sample"):
        x, _ = samplers.pc_sample(sde, gm.score_fn(sde), (500, 64), n_steps=5, steps=100, seed=0,
                                  corrector_options={"norm": norm})
        var[norm] = x.var().item()
    assert abs(var["batch"] - 0.5) < 0.02 and abs(var["sample"] - 0.5) < 0.04


def test_unknown_names_list_registered():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    with pytest.raises(ValueError, match="reverse_diffusion"):
        samplers.pc_sample(sde, gm.score_fn(sde), (4, 2), predictor="heun")
    with pytest.raises(ValueError, match="langevin"):
        samplers.pc_sample(sde, gm.score_fn(sde), (4, 2), corrector="hmc")
    with pytest.raises(ValueError, match="dopri5"):
        samplers.ode_sample(sde, gm.score_fn(sde), (4, 2), method="rk45")


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 2.0])
def test_eps_outside_interval(eps):
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T\)"):
        samplers.pc_sample(sde, gm.score_fn(sde), (4, 2), eps=eps)
    with pytest.raises(ValueError, match="eps"):
        samplers.ode_sample(sde, gm.score_fn(sde), (4, 2), eps=eps)


def test_wrong_score_shape_names_the_call_and_t():
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match=r"score_fn returned \(4, 3\) for x of shape \(4, 2\) at score call 1, t=1;"):
        samplers.pc_sample(sde, lambda x, t: torch.zeros(4, 3), (4, 2), steps=5)


def test_non_finite_score_raises_naming_the_call_and_t():
    sde = sde_lib.VPSDE()

    def bad(x, t):
        return torch.full_like(x, float("nan")) if t[0] < 0.5 else -x

    # Without a corrector, step i makes score call i + 1: step 6, at t = 1 - 6 (1 - 1e-3) / 10, is call 7.
    with pytest.raises(FloatingPointError, match=r"score_fn produced non-finite values at score call 7 \(t=0\.4006\)"):
        samplers.pc_sample(sde, bad, (4, 2), steps=10, corrector="none")
    with pytest.raises(FloatingPointError, match="score_fn"):
        samplers.ode_sample(sde, bad, (4, 2))


def test_register_a_new_predictor():
    @samplers.register_predictor(name="test_identity")
    class Identity(samplers.Predictor):
        def update(self, x, t, t_next, generator=None):
            return x, x

    try:
        sde = sde_lib.VPSDE()
        z = torch.randn(3, 2)
        x, nfe = samplers.pc_sample(sde, lambda x, t: -x, z.shape, x_T=z, predictor="test_identity",
                                    corrector="none", steps=3, denoise=False)
        assert torch.equal(x, z) and nfe == 0
    finally:
        samplers.predictors._PREDICTORS.remove("test_identity")
