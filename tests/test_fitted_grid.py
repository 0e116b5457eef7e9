"""samplers.fit_grid against the exact flow of a 2-D Gaussian mixture: a grid fitted on pilot draws
must cut the sampler's endpoint error on other draws, be a valid grid, be reproducible, and refuse
samplers it cannot fit before any long work."""
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch

import samplers
import sde_lib
from tests.helpers import Counted, ROOT, flow_reference, make_sdes, mixture_2d, run_main, torchrun

PILOT = dict(seed=10, dtype=torch.float64)


def _error(sde, score, sampler, steps, grid, x_T, x_ref, **kw) -> float:
    """RMS ||x - x_ref|| / RMS ||x_ref - mean||: the objective fit_grid minimises, on other draws."""
    x, nfe = samplers.get_sampler(sampler)(sde, score, x_T.shape, steps=steps, grid=grid, x_T=x_T,
                                           dtype=torch.float64, **kw)
    assert nfe == steps
    spread = (x_ref - x_ref.mean(0)).pow(2).sum(1).mean().sqrt()
    return float((x - x_ref).pow(2).sum(1).mean().sqrt() / spread)


@pytest.mark.parametrize("sde_name, sampler, gain, pilot_gain", [
    ("ve", "unipc", 3.0, 2.2),      # measured: 0.0378 -> 0.0099 (3.8x); pilot 0.0338 -> 0.0129 (2.6x)
    ("vp", "dpmpp_2m", 1.8, 1.7),   # measured: 0.0601 -> 0.0291 (2.1x); pilot 0.0601 -> 0.0311 (1.9x)
])
def test_a_fitted_grid_beats_uniform_log_snr_on_draws_it_never_saw(sde_name, sampler, gain, pilot_gain):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    score = gm.score_fn(sde)
    grid, info = samplers.fit_grid(sde, score, (1000, 2), steps=10, sampler=sampler, max_evals=400, **PILOT)
    x_T, x_ref = flow_reference(sde_name, n=2000)  # 2000 held-out draws and their converged flow
    before = _error(sde, score, sampler, 10, "uniform_log_snr", x_T, x_ref)
    after = _error(sde, score, sampler, 10, grid, x_T, x_ref)
    assert after * gain < before, (before, after, info)
    # The pilot's figures are the same measure on the pilot draws.
    assert info["pilot_error"] * pilot_gain < info["pilot_error_initial"]
    assert info["pilot_error_initial"] == pytest.approx(before, rel=0.3)


def test_the_fitted_grid_is_a_grid_from_T_to_eps_and_the_same_for_the_same_seed():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    score = Counted(gm.score_fn(sde))
    a, info = samplers.fit_grid(sde, score, (200, 2), steps=6, max_evals=60, eps=1e-3, **PILOT)
    b, _ = samplers.fit_grid(sde, gm.score_fn(sde), (200, 2), steps=6, max_evals=60, eps=1e-3, **PILOT)
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (7,)
    assert a[0] == sde.T and a[-1] == 1e-3 and bool(torch.all(a[1:] < a[:-1]))
    assert info["network_calls"] == score.calls and info["n_pilot"] == 200
    assert info["evals"] <= 61 and info["pilot_error"] <= info["pilot_error_initial"]


