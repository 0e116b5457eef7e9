"""Every config loads and validates; a bad key, type or value fails before any work, naming the key."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

import builders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not os.path.basename(p).startswith(("_", "default")))


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_there_are_configs():
    assert "swissroll_vp_mlp" in CONFIG_FILES and len(CONFIG_FILES) >= 4


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_loads_and_validates(name):
    config = load(name)
    builders.validate_config(config)
    sde = builders.build_sde(config)
    assert builders.build_model(config) is not None and sde.N == config.sde.N


@pytest.mark.parametrize("key, value, words", [
    ("optim.lr", -1e-3, "config.optim.lr = -0.001"),
    ("training.eps", 1.0, "config.training.eps = 1.0 .* must lie in \\(0, T\\)"),
    ("sampling.eps", 0.0, "config.sampling.eps"),
    ("sampling.predictor", "heun", "config.sampling.predictor = 'heun' .*reverse_diffusion"),
    ("sampling.corrector", "hmc", "config.sampling.corrector"),
    ("sampling.ode_method", "rk45", "config.sampling.ode_method"),
    ("sde.name", "edm", "config.sde.name"),
    ("sde.beta_max", 0.01, "config.sde"),
    ("model.name", "unet9000", "config.model.name"),
    ("training.weighting", "snr", "config.training"),
    ("training.batch_size", 0, "config.training.batch_size"),
    ("data.name", "spirals", "config.data.name"),
    ("model.ema_rate", 1.5, "config.model.ema_rate"),
])
def test_impossible_values_name_the_key(key, value, words):
    config = load("swissroll_vp_mlp")
    node = config
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=words):
        builders.validate_config(config)


def test_model_argument_it_does_not_take():
    config = load("swissroll_vp_mlp")
    config.model.unlock()
    config.model.nf = 64
    with pytest.raises(ValueError, match="config.model.nf"):
        builders.validate_config(config)


@pytest.mark.parametrize("override, words", [
    ("--config.training.n_iterz=5", "n_iterz"),
    ("--config.training.batch_size=abc", "batch_size"),
    ("--config.optim.lr=-1", "config.optim.lr"),
])
def test_command_line_overrides_are_checked(tmp_path, override, words):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--mode", "train", "--workdir", str(tmp_path),
                        override], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and words in r.stderr + r.stdout
    assert not os.path.exists(tmp_path / "checkpoints")
