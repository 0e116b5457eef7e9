"""The samplers' one calling convention: conditioning in `cond` only, options checked by name, every
refusal before the first score call, and each public sampler equal to its loop."""
import math

import pytest
import torch

import likelihood
import models
import samplers
import sde_lib
from sde_lib.checks import cond_keys
from tests.helpers import mixture_2d

MIX = mixture_2d()
SDE = sde_lib.VPSDE()
OPTIONS = {"adaptive": {}, "ode": {}, "pc": {"steps": 4}}  # the rest take steps=4


class Calls:
    """A score that counts its calls (and can refuse all of them)."""

    def __init__(self, fn, refuse: bool = False):
        self.fn, self.refuse, self.n = fn, refuse, 0
        self.cond_keys = cond_keys(fn)  # what the wrapped score takes

    def __call__(self, x, t, **cond):
        self.n += 1
        if self.refuse:
            raise AssertionError("the score was called")
        return self.fn(x, t, **cond)


def kwargs_of(name):
    return OPTIONS.get(name, {"steps": 4})


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_a_misspelled_option_is_refused_before_any_call(name):
    score = Calls(MIX.score_fn(SDE), refuse=True)
    with pytest.raises(TypeError, match="unknown option 'etaa'"):
        samplers.get_sampler(name)(SDE, score, (4, 2), etaa=1.0, **kwargs_of(name))


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_conditioning_is_checked_once_before_any_call(name):
    labelled = Calls(MIX.conditional_score_fn(SDE), refuse=True)
    fn = samplers.get_sampler(name)
    with pytest.raises(TypeError, match="conditioning 'z' is not taken.*takes \\['y'\\]"):
        fn(SDE, labelled, (4, 2), cond={"y": torch.zeros(4, dtype=torch.long), "z": torch.zeros(4)}, **kwargs_of(name))
    with pytest.raises(ValueError, match=r"cond\['y'\] must be a tensor with one row per sample \(shape \[4, ...\]\)"):
        fn(SDE, labelled, (4, 2), cond={"y": torch.zeros(3, dtype=torch.long)}, **kwargs_of(name))
    with pytest.raises(TypeError, match="cond must be a mapping"):
        fn(SDE, labelled, (4, 2), cond=[torch.zeros(4)], **kwargs_of(name))
    # Passed as a loose keyword, a label is an unknown option, never silent conditioning.
    with pytest.raises(TypeError, match="unknown option 'y'.*cond=\\{'y'"):
        fn(SDE, labelled, (4, 2), y=torch.zeros(4, dtype=torch.long), **kwargs_of(name))


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_the_labels_in_cond_reach_every_call(name):
    # Class 1 alone: the exact conditional score draws every sample from component 1.
    score = Calls(MIX.conditional_score_fn(SDE))
    x, nfe = samplers.get_sampler(name)(SDE, score, (64, 2), cond={"y": torch.ones(64, dtype=torch.long)}, seed=0,
                                        **{**kwargs_of(name), **({"steps": 20} if "steps" in kwargs_of(name) else {})})
    assert nfe == score.n > 0
    assert bool((MIX.component_of(x) == 1).all())


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_empty_batches_give_empty_samples_and_no_call(name):
    score = Calls(MIX.score_fn(SDE), refuse=True)
    x, nfe = samplers.get_sampler(name)(SDE, score, (0, 2), seed=0, **kwargs_of(name))
    assert x.shape == (0, 2) and nfe == 0


@pytest.mark.parametrize("name, bad, match", [
    ("ddim", {"eta": -5}, "eta must be"), ("heun", {"s_churn": float("nan")}, "s_churn must be"),
    ("pc", {"predictor": "nope"}, "unknown predictor 'nope'"), ("ode", {"dtype": torch.float16}, "float32 or float64"),
    ("dpmpp_3m", {"variant": "bogus"}, "variant must be one of"), ("unipc", {"order": 4}, "order must be one of"),
    ("adaptive", {"rtol": 0}, "rtol must be a finite number > 0")])
def test_an_empty_batch_is_checked_like_any_other(name, bad, match):
    # The loop's own checks run on a dry run before anything is drawn, so an empty batch meets them too,
    # and a refusal of a real batch leaves the global RNG (which its prior draw would use) as it was.
    for batch in (0, 4):
        state = torch.random.get_rng_state()
        with pytest.raises(ValueError, match=match):
            samplers.get_sampler(name)(SDE, Calls(MIX.score_fn(SDE), refuse=True), (batch, 2),
                                       **{**kwargs_of(name), **bad})
        assert torch.equal(torch.random.get_rng_state(), state)


