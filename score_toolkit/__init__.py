"""The application around the research modules (`sde_lib`, `models`, `samplers`, `likelihood`):
data, losses, training, evaluation, metrics, checkpoints, plotting, the command line, and the
shipped pretrained weights (`pretrained_path`)."""
import os

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def pretrained_path(name: str) -> str:
    """The path of a file shipped in the package's `pretrained/` folder (found after any install)."""
    path = os.path.join(PRETRAINED_DIR, name)
    if not os.path.isfile(path):
        shipped = sorted(os.listdir(PRETRAINED_DIR)) if os.path.isdir(PRETRAINED_DIR) else []
        raise FileNotFoundError(f"no pretrained file {name!r}; shipped: {shipped}")
    return path
