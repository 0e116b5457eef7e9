"""Class-conditional networks: labels y [B] in [0, K] (K: the null label) join the noise embedding.

An unconditional network (num_classes = 0) keeps the reference's parameters and order; a conditional
one adds `label_embed` last, depends on y, reads y=None as the null label, drops labels to the null
label with probability p_uncond in training only (from the global RNG), refuses labels outside
[0, K], and, trained by the command line on the labelled 8-Gaussian mixture, samples each class
in its own component.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch

import models
import samplers
import sde_lib
from models.ddpm import DDPM
from models.mlp import ScoreMLP
from models.ncsnpp import NCSNpp
from score_toolkit import errors, evaluation, factories, toy_data, validation
from tests.helpers import LAYOUTS, NARROW, ShapesOnly, reference_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 10
TINY_UNET = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_channels=1, image_size=8)
NETS = {  # tiny networks of every family: (class, constructor arguments, input shape [B, ...])
    "mlp": (ScoreMLP, dict(hidden=32, embedding_dim=16), (2,)),
    "ddpmpp": (models.get_model("ddpmpp"), dict(TINY_UNET, dropout=0.0), (1, 8, 8)),
    "ncsnpp": (NCSNpp, dict(TINY_UNET, dropout=0.0, progressive="output_skip", progressive_input="input_skip",
                            progressive_combine="cat"), (1, 8, 8)),
    "ddpm": (DDPM, dict(TINY_UNET, dropout=0.0, num_groups=4), (1, 8, 8)),
}


def build(name, seed=0, **kwargs):
    cls, args, _ = NETS[name]
    torch.manual_seed(seed)
    return cls(**args, **kwargs)


def randomize(net, seed=1):
    """Every weight ~ 0.2 N(0, 1): the zero-initialised output layers would hide the labels' effect."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return net


def inputs(name, batch, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *NETS[name][2], generator=g)
    cond = 0.1 + torch.rand(batch, generator=g)  # a sigma (NCSN++: log is taken) or a time label
    return x, cond


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("family", NARROW + ["cifar10_ve_ncsnpp_continuous", "cifar10_vp_ddpmpp_continuous"])
def test_unconditional_networks_keep_the_reference_layout_and_labels_come_last(family):
    config = dict(LAYOUTS[family]["config"])
    cls, want = models.get_model(config.pop("name")), list(reference_params(family).items())
    with ShapesOnly():
        plain = cls(**config, num_classes=0, p_uncond=0.0)
        labelled = cls(**config, num_classes=K, p_uncond=0.1)
    assert [(n, tuple(p.shape)) for n, p in plain.named_parameters()] == want
    assert list(plain.state_dict()) == [n for n, _ in want]
    temb_dim = 4 * config["nf"]
    assert [(n, tuple(p.shape)) for n, p in labelled.named_parameters()] == want + [("label_embed.weight", (K + 1, temb_dim))]


def test_unconditional_mlp_parameters_are_unchanged():
    names = [f"{m}.{w}" for m in ("embed.0", "embed.2", "inp") for w in ("weight", "bias")]
    names += [f"blocks.{i}.{m}.{w}" for i in range(3) for m in ("fc1", "fc2", "emb") for w in ("weight", "bias")]
    names += ["out.weight", "out.bias"]
    assert list(ScoreMLP().state_dict()) == names
    assert list(ScoreMLP(num_classes=8).state_dict()) == names + ["label_embed.weight"]


@pytest.mark.parametrize("name", list(NETS))
def test_labels_are_drawn_last_so_the_other_initial_weights_are_the_unconditional_ones(name):
    plain, labelled = build(name).state_dict(), build(name, num_classes=K).state_dict()
    assert list(labelled) == list(plain) + ["label_embed.weight"]
    for key, value in plain.items():
        assert torch.equal(labelled[key], value), key


