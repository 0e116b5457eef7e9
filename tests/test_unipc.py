"""UniPC against known answers: its order of convergence (UniC raises UniP's by one), exactness on point
masses and on polynomial predictions, its one-difference steps as DPM-Solver++(2M) and the exponential
trapezoid rule, real NFE, seeds and conditioning, argument checks."""
import math

import numpy as np
import pytest
import torch

import samplers
import sde_lib
from samplers.ddim import ddim_sample
from samplers.dpm_solver import data_step, dpmpp_multistep_update
from samplers.unipc import unipc_sample, unipc_update
from tests.helpers import Counted, flow_reference, make_sdes, mixture_2d, point_mass_score, random_grid, spread

F64 = torch.float64

# (sde, grid, order) -> the steps where the asymptotic regime holds. On VP's log-SNR grid the third-order
# error changes sign near 50 steps (local slopes 2.2 ... 6 there), so its fit starts past that.
ORDER_STEPS = {
    ("vp", "uniform_log_snr", 1): [16, 24, 36, 48, 72, 96], ("ve", "karras", 1): [16, 24, 36, 48, 72, 96],
    ("vp", "uniform_log_snr", 2): [24, 36, 48, 72, 96, 144], ("ve", "karras", 2): [24, 36, 48, 72, 96, 144],
    ("vp", "uniform_log_snr", 3): [144, 192, 288, 384], ("ve", "karras", 3): [48, 72, 96, 144, 192],
}


# With K >= 2 differences B(h) cancels, so at order 3 bh1 differs from bh2 only in the warm-up: left out for time.
ORDER_CASES = [(o, v) for o in (1, 2, 3) for v in ("bh1", "bh2") if (o, v) != (3, "bh1")]


@pytest.mark.parametrize("order, variant", ORDER_CASES)
@pytest.mark.parametrize("sde_name, grid", [("vp", "uniform_log_snr"), ("ve", "karras")])
def test_order_of_convergence_is_order_plus_one(sde_name, grid, order, variant):
    """UniPC-p (UniP-p corrected by UniC-p) converges at order p + 1, as Zhao et al. claim: the log-log
    slope of the endpoint error against steps is p + 1 +- 0.35 (measured here: 1.93-2.13, 2.96-3.11 and
    3.86-3.93 for p = 1, 2, 3; UniP-2 and UniP-3 alone give 2.07 and 3.2).

    The error is the median over 64 samples of ||x - x_ref|| / spread, x_ref the converged flow (dopri5,
    tolerances 1e-10) from the same x_T: the few samples near the boundary between the two modes reach the
    asymptotic regime only at hundreds of steps and would dominate a mean. lower_order_final=False keeps
    the last steps at full order (the uncorrected first-order last step's O(h^2) error already pulls
    order 3's slope to 2.6-3.0); the warm-up's lower orders fall at high noise, where the prediction
    hardly moves, and do not show at these step counts.
    Karras's grid is not uniform in lambda, so there the updates must use the actual step ratios.
    """
    steps = ORDER_STEPS[sde_name, grid, order]
    sde, gm = make_sdes()[sde_name], mixture_2d()
    x_T, ref = flow_reference(sde_name)
    errors = []
    for n in steps:
        x, nfe = unipc_sample(sde, gm.score_fn(sde), x_T.shape, steps=n, order=order, variant=variant, grid=grid,
                              x_T=x_T, dtype=F64, lower_order_final=False)
        assert nfe == n
        errors.append(float((x - ref).norm(dim=1).median()) / spread(gm))
    (slope, _), residual = np.polyfit(np.log(steps), np.log(errors), 1, full=True)[:2]
    slope, fit_rms = -slope, math.sqrt(residual[0] / len(steps))
    print(f"unipc-{order} {variant} {sde_name} {grid}: slope {slope:.2f}, fit rms {fit_rms:.3f}, "
          f"errors {errors[0]:.1e}..{errors[-1]:.1e}")
    assert fit_rms < 0.15, f"not a power law: log errors {np.log(errors)}"
    assert abs(slope - (order + 1)) < 0.35, f"unipc-{order} {variant}: slope {slope:.2f}, expected {order + 1}"


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_for_a_point_mass_on_any_grid(sde_name):
    """x0_hat = mu at every point, so every difference vanishes and each step is the exact flow
    x_t - alpha_t mu = (sigma_t / sigma_T) (x_T - alpha_T mu), whatever the order, variant and grid."""
    sde, mu = make_sdes()[sde_name], torch.tensor([0.7, -1.3], dtype=F64)
    x_T = sde.prior_sampling((16, 2), torch.Generator().manual_seed(0), dtype=F64)
    for order in (1, 2, 3):
        for variant in ("bh1", "bh2"):
            for steps in (1, 2, 5, 16):
                grid = random_grid(sde, steps, 10 * order + steps)
                x, nfe = unipc_sample(sde, point_mass_score(sde, mu), x_T.shape, steps=steps, order=order,
                                      variant=variant, grid=grid, x_T=x_T, dtype=F64)
                (a_e, s_e), (a_T, s_T) = sde.marginal_coeffs(grid[-1]), sde.marginal_coeffs(grid[0])
                assert nfe == steps
                assert (x - a_e * mu - s_e / s_T * (x_T - a_T * mu)).abs().max() < 1e-12, (order, variant, steps)


