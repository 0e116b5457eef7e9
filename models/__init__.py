"""Score networks, their registry, EMA, and `get_score_fn` (network output -> score)."""
from models.registry import get_model, list_models, register_model
from models.score import get_score_fn
from models.precond import PARAMETRIZATIONS, Precond, noise_label
from models.ema import ExponentialMovingAverage
from models.consistency import ConsistencyFunction
from models import ddpm, mlp, ncsnpp  # noqa: F401  (register "ddpm", "mlp", "ncsnpp", "ddpmpp")

__all__ = ["get_model", "list_models", "register_model", "get_score_fn", "Precond", "PARAMETRIZATIONS", "noise_label", "ExponentialMovingAverage",
           "ConsistencyFunction"]