def test_conditioning_reaches_every_score_call():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    y = torch.arange(300) % 2
    grid, info = samplers.fit_grid(sde, gm.conditional_score_fn(sde), (300, 2), steps=5, max_evals=50,
                                   cond={"y": y}, **PILOT)
    assert info["pilot_error"] < info["pilot_error_initial"]
    with pytest.raises(ValueError, match="y must be 300 integer labels"):  # a bad label reaches the score
        samplers.fit_grid(sde, gm.conditional_score_fn(sde), (300, 2), steps=5, cond={"y": y + 5}, **PILOT)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="pc"), "sampler 'pc' .* is stochastic"),
    (dict(sampler="ddim", sampler_kwargs={"eta": 1.0}), "sampler 'ddim' .* is stochastic"),
    (dict(sampler="heun", sampler_kwargs={"s_churn": 10.0}), "sampler 'heun' .* is stochastic"),
])
def test_a_stochastic_sampler_is_refused_before_any_network_call(kwargs, match):
    sde, gm = sde_lib.VESDE(), mixture_2d()
    score = Counted(gm.score_fn(sde))
    with pytest.raises(ValueError, match=match):
        samplers.fit_grid(sde, score, (100, 2), steps=4, **kwargs, **PILOT)
    assert score.calls == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(max_evals=0), "max_evals must be a positive integer, got 0"),
    (dict(shape=(1, 2)), r"shape must start with a pilot batch of at least 2 draws, got \(1, 2\)"),
    (dict(ref_tol=0.0), r"ref_tol must be in \(0, 1\), got 0.0"),
    (dict(sampler="adaptive"), "sampler 'adaptive' with its defaults chooses its own steps, so it has no grid to fit"),
    (dict(sampler="ode"), "sampler 'ode' with its defaults chooses its own steps"),
    (dict(sampler="ode", sampler_kwargs={"method": "dopri8"}), r"sampler 'ode' with \{'method': 'dopri8'\} chooses its own"),
    (dict(sampler="nope"), "nope"),
    (dict(init=torch.tensor([1.0, 0.5, 1e-5])), r"init must be a grid of steps \+ 1 = 5 times"),
    (dict(eps=2.0), "eps must lie in"),
])
def test_bad_input_is_refused_before_any_network_call(kwargs, match):
    sde, gm = sde_lib.VESDE(), mixture_2d()
    score = Counted(gm.score_fn(sde))
    args = dict(shape=(100, 2), steps=4, **PILOT)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        samplers.fit_grid(sde, score, args.pop("shape"), **args)
    assert score.calls == 0


@pytest.mark.slow
def test_the_command_line_fits_once_per_checkpoint_and_reuses_the_grid(tmp_path):
    """--config.sampling.grid=fitted: the grid is fitted on the first run, kept beside the samples, and
    read back by later runs, which then draw the same samples; a sampler it cannot fit is refused."""
    workdir = str(tmp_path / "ve")
    common = ["--config", "configs/swissroll_ve_mlp.py", "--workdir", workdir, "--config.num_threads=1",
              "--config.training.n_iters=10", "--config.training.checkpoint_freq=10", "--config.data.n_train=200",
              "--config.training.snapshot_freq=10", "--config.model.hidden=16", "--config.sampling.n_samples=20",
              "--config.sampling.batch_size=20"]
    fitted = ["--config.sampling.method=unipc", "--config.sampling.steps=5", "--config.sampling.grid=fitted",
              "--config.sampling.fit_pilot=200", "--config.sampling.fit_evals=30"]
    run_main(["--mode", "train", *common])
    run_main(["--mode", "sample", *common, *fitted])  # asserts success
    folder = os.path.join(workdir, "eval", "samples_unipc_ckpt10")
    kept = json.load(open(os.path.join(folder, "fitted_grid.json")))
    times = torch.tensor(kept["times"], dtype=torch.float64)
    assert len(times) == 6 and times[0] == 1.0 and bool(torch.all(times[1:] < times[:-1]))
    assert kept["info"]["pilot_error"] <= kept["info"]["pilot_error_initial"]
    samples = np.load(os.path.join(folder, "batch_0.npz"))["samples"]
    os.remove(os.path.join(folder, "batch_0.npz"))
    run_main(["--mode", "sample", *common, *fitted])
    log = open(os.path.join(workdir, "log.txt")).read()
    assert log.count("fitted a 5-step grid for unipc on 200 pilot draws") == 1
    np.testing.assert_array_equal(np.load(os.path.join(folder, "batch_0.npz"))["samples"], samples)
    for bad, says in [(["--config.sampling.method=pc"], "sampling.method = 'pc' reads sampling.N instead"),
                      (["--config.sampling.method=ddim", "--config.sampling.eta=1.0"], "'ddim' .* is stochastic")]:
        r = subprocess.run([*torchrun(1), "--mode", "sample", *common, "--config.sampling.grid=fitted", *bad],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 2 and re.search(says, r.stderr) and "Traceback" not in r.stderr, r.stderr