def _polynomial_case(sde_name, degree):
    """Data predictions d(lambda) = sum_j c_j lambda^j at three unevenly spaced past times and the exact
    flow of x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda d dlambda, using
    int e^lambda p = e^lambda (p - p' + p'' - p''')."""
    sde = make_sdes()[sde_name]
    times = [torch.full((3,), v, dtype=F64) for v in (0.9, 0.62, 0.5)]  # ratios far from 1
    t = torch.full((3,), 0.31, dtype=F64)
    c = torch.tensor([[0.3, -1.0, 2.0], [0.5, 0.2, -0.4], [-0.1, 0.25, 0.05], [0.02, -0.03, 0.04]], dtype=F64)
    c = c[:degree + 1]  # d = c_0 + c_1 lambda + ... (three independent columns)
    lam = lambda u: sde.log_snr(u)[:, None]
    d = lambda u: sum(c[j] * lam(u) ** j for j in range(degree + 1))
    derivative = lambda u, k: sum(math.perm(j, k) * c[j] * lam(u) ** (j - k) for j in range(k, degree + 1))
    alternating = lambda u: sum((-1) ** k * derivative(u, k) for k in range(degree + 1))
    F = lambda u: torch.exp(lam(u)) * alternating(u)
    sigma = lambda u: sde.marginal_coeffs(u)[1][:, None]
    x_s = torch.tensor([[1.0], [-2.0], [0.5]], dtype=F64).expand(3, 3)
    exact = sigma(t) / sigma(times[-1]) * x_s + sigma(t) * (F(t) - F(times[-1]))
    return sde, times, t, x_s, [d(u) for u in times], d(t), exact


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_updates_integrate_polynomial_predictions_exactly_on_uneven_steps(sde_name, variant):
    """With K >= 2 differences the order conditions are solved exactly, so an update is exact for
    predictions of degree K in lambda: UniP-3 (two past differences) for quadratics, UniC-2 (one past, one
    at t) for quadratics, UniC-3 for cubics; and B(h) cancels, so bh1 and bh2 agree."""
    for order, d_at_t, degree in ((3, False, 2), (2, True, 2), (3, True, 3)):
        sde, times, t, x_s, preds, d_t, exact = _polynomial_case(sde_name, degree)
        x = unipc_update(sde, x_s, times, preds, t, order, variant, d_t if d_at_t else None)
        assert (x - exact).abs().max() < 1e-11 * exact.abs().max(), (order, d_at_t)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_one_difference_steps_are_dpmpp_2m_and_the_exponential_trapezoid_rule(sde_name):
    """With one difference rho = 1/2: bh2's UniP-2 is DPM-Solver++(2M)'s update, bh2's UniC-1 is
    x_t = D_{s->t}((d_0 + d_t) / 2), and bh1's take -alpha_t (-h) D / 2 in place of -alpha_t (e^-h - 1) D / 2."""
    sde, times, t, x_s, preds, d_t, _ = _polynomial_case(sde_name, 2)
    h = sde.log_snr(t) - sde.log_snr(times[-1])
    alpha_t = sde.marginal_coeffs(t)[0][:, None]
    p2 = dpmpp_multistep_update(sde, x_s, times[1:], preds[1:], t, 2)
    assert (unipc_update(sde, x_s, times, preds, t, 2, "bh2") - p2).abs().max() < 1e-13 * p2.abs().max()
    c1 = data_step(sde, x_s, times[-1], t, (preds[-1] + d_t) / 2)
    assert (unipc_update(sde, x_s, times, preds, t, 1, "bh2", d_t) - c1).abs().max() < 1e-13 * c1.abs().max()
    D = (preds[-2] - preds[-1]) / ((sde.log_snr(times[-2]) - sde.log_snr(times[-1])) / h)[:, None]
    p2_bh1 = data_step(sde, x_s, times[-1], t, preds[-1]) + alpha_t * h[:, None] * D / 2
    assert (unipc_update(sde, x_s, times, preds, t, 2, "bh1") - p2_bh1).abs().max() < 1e-13 * p2_bh1.abs().max()


