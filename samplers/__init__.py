"""Samplers over the `score_fn(x, t, **cond)` seam, all with one calling convention:

    x, nfe = samplers.<name>_sample(sde, score_fn, shape, *, steps=None, grid=None, eps=None, x_T=None,
                                    seed=None, generator=None, device=None, dtype=torch.float32,
                                    cond=None, denoise=None, callback=None, progress=False, **options)

`cond` is the conditioning, a mapping {name: tensor [B, ...]} passed to every score call as
score_fn(x, t, **cond); `options` are the sampler's own (eta=, order=, ...), and a name it does not
take is an error. Each sampler is a loop `<name>_loop(sde, score, x, grid, ...)` that steps along a
time grid, set up by `samplers.base.sampler` (checks, grid, prior draw, generator, final denoising).
`list_samplers()` names them; `list_grids()` names the time grids every sampler takes; `fit_grid`
fits a grid to one model, sampler and step budget. Posterior samplers for inverse problems y = A x +
noise (`posterior_sample(method, ...)`, `list_posterior_samplers()`) share a calling convention of their
own, given in `samplers.posterior_base`.
"""
from samplers.base import check_options, get_sampler, list_samplers, probe, sampler, sampler_info
from samplers.correctors import Corrector, get_corrector, list_correctors, register_corrector
from samplers.grids import (check_grid, get_grid, karras, list_grids, quadratic, register_grid, uniform_log_snr,
                            uniform_t)
from samplers.ode import chooses_own_steps, ode_loop, ode_methods, ode_sample, solve_flow
from samplers.pc import pc_loop, pc_sample
from samplers.predictors import Predictor, get_predictor, list_predictors, register_predictor
from samplers import (adaptive, ancestral, cascade, consistency, controllable, ddim, ddrm, dpm_solver, edm, fitted_grid, guidance,
                      guided_posterior, observations, particle, posterior, unipc)
from samplers.ddim import *  # noqa: F401,F403
from samplers.dpm_solver import *  # noqa: F401,F403
from samplers.edm import *  # noqa: F401,F403
from samplers.adaptive import *  # noqa: F401,F403
from samplers.ancestral import *  # noqa: F401,F403
from samplers.unipc import *  # noqa: F401,F403
from samplers.fitted_grid import *  # noqa: F401,F403
from samplers.guidance import *  # noqa: F401,F403
from samplers.controllable import *  # noqa: F401,F403
from samplers.observations import *  # noqa: F401,F403
from samplers.particle import *  # noqa: F401,F403
from samplers.ddrm import *  # noqa: F401,F403
from samplers.guided_posterior import *  # noqa: F401,F403
from samplers.posterior import *  # noqa: F401,F403
from samplers.cascade import *  # noqa: F401,F403
from samplers.consistency import *  # noqa: F401,F403

__all__ = [
    "pc_sample", "pc_loop", "ode_sample", "ode_loop", "solve_flow", "ode_methods", "chooses_own_steps",
    "list_samplers", "get_sampler", "sampler", "sampler_info", "check_options", "probe",
    "list_grids", "get_grid", "check_grid", "register_grid", "uniform_t", "uniform_log_snr", "karras", "quadratic",
    "Predictor", "Corrector", "register_predictor", "register_corrector",
    "get_predictor", "get_corrector", "list_predictors", "list_correctors",
] + ddim.__all__ + dpm_solver.__all__ + edm.__all__ + adaptive.__all__ + ancestral.__all__ + unipc.__all__ + fitted_grid.__all__ + guidance.__all__ + controllable.__all__ \
    + observations.__all__ + particle.__all__ + ddrm.__all__ + guided_posterior.__all__ + posterior.__all__ \
    + cascade.__all__ + consistency.__all__