@pytest.mark.parametrize("name", list(NETS))
def test_only_conditional_networks_take_y(name):
    sde = sde_lib.VPSDE()
    assert build(name).cond_keys == () and build(name, num_classes=K).cond_keys == ("y",)
    assert models.Precond(sde, build(name)).cond_keys == ()
    assert models.Precond(sde, build(name, num_classes=K)).cond_keys == ("y",)
    x, _ = inputs(name, 2)
    unconditional = f"{type(build(name)).__name__} is unconditional \\(num_classes = 0\\) and takes no class labels y"
    with pytest.raises(TypeError, match=unconditional):
        models.Precond(sde, build(name))(x, torch.full((2,), 0.5), y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="conditioning 'y' is not taken by the score function Precond; it takes no "):
        samplers.ddim_sample(sde, models.Precond(sde, build(name)), (2, *NETS[name][2]), steps=2,
                             cond={"y": torch.tensor([0, 1])})


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("name", list(NETS))
def test_output_depends_on_the_label_and_none_is_the_null_label(name):
    net = randomize(build(name, num_classes=K, p_uncond=0.2)).eval()  # eval: labels pass unchanged
    x, cond = inputs(name, 4)
    with torch.no_grad():
        outs = [net(x, cond, y=torch.full((4,), k)) for k in range(K + 1)]
        none = net(x, cond)
        twice = net(x, cond, y=None)
    for k in range(K):
        assert (outs[k] - outs[K]).abs().amax() > 1e-3 * outs[K].abs().amax(), k
    assert (outs[0] - outs[1]).abs().amax() > 1e-3 * outs[1].abs().amax()
    assert torch.equal(none, outs[K]) and torch.equal(twice, outs[K])
    mixed = net(x, cond, y=torch.tensor([0, 1, K, 1]))  # each sample reads its own label
    torch.testing.assert_close(mixed, torch.stack([outs[0][0], outs[1][1], outs[K][2], outs[1][3]]))


def _dropped(net, x, cond, label):
    """Which samples the training-mode network saw with the null label: the per-sample output equals
    the eval-mode output of either `label` or the null label (the MLP has no other randomness)."""
    y = torch.full((len(x),), label)
    with torch.no_grad():
        out = net.train()(x, cond, y=y)
        net.eval()
        kept, null = net(x, cond, y=y), net(x, cond, y=torch.full_like(y, net.num_classes))
    is_null, is_kept = (out == null).all(1), (out == kept).all(1)
    assert (is_null ^ is_kept).all(), "every training output is the labelled or the null one"
    return is_null


def test_label_dropout_in_training_only_from_the_global_rng():
    net = randomize(build("mlp", num_classes=8, p_uncond=0.5))
    x, cond = inputs("mlp", 4000)
    torch.manual_seed(7)
    u = torch.rand(4000)
    torch.manual_seed(7)
    dropped = _dropped(net, x, cond, label=3)
    assert torch.equal(dropped, u < 0.5), "label i is dropped iff u_i < p_uncond, u = torch.rand(B) of the global RNG"
    assert abs(dropped.float().mean().item() - 0.5) < 0.04
    torch.manual_seed(7)
    assert torch.equal(_dropped(net, x, cond, label=3), dropped), "the same seed drops the same labels"
    assert not torch.equal(_dropped(net, x, cond, label=3), dropped), "the RNG moved on: other labels drop"
    with torch.no_grad():  # eval mode: no label is dropped
        y = torch.full((4000,), 3)
        assert not (net.eval()(x, cond, y=y) == net(x, cond)).all(1).any()


def test_no_dropout_without_p_uncond():
    net = randomize(build("mlp", num_classes=8))
    x, cond = inputs("mlp", 500)
    assert not _dropped(net, x, cond, label=5).any()


