"""Every config loads and validates; a bad key, type or value fails before any work, naming the key."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from score_toolkit import factories, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not os.path.basename(p).startswith("_") and not p.endswith(("default.py", "defaults.py")))


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


def set_key(config, key: str, value) -> None:
    node = config
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value


def test_there_are_configs():
    assert "swissroll_vp_mlp" in CONFIG_FILES and "fashionmnist_ve_ncsnpp" in CONFIG_FILES and len(CONFIG_FILES) >= 10


@pytest.mark.parametrize("name", ["cifar10_ve_ncsnpp", "cifar10_vp_ddpmpp"])
def test_paper_width_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config("paper")
    validation.validate_config(config)
    assert config.model.nf == 128 and config.training.batch_size == 128


def untrained_autoencoder(workdir) -> str:
    """An export of configs/fashionmnist_autoencoder.py's (default) autoencoder at its initial weights,
    for the latent configs, whose validation reads their autoencoder's shapes."""
    from score_toolkit import autoencoders
    ae_config = load("fashionmnist_autoencoder")
    autoencoders.export(str(workdir), ae_config, autoencoders.build(ae_config.autoencoder, ae_config.data), 0, 1.0)
    return str(workdir)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_loads_and_validates(name, tmp_path):
    config = load(name)
    if config.latent.autoencoder:
        config.latent.autoencoder = untrained_autoencoder(tmp_path)
    validation.validate_config(config)
    sde = factories.build_sde(config)
    assert factories.build_model(config) is not None and sde.N == config.sde.N


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
    ("num_threads", -1, "config.num_threads"),
    ("device", "gpu", "config.device"),
    ("device", "cuda:99", "config.device = 'cuda:99'"),
])
def test_impossible_values_name_the_key(key, value, words):
    config = load("swissroll_vp_mlp")
    set_key(config, key, value)
    with pytest.raises(ValueError, match=words):
        validation.validate_config(config)


@pytest.mark.parametrize("key, value, words", [
    ("data.name", "imagenet", "config.data.name"),
    ("data.num_channels", 2, "config.data.num_channels"),
    ("model.image_size", 64, "config.model.image_size = 64 .*must equal config.data.image_size"),
    ("eval.feature_extractor", "clip", "config.eval.feature_extractor"),
    ("eval.feature_extractor", "classifier", "config.eval.feature_path"),
    ("model.nf", 3, "config.model: nf must be"),
])
def test_image_config_errors_name_the_key(key, value, words):
    config = load("fashionmnist_ve_ncsnpp")
    set_key(config, key, value)
    with pytest.raises(ValueError, match=words):
        validation.validate_config(config)


def test_model_argument_it_does_not_take():
    config = load("swissroll_vp_mlp")
    config.model.unlock()
    config.model.nf = 64
    with pytest.raises(ValueError, match="config.model.nf"):
        validation.validate_config(config)


@pytest.mark.parametrize("override, words", [
    ("--config.training.n_iterz=5", "n_iterz"),
    ("--config.training.batch_size=abc", "batch_size"),
    pytest.param("--config.optim.lr=-1", "config.optim.lr", marks=pytest.mark.slow),  # builds the model: 2-3 s
])
def test_command_line_overrides_are_checked(tmp_path, override, words):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--mode", "train", "--workdir", str(tmp_path),
                        override], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and words in r.stderr + r.stdout
    assert not os.path.exists(tmp_path / "checkpoints")