def test_checks_after_a_first_call_would_come_too_late_so_there_are_none():
    score = Calls(MIX.score_fn(SDE), refuse=True)
    with pytest.raises(ValueError, match="'ancestral_sampling' has no probability-flow form"):
        samplers.pc_sample(SDE, score, (4, 2), predictor="ancestral_sampling", probability_flow=True, steps=5)
    with pytest.raises(ValueError, match=r"x_T has type list, but shape is \(4, 2\)"):
        samplers.ddim_sample(SDE, score, (4, 2), steps=3, x_T=[[0.0, 0.0]] * 4)
    # Inpainting checks every interval first: DDIM's eta = 1.5 fits the first two here, not the last.
    grid = torch.tensor([1.0, 0.99, 0.98, 0.02], dtype=torch.float64)
    with pytest.raises(ValueError, match="eta must be at most"):
        samplers.inpaint_sample(SDE, score, (4, 2), y=torch.zeros(2), mask=torch.tensor([1, 0]), sampler="ddim",
                                grid=grid, sampler_options={"eta": 1.5})
    assert score.n == 0


def test_the_data_form_takes_one_update_across_the_grid():
    x, nfe = samplers.dpmpp_2s_sample(SDE, MIX.score_fn(SDE), (4, 2), steps=2, seed=0)
    assert nfe == 2 and bool(torch.isfinite(x).all())