@pytest.mark.parametrize("y, words", [
    (torch.tensor([0, K + 1]), rf"y must be class labels in \[0, {K}\] .*got label {K + 1}"),
    (torch.tensor([-1, 2]), rf"y must be class labels in \[0, {K}\] .*got label -1"),
    (torch.tensor([0.0, 1.0]), "y must be an integer tensor .*float32"),
    (torch.tensor([True, False]), "y must be an integer tensor .*bool"),
    (torch.tensor([0, 1, 2]), r"y must be .*shape \[2\]; got shape \(3,\)"),
])
@pytest.mark.parametrize("name", ["mlp", "ddpmpp"])
def test_labels_outside_the_range_are_refused(name, y, words):
    net = build(name, num_classes=K)
    x, cond = inputs(name, 2)
    with pytest.raises(ValueError, match=words):
        net(x, cond, y=y)


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_classes=-1), r"num_classes must be an int >= 0 .*got -1"),
    (dict(num_classes=2.5), r"num_classes must be an int >= 0 .*got 2.5"),
    (dict(num_classes=4, p_uncond=1.0), r"p_uncond must be a number in \[0, 1\), got 1.0"),
    (dict(num_classes=4, p_uncond=-0.1), r"p_uncond must be a number in \[0, 1\), got -0.1"),
    (dict(p_uncond=0.1), r"p_uncond = 0.1 drops class labels, but num_classes = 0"),
])
@pytest.mark.parametrize("name", list(NETS))
def test_bad_label_settings_are_refused(name, kwargs, words):
    with pytest.raises(ValueError, match=words):
        build(name, **kwargs)


def test_config_keys_reach_the_network():
    config = importlib.import_module("configs.fashionmnist_vp_ddpmpp_cond").get_config()
    net = validation.validate_config(config)
    assert net.num_classes == 10 and net.label_embed.p_uncond == 0.1
    assert tuple(net.label_embed.weight.shape) == (11, 4 * config.model.nf)
    plain = importlib.import_module("configs.fashionmnist_vp_ddpmpp").get_config()
    assert plain.model.num_classes == 0 and plain.model.p_uncond == 0.0
    plain.model.num_classes = -3
    with pytest.raises(errors.ConfigError, match=r"config.model.num_classes = -3 is not allowed: must be an integer >= 0"):
        validation.validate_config(plain)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_command_line_training_samples_each_class_in_its_component(tmp_path):
    """Known answer: class k of the labelled mixture is component k, so class-k samples must lie
    nearest component k's mean (chance: 1/8); the null label must still reach every component."""
    workdir = str(tmp_path / "run")
    cmd = [sys.executable, "main.py", "--mode", "train", "--config", "configs/gmm_vp_mlp_cond.py", "--workdir", workdir,
           "--config.training.n_iters=400", "--config.sampling.N=50", "--config.sampling.n_samples=64",
           "--config.sampling.batch_size=64"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    config = importlib.import_module("configs.gmm_vp_mlp_cond").get_config()
    net, step = evaluation.load_ema_model(config, workdir)
    assert step == 400
    sde = factories.build_sde(config)
    score_fn = factories.build_precond(config, sde, net)
    means = toy_data.true_density("gmm").means.double()
    n = 100
    y = torch.arange(8).repeat_interleave(n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-D MLP: thread hand-offs cost more than the arithmetic
    try:
        with torch.no_grad():
            x, _ = samplers.pc_sample(sde, score_fn, (8 * n, 2), steps=100, corrector="none", seed=0, cond={"y": y})
            x_null, _ = samplers.pc_sample(sde, score_fn, (8 * n, 2), steps=100, corrector="none", seed=1)
    finally:
        torch.set_num_threads(threads)
    nearest = torch.cdist(x.double(), means).argmin(1)
    accuracy = [(nearest[y == k] == k).double().mean().item() for k in range(8)]
    assert min(accuracy) > 0.8, f"per-class accuracy {accuracy}"
    spread = (x.double() - means[y]).norm(dim=1).pow(2).mean().sqrt().item()
    assert spread < 0.35, f"RMS distance to the own component's mean {spread:.3f} (exact: sqrt(2) 0.15 = 0.21)"
    share = torch.bincount(torch.cdist(x_null.double(), means).argmin(1), minlength=8).double() / len(x_null)
    assert share.min() > 0.04 and share.max() < 0.3, f"null-label samples per component {share.tolist()}"
