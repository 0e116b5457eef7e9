"""What samplers.base.sampler does around every sampler's loop, against known answers (the refusals every
sampler shares are in test_call_convention.py): a misspelled option gets a suggestion, an explicit grid sets
the step count of every fixed-step sampler, the final Tweedie step is one more call giving E[x_0 | x], the
callback sees python-float times and x_mean, a non-finite step names the sampler, and a new loop registered
with it runs exactly as written."""
import pytest
import torch

import samplers
import sde_lib
from samplers.base import at, ignore
from tests.helpers import Counted, make_sdes, mixture_2d, random_grid

F64 = torch.float64
# Every sampler's own way to take a fixed budget: (options, score calls per grid interval).
FIXED_STEP = {"ddim": ({}, 1), "dpmpp_2m": ({}, 1), "dpmpp_3m": ({}, 1), "unipc": ({}, 1), "heun": ({}, 2),
              "pc": ({"corrector": "none", "denoise": False}, 1), "ode": ({"method": "rk4"}, 4),
              "ode-euler": ({"method": "euler"}, 1)}


def never_called(x, t):
    raise AssertionError("the score was called before the arguments were checked")


def run(name, *args, **kwargs):
    return samplers.get_sampler(name.split("-")[0])(*args, **kwargs)


def test_a_misspelled_option_is_refused_by_name_with_a_suggestion():
    message = (r"^ddim_sample got an unknown option 'etaa'; did you mean 'eta'\? Its options: eta, besides steps, "
               r"grid, .*; conditioning goes in cond=\{'etaa': \.\.\.\}$")
    with pytest.raises(TypeError, match=message):
        samplers.ddim_sample(sde_lib.VPSDE(), never_called, (4, 2), steps=5, etaa=0.5)
    with pytest.raises(TypeError, match=r"^heun_sample got an unknown option 's_chrun'; did you mean 's_churn'\?"):
        samplers.heun_sample(sde_lib.VPSDE(), never_called, (4, 2), steps=5, s_chrun=0.5)


@pytest.mark.parametrize("name", list(FIXED_STEP))
def test_an_explicit_grid_sets_the_number_of_steps(name):
    sde, gm = make_sdes()["vp"], mixture_2d()
    options, per_step = FIXED_STEP[name]
    grid, score = random_grid(sde, 4, 2), Counted(gm.score_fn(sde))
    x, nfe = run(name, sde, score, (8, 2), grid=grid, seed=0, dtype=F64, **options)
    y, _ = run(name, sde, gm.score_fn(sde), (8, 2), steps=4, grid=grid, seed=0, dtype=F64, **options)
    assert nfe == score.calls == 4 * per_step and torch.equal(x, y)
    with pytest.raises(ValueError, match=r"steps = 3 contradicts the grid of 5 times \(4 steps\); pass one of them"):
        run(name, sde, never_called, (8, 2), steps=3, grid=grid, **options)
    with pytest.raises(ValueError, match=r"eps = 0\.01 contradicts the grid, which ends at 0\.001; pass one of them"):
        run(name, sde, never_called, (8, 2), grid=grid, eps=0.01, **options)
    # eps that is the grid's own last time is no contradiction
    assert torch.equal(run(name, sde, gm.score_fn(sde), (8, 2), grid=grid, eps=float(grid[-1]), seed=0, dtype=F64,
                           **options)[0], x)