def test_order_one_predictor_and_single_steps_are_ddim():
    """UniP-1 is DDIM's step; one step of any order is that predictor alone (the last step is never corrected)."""
    sde, gm = sde_lib.subVPSDE(), mixture_2d()
    grid = random_grid(sde, 1, 3)
    w, _ = ddim_sample(sde, gm.score_fn(sde), (32, 2), steps=1, grid=grid, seed=2, dtype=F64)
    for order in (1, 2, 3):
        x, nfe = unipc_sample(sde, gm.score_fn(sde), (32, 2), steps=1, order=order, grid=grid, seed=2, dtype=F64)
        assert nfe == 1 and (x - w).abs().max() < 1e-12


def test_lower_order_final_and_variant_change_the_steps():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    run = lambda **kw: unipc_sample(sde, gm.score_fn(sde), (16, 2), steps=8, seed=0, dtype=F64, **kw)[0]
    assert not torch.allclose(run(order=2), run(order=2, lower_order_final=False))
    assert not torch.allclose(run(order=2, variant="bh1"), run(order=2, variant="bh2"))
    assert torch.equal(run(order=1), run(order=1, lower_order_final=False))  # order 1: nothing to lower


@pytest.mark.parametrize("kw, steps, expected", [
    ({"order": 1}, 4, 4), ({"order": 2}, 1, 1), ({"order": 2}, 6, 6), ({"order": 3}, 2, 2), ({"order": 3}, 20, 20),
    ({"order": 3, "variant": "bh1"}, 7, 7), ({"order": 2, "denoise": True}, 5, 6),
    ({"order": 3, "lower_order_final": False}, 9, 9),
])
def test_nfe_is_the_real_number_of_score_calls(kw, steps, expected):
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    score = Counted(gm.score_fn(sde))
    _, nfe = samplers.get_sampler("unipc")(sde, score, (8, 2), steps=steps, seed=0, **kw)
    assert nfe == score.calls == expected


def test_seed_conditioning_and_callback():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    a, _ = unipc_sample(sde, gm.score_fn(sde), (16, 2), steps=6, seed=7)
    b, _ = unipc_sample(sde, gm.score_fn(sde), (16, 2), steps=6, generator=torch.Generator().manual_seed(7))
    c, _ = unipc_sample(sde, gm.score_fn(sde), (16, 2), steps=6, seed=8)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    labels, got, seen = torch.arange(4), [], []

    def score(x, t, y=None):
        got.append(y)
        return gm.score_fn(sde)(x, t)

    _, nfe = unipc_sample(sde, score, (4, 2), steps=6, order=3, seed=0, cond={"y": labels}, progress=True,
                          callback=lambda d: seen.append((d["i"], d["t"], d["denoised"].shape)))
    assert len(got) == nfe == 6 and all(y is labels for y in got)
    assert seen[-1][1] == sde.sampling_eps and [i for i, _, _ in seen] == list(range(6))


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 2.0}, "steps must be a positive integer"),
    ({"steps": 5, "order": 4}, r"order must be one of \(1, 2, 3\) for unipc, got 4"),
    ({"steps": 5, "order": 0}, r"order must be one of \(1, 2, 3\) for unipc, got 0"),
    ({"steps": 5, "order": True}, r"order must be one of \(1, 2, 3\) for unipc, got True"),
    ({"steps": 5, "variant": "bh3"}, r"variant must be one of \('bh1', 'bh2'\), got 'bh3'"),
    ({"steps": 5, "grid": torch.tensor([1.0, 0.5, 0.0])}, r"grid must lie in \(0, T\]"),
    ({"steps": 5, "grid": torch.tensor([2.0, 0.5, 0.1])}, r"grid must lie in \(0, T\]"),
    ({"steps": 5, "grid": torch.tensor([1.0, 0.2, 0.5, 0.1])}, "grid must be strictly decreasing"),
    ({"steps": 5, "eps": 1.0}, r"eps must lie in \(0, T\)"),
])
def test_bad_arguments_refused_before_any_score_call(kwargs, match):
    score = Counted(lambda x, t: -x)
    with pytest.raises(ValueError, match=match):
        unipc_sample(sde_lib.VPSDE(), score, (4, 2), **kwargs)
    assert score.calls == 0


def test_registered():
    assert "unipc" in samplers.list_samplers() and samplers.get_sampler("unipc") is unipc_sample
