"""Samplers over the `score_fn(x, t)` seam: predictor-corrector and probability-flow ODE.

    x, nfe = samplers.pc_sample(sde, score_fn, shape, predictor="reverse_diffusion", corrector="langevin")
    x, nfe = samplers.ode_sample(sde, score_fn, shape, rtol=1e-5, atol=1e-5)
"""
from samplers.correctors import Corrector, get_corrector, list_correctors, register_corrector
from samplers.grids import uniform_grid
from samplers.ode import ode_methods, ode_sample, solve_flow
from samplers.pc import pc_sample, tweedie_denoise
from samplers.predictors import Predictor, get_predictor, list_predictors, register_predictor

__all__ = [
    "pc_sample", "ode_sample", "solve_flow", "tweedie_denoise", "uniform_grid", "ode_methods",
    "Predictor", "Corrector", "register_predictor", "register_corrector",
    "get_predictor", "get_corrector", "list_predictors", "list_correctors",
]