def test_ode_adaptive_methods_take_no_steps_and_fixed_step_methods_need_them():
    sde, gm = make_sdes()["ve"], mixture_2d()
    for bad in ({"steps": 10}, {"grid": "karras"}, {"method": "dopri8", "steps": 10}):
        with pytest.raises(ValueError, match=r"(steps|grid) must be None for ode with .*chooses its own steps"):
            samplers.ode_sample(sde, never_called, (4, 2), **bad)
    with pytest.raises(ValueError, match=r"ode_sample needs steps \(an integer >= 1\) with a named grid"):
        samplers.ode_sample(sde, never_called, (4, 2), method="rk4")
    # rk4's default grid is uniform in t: 4 calls per step, the grid's times exactly.
    seen = []
    score = lambda x, t: seen.append(float(t[0])) or gm.score_fn(sde)(x, t)
    x, nfe = samplers.ode_sample(sde, score, (4, 2), method="rk4", steps=5, seed=0, dtype=F64)
    grid = samplers.uniform_t(sde, 5, sde.sampling_eps)
    assert nfe == 20 and seen[::4] == pytest.approx(grid[:-1].tolist(), rel=1e-12)
    y, _ = samplers.ode_sample(sde, gm.score_fn(sde), (4, 2), method="rk4", grid=grid, seed=0, dtype=F64)
    assert torch.equal(x, y)


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_denoise_is_one_more_call_giving_tweedies_estimate_at_the_last_time(name):
    """denoise=True ends with E[x_0 | x] = sde.tweedie(x, eps, s(x, eps)) of the run without it (the same
    seed draws the same noise before it); pc does so by default, the other samplers do not."""
    sde, gm = make_sdes()["vp"], mixture_2d()
    kwargs = {} if name in ("ode", "adaptive") else {"steps": 6}
    common = dict(seed=0, dtype=F64, **kwargs)
    plain, nfe = samplers.get_sampler(name)(sde, gm.score_fn(sde), (16, 2), denoise=False, **common)
    default, nfe_default = samplers.get_sampler(name)(sde, gm.score_fn(sde), (16, 2), **common)
    score = Counted(gm.score_fn(sde))
    denoised, nfe_denoised = samplers.get_sampler(name)(sde, score, (16, 2), denoise=True, **common)
    t = torch.full((16,), sde.sampling_eps, dtype=F64)
    assert nfe_denoised == score.calls == nfe + 1
    assert (denoised - sde.tweedie(plain, t, gm.score_fn(sde)(plain, t))).abs().max() < 1e-12
    assert torch.equal(default, denoised if name == "pc" else plain) and nfe_default == nfe + (name == "pc")


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "heun", "unipc", "pc"])
def test_the_callback_sees_float_times_and_x_mean(name):
    sde, gm = make_sdes()["ve"], mixture_2d()
    seen = []
    grid = random_grid(sde, 5, 3)
    run(name, sde, gm.score_fn(sde), (4, 2), grid=grid, seed=0, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert all(isinstance(d["t"], float) for d in seen) and [d["t"] for d in seen] == grid[1:].tolist()
    if name == "pc":  # the predictor's mean, before its noise
        assert not torch.equal(seen[0]["x_mean"], seen[0]["x"])
    else:
        assert all(d["x_mean"] is d["x"] for d in seen)


def test_a_step_that_leaves_finite_values_is_named_with_its_sampler_and_time():
    """A finite but huge score makes DDIM's x0 estimate (x + sigma^2 s) / alpha overflow float32 at T."""
    sde = sde_lib.VPSDE()
    score = lambda x, t: torch.full_like(x, 3e38)
    with pytest.raises(FloatingPointError, match=r"^ddim produced non-finite values at step 0 \(t=0\.8002\)"):
        samplers.ddim_sample(sde, score, (1, 1), steps=5)


def euler_loop(sde, score, x, grid, *, scale: float = 1.0, callback=ignore):
    """Euler on the probability-flow ODE, its drift times `scale` (1: the flow)."""
    for i in range(len(grid) - 1):
        t, t_next = at(grid, i, x), at(grid, i + 1, x)
        drift = sde.reverse(score, probability_flow=True).sde(x, t)[0]
        x = x + scale * (grid[i + 1] - grid[i]).to(x.dtype) * drift
        callback({"i": i, "t": t_next, "x": x})
    return x


def test_a_registered_loop_gets_the_whole_set_up():
    """samplers.sampler(name, loop) makes `<name>_sample`: the grid, the seeded prior draw, the guarded and
    counted score with cond bound, the option check and the final Tweedie step; this Euler loop then is
    torchdiffeq's Euler on the same grid."""
    sde, gm = make_sdes()["vp"], mixture_2d()
    sample = samplers.sampler("test_euler", euler_loop)
    try:
        assert samplers.get_sampler("test_euler") is sample and sample.__name__ == "test_euler_sample"
        x, nfe = sample(sde, gm.score_fn(sde), (32, 2), steps=10, seed=4, dtype=F64)
        ref, ref_nfe = samplers.ode_sample(sde, gm.score_fn(sde), (32, 2), method="euler", steps=10, seed=4, dtype=F64)
        assert nfe == ref_nfe == 10 and (x - ref).abs().max() < 1e-12
        labelled = lambda x, t, y: gm.score_fn(sde)(x, t)
        _, nfe = sample(sde, labelled, (32, 2), steps=3, seed=4, cond={"y": torch.zeros(32)}, denoise=True)
        assert nfe == 4
        with pytest.raises(TypeError, match="test_euler_sample got an unknown option 'scal'; did you mean 'scale'"):
            sample(sde, never_called, (32, 2), steps=3, scal=2.0)
    finally:
        samplers.base._SAMPLERS.remove("test_euler")