def test_solve_flow_refuses_cond_beside_a_bound_score():
    bound = samplers.guards.GuardedScore(MIX.conditional_score_fn(SDE), {"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(TypeError, match="conditioning is bound already"):
        samplers.solve_flow(SDE, bound, torch.zeros(3, 2), SDE.T, 0.5, cond={"y": torch.ones(3, dtype=torch.long)})


@pytest.mark.parametrize("name", samplers.list_samplers())
def test_a_wrong_x_T_is_refused(name):
    with pytest.raises(ValueError, match=r"x_T has shape \(5, 3\), but shape is \(4, 3\)"):
        samplers.get_sampler(name)(SDE, Calls(MIX.score_fn(SDE), refuse=True), (4, 3), x_T=torch.randn(5, 3),
                                   **kwargs_of(name))


def test_an_explicit_grid_sets_the_step_count_and_contradictions_are_refused():
    grid = samplers.karras(SDE, 6, 1e-3)
    score = Calls(MIX.score_fn(SDE))
    x_T = SDE.prior_sampling((8, 2), torch.Generator().manual_seed(0))
    a, nfe = samplers.unipc_sample(SDE, score, (8, 2), grid=grid, x_T=x_T)
    b, _ = samplers.unipc_sample(SDE, score, (8, 2), steps=6, grid="karras", x_T=x_T)
    assert nfe == 6 and torch.equal(a, b)
    for bad, match in (({"steps": 5}, "steps = 5 contradicts the grid of 7 times"),
                       ({"eps": 1e-2}, "eps = 0.01 contradicts the grid, which ends at 0.001")):
        with pytest.raises(ValueError, match=match):
            samplers.unipc_sample(SDE, Calls(MIX.score_fn(SDE), refuse=True), (8, 2), grid=grid, **bad)


@pytest.mark.parametrize("call, match", [
    (lambda s: samplers.heun_sample(SDE, s, (4, 2), steps=1), "steps=1 makes heun take one step"),
    (lambda s: samplers.dpm_solver_sample(SDE, s, (4, 2), steps=2), "one update of order 2 across the whole grid"),
    (lambda s: samplers.dpm_solver_sample(SDE, s, (4, 2), steps=3, order=3, lower_order_final=False),
     "one update of order 3"),
    (lambda s: samplers.pc_sample(SDE, s, (4, 2), predictor="none", corrector="none"), "both 'none'"),
    (lambda s: samplers.ode_sample(SDE, s, (4, 2), steps=10), "steps must be None for ode"),
    (lambda s: samplers.ode_sample(SDE, s, (4, 2), method="rk5"), "unknown ODE method 'rk5'"),
    (lambda s: samplers.ddim_sample(SDE, s, (4, 2), steps=3, eta=-1), "eta must be a finite number >= 0"),
])
def test_settings_that_cannot_work_are_refused_before_any_call(call, match):
    with pytest.raises(ValueError, match=match):
        call(Calls(MIX.score_fn(SDE), refuse=True))


def test_the_noise_form_refusal_is_what_its_errors_call_for():
    # One order-2 noise-form update from T to eps lands far from the flow; three calls do not.
    score = MIX.score_fn(SDE)
    x_T = SDE.prior_sampling((500, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, _ = samplers.solve_flow(SDE, score, x_T, SDE.T, SDE.sampling_eps, rtol=1e-8, atol=1e-8)
    whole = torch.tensor([SDE.T, SDE.sampling_eps], dtype=torch.float64)
    one = samplers.dpm_solver_loop(SDE, score, x_T.clone(), whole, orders=[2])
    three, _ = samplers.dpm_solver_sample(SDE, score, x_T.shape, steps=3, x_T=x_T, dtype=torch.float64)
    err = lambda x: float((x - ref).norm(dim=1).mean())  # noqa: E731
    assert err(one) > 20 * err(three)


def test_an_unavailable_device_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        samplers.ddim_sample(SDE, MIX.score_fn(SDE), (4, 2), steps=2, device="cuda")


def test_half_precision_is_refused_by_the_ode_and_the_likelihood():
    score = MIX.score_fn(SDE)
    with pytest.raises(ValueError, match="float32 or float64, got torch.float16"):
        samplers.ode_sample(SDE, score, (4, 2), dtype=torch.float16)
    with pytest.raises(ValueError, match="log_likelihood computes in float32 or float64"):
        likelihood.log_likelihood(SDE, score, torch.zeros(4, 2, dtype=torch.float16))
    logp, z, nfe = likelihood.log_likelihood(SDE, score, torch.zeros(0, 2))
    assert logp.shape == (0,) and z.shape == (0, 2) and nfe == 0


def test_check_options_runs_every_check_without_a_call():
    samplers.check_options("dpm_solver", SDE, steps=6, order=2)  # fine: returns at the first call
    with pytest.raises(ValueError, match="s_churn must be a finite number >= 0"):
        samplers.check_options("heun", SDE, steps=5, s_churn=-5)
    with pytest.raises(ValueError, match="order must be one of \\(1, 2, 3\\) for unipc"):
        samplers.check_options("unipc", SDE, steps=5, order=0)
    with pytest.raises(TypeError, match="unknown option 'etaa'"):
        samplers.check_options("ddim", SDE, steps=5, etaa=1)


@pytest.mark.parametrize("name", [n for n in samplers.list_samplers() if n not in ("adaptive", "ode")])
def test_each_public_sampler_is_its_loop_set_up(name):
    info = samplers.sampler_info(name)
    score = MIX.score_fn(SDE)
    grid = samplers.get_grid(info.default_grid, SDE, 6, SDE.sampling_eps)
    x_T = SDE.prior_sampling((16, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    # An explicit grid without steps: one singlestep update of full order per interval.
    options = {"dpm_solver": {"orders": [3] * 6}, "dpmpp_2s": {"orders": [2] * 6}}.get(name, {})
    gen = {"generator": torch.Generator().manual_seed(5)} if "generator" in info.passes else {}
    direct = info.loop(SDE, score, x_T.clone(), grid, **options, **gen)
    if info.denoise:
        t = grid[-1].expand(16)
        direct = SDE.tweedie(direct, t, score(direct, t))
    public, _ = samplers.get_sampler(name)(SDE, score, x_T.shape, grid=grid, x_T=x_T, dtype=torch.float64, seed=5,
                                           **({"order": 3} if name == "dpm_solver" else {}))
    torch.testing.assert_close(public, direct, rtol=0, atol=0)


def test_networks_declare_their_conditioning_and_refuse_labels_they_cannot_read():
    plain, labelled = models.get_model("mlp")(dim=2), models.get_model("mlp")(dim=2, num_classes=3)
    assert plain.cond_keys == () and labelled.cond_keys == ("y",)
    assert models.get_score_fn(SDE, labelled).cond_keys == ("y",)
    with pytest.raises(TypeError, match="unconditional.*takes no class labels"):
        plain(torch.zeros(2, 2), torch.ones(2), y=torch.zeros(2, dtype=torch.long))
    wrapped = models.get_score_fn(SDE, plain)
    with pytest.raises(TypeError, match="conditioning 'y' is not taken by the score function Precond"):
        samplers.ddim_sample(SDE, wrapped, (2, 2), steps=2, cond={"y": torch.zeros(2, dtype=torch.long)})


def test_guidance_doubles_every_conditioning_tensor_in_one_call():
    seen = []

    def score(x, t, y=None, extra=None):
        seen.append((x.shape[0], y.tolist(), extra.shape))
        return MIX.conditional_score_fn(SDE)(x, t, y)

    guided = samplers.cfg_score(score, 2.0, null_label=2)
    assert guided.cond_keys == ("y", "extra")
    y = torch.tensor([0, 1, 1])
    x, nfe = samplers.ddim_sample(SDE, guided, (3, 2), steps=2, cond={"y": y, "extra": torch.zeros(3, 5)}, seed=0)
    assert nfe == 2 and seen == [(6, [0, 1, 1, 2, 2, 2], (6, 5))] * 2
    with pytest.raises(ValueError, match="needs a class-conditional score_fn"):
        samplers.cfg_score(MIX.score_fn(SDE), 1.0, null_label=2)
    assert math.isclose(guided.guidance_scale, 2.0)


def test_inpainting_an_empty_batch_is_empty():
    score = Calls(MIX.score_fn(SDE), refuse=True)
    x, nfe = samplers.inpaint_sample(SDE, score, (0, 2), y=torch.zeros(2), mask=torch.tensor([1, 0]), steps=3)
    assert x.shape == (0, 2) and nfe == 0
