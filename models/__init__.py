"""Score networks, their registry, EMA, and `get_score_fn` (network output -> score)."""
from models.registry import get_model, list_models, register_model
from models.score import get_score_fn
from models.ema import ExponentialMovingAverage
from models import ddpm, mlp, ncsnpp  # noqa: F401  (register "ddpm", "mlp", "ncsnpp", "ddpmpp")

__all__ = ["get_model", "list_models", "register_model", "get_score_fn", "ExponentialMovingAverage"]
