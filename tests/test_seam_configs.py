"""Config combinations that mean nothing are refused naming both keys; every SDE argument is settable;
the data stream carries labels to the loss."""
import pytest
import torch

from configs.fashionmnist_vp_ddpmpp import get_config as get_image_config
from configs.swissroll_vp_mlp import get_config
import sde_lib
from score_toolkit import data_lib, errors, factories, validation
from score_toolkit.config_keys import set_keys


@pytest.mark.parametrize("overrides, message", [
    ({"model.scale_by_sigma": True},
     r"config.model.scale_by_sigma = True is not allowed: .*999 t, not sigma, for config.sde.name = 'vpsde'"),
    ({"sde.name": "vesde", "model.scale_by_sigma": True, "model.parametrization": "eps"},
     r"config.model.scale_by_sigma = True .*predicts the score, but config.model.parametrization = 'eps'"),
    ({"model.parametrization": "epsilon"},
     r"config.model.parametrization = 'epsilon' is not allowed: must be 'auto' .*\['eps', 'score', 'x0', 'v'\]"),
    ({"sampling.grid": "cosine"}, r"config.sampling.grid = 'cosine' .*one of \[.*'karras', 'quadratic'"),
    ({"sampling.method": "ddim2"}, r"config.sampling.method = 'ddim2' .*must be one of"),
])
def test_meaningless_combinations_are_refused(overrides, message):
    with pytest.raises(errors.ConfigError, match=message):
        validation.validate_config(set_keys(get_config(), **overrides))


def test_data_and_model_centering_must_agree():
    config = set_keys(get_image_config(), **{"data.centered": False})
    with pytest.raises(errors.ConfigError, match=r"config.model.centered = True .*must equal config.data.centered = False"):
        validation.validate_config(config)


def test_every_sde_argument_comes_from_the_config():
    config = set_keys(get_config(), **{"sde.schedule": "cosine", "sde.beta_max": 999.0, "sde.cosine_s": 0.02})
    sde = factories.build_sde(config)
    assert (sde.schedule, sde.cosine_s) == ("cosine", 0.02)
    ve_config = set_keys(get_config(), **{"sde.name": "vesde"})
    assert factories.sde_kwargs(ve_config, sde_lib.VESDE) == {"sigma_min": 0.01, "sigma_max": 50.0, "N": 1000}


def test_validate_builds_the_network_as_training_seeds_it():
    config = get_config()
    net = validation.validate_config(config)
    torch.manual_seed(config.seed)
    again = factories.build_model(config)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_labelled_point_data_yield_labels_and_unlabelled_none():
    g = torch.Generator().manual_seed(0)
    data = data_lib.load(set_keys(get_config(), **{"data.name": "gmm"}))
    x, cond = data.train_batch(64, g)
    assert x.shape == (64, 2) and cond["y"].shape == (64,)
    # the label is the component that drew the point: the nearest mean for these well-separated components
    from score_toolkit import toy_data
    means = toy_data.true_density("gmm").means.float()
    assert torch.equal(torch.cdist(x, means).argmin(1), cond["y"])
    x, cond = data_lib.load(get_config()).train_batch(8, g)
    assert cond == {}


def test_the_sampler_named_in_the_config_is_built_with_its_own_keys():
    config = set_keys(get_config(), **{"sampling.method": "pc", "sampling.corrector_options.norm": "sample"})
    assert factories.corrector_options(config) == {"norm": "sample"}
    config = set_keys(get_config(), **{"sampling.corrector": "ald"})
    assert factories.corrector_options(config) == {}
