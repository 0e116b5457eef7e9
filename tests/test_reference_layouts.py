"""score_sde_pytorch's networks, pinned by name and shape: every reference configuration family
builds here with the reference's parameter names, shapes and order, so its checkpoints load by name.

fixtures/score_sde_layouts.json was made by building score_sde_pytorch's networks (commit cb1f359)
from its configs ve/cifar10_ncsnpp[_deep]_continuous, vp/ and subvp/cifar10_ddpmpp[_deep]_continuous,
vp/ddpm/cifar10, ve/{celebahq_256,ffhq_256,bedroom,church}_ncsnpp_continuous and the 1024-pixel
ve/{ffhq,celebahq}_ncsnpp_continuous, plus narrow variants of the high-resolution and DDPM layouts. It holds, per family, the network config in this package's keyword
arguments, the reference's `named_parameters()` as {name: shape} in order (or `same_params_as`,
the family with the identical list), its frozen parameters, its buffers and its parameter count;
the narrow families also hold `known_answer`: summaries of the reference network's output for
seeded weights and inputs. No weights are stored.
"""
from __future__ import annotations

import time
from typing import Dict, Tuple

import pytest
import torch

from models import checkpoint_convert
from models.registry import get_model
from tests.helpers import LAYOUTS, NARROW, ShapesOnly, reference_params

HIGH_RES = "narrow_highres_output_skip_input_skip"


def build(family: str, shapes_only: bool = False) -> torch.nn.Module:
    """This package's network for `family`, from the fixture's config."""
    config = dict(LAYOUTS[family]["config"])
    cls = get_model(config.pop("name"))
    if not shapes_only:
        return cls(**config)
    with ShapesOnly():
        return cls(**config)


def layout_diff(got: Dict[str, tuple], want: Dict[str, tuple], shown: int = 5) -> str:
    """The first few missing, unexpected and mis-shaped names of `got` against `want`."""
    missing = [n for n in want if n not in got]
    unexpected = [n for n in got if n not in want]
    shapes = [f"{n}: here {got[n]}, reference {want[n]}" for n in want if n in got and got[n] != want[n]]
    parts = [f"{label} ({len(items)}): {items[:shown]}" for label, items in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if items]
    return "state dict differs from the reference: " + "; ".join(parts)


# ----------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("family", list(LAYOUTS))
def test_state_dict_names_and_shapes_equal_the_reference(family):
    net = build(family, shapes_only=True)
    got = {name: tuple(value.shape) for name, value in net.state_dict().items()}
    want = reference_params(family)
    assert got == want, layout_diff(got, want)
    assert sum(p.numel() for p in net.parameters()) == LAYOUTS[family]["n_params"]
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == LAYOUTS[family]["frozen"]


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_parameter_order_equals_the_reference(family):
    """The EMA's shadow_params are matched to parameters by position, so the order must agree too."""
    got = [name for name, _ in build(family, shapes_only=True).named_parameters()]
    want = list(reference_params(family))
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert got == want, f"first difference at position {first}: here {got[first]}, reference {want[first]}"


def test_input_and_output_pyramid_resamplers_sit_outside_all_modules():
    """The high-resolution failure: a resampler inside all_modules shifts every later index by one."""
    net = build(HIGH_RES)
    assert not any(m is net.pyramid_downsample or m is net.pyramid_upsample for m in net.all_modules)
    assert not list(net.pyramid_downsample.parameters()) and not list(net.pyramid_upsample.parameters())
    indices = {int(name.split(".")[1]) for name in reference_params(HIGH_RES) if name.startswith("all_modules.")}
    assert len(net.all_modules) == max(indices) + 1


# ----------------------------------------------------------------------------- narrow networks

def seeded_reference_checkpoint(family: str, gen: torch.Generator) -> dict:
    """A checkpoint named as the reference's would be (DataParallel prefix, `sigmas` buffer), with
    weights std * N(0, 1) drawn in the reference's parameter order and EMA = weights + 1."""
    entry = LAYOUTS[family]
    std = entry["known_answer"]["weight_std"]
    weights = {n: std * torch.randn(shape, generator=gen) for n, shape in reference_params(family).items()}
    model = {"module." + n: w for n, w in weights.items()}
    model.update({"module." + n: torch.ones(shape) for n, shape in entry["buffers"].items()})
    shadow = [w + 1.0 for n, w in weights.items() if n not in entry["frozen"]]
    return {"model": model, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1}


def seeded_inputs(family: str, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    config = LAYOUTS[family]["config"]
    c, s = config["num_channels"], config["image_size"]
    return torch.rand(2, c, s, s, generator=gen), torch.tensor(LAYOUTS[family]["known_answer"]["cond"])


def loaded_narrow_net(family: str) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The narrow network with the known answer's weights, loaded from reference names, and its inputs."""
    gen = torch.Generator().manual_seed(LAYOUTS[family]["known_answer"]["seed"])
    ckpt = seeded_reference_checkpoint(family, gen)
    net = checkpoint_convert.load_reference_checkpoint(build(family), ckpt, use_ema=False).eval()
    return (net, *seeded_inputs(family, gen))


@pytest.mark.parametrize("family", NARROW)
def test_narrow_network_reproduces_the_reference_output(family):
    """Same weights by name, same inputs: the reference's output sums and samples, to float32 rounding."""
    net, x, cond = loaded_narrow_net(family)
    want = LAYOUTS[family]["known_answer"]
    with torch.no_grad():
        out = net(x, cond).double()
    ramp = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
    scale = want["abs_sum"]
    assert out.abs().sum().item() == pytest.approx(scale, rel=1e-5)
    assert out.sum().item() == pytest.approx(want["sum"], abs=1e-5 * scale)
    assert (out * ramp).sum().item() == pytest.approx(want["ramp_sum"], abs=1e-5 * scale)
    torch.testing.assert_close(out.flatten()[::97], torch.tensor(want["every_97th"], dtype=torch.float64),
                               rtol=1e-4, atol=1e-5 * scale / out.numel() ** 0.5 + 1e-6)


@pytest.mark.parametrize("family", NARROW)
def test_reference_ema_loads_onto_the_trainable_parameters(family):
    gen = torch.Generator().manual_seed(0)
    ckpt = seeded_reference_checkpoint(family, gen)
    net = checkpoint_convert.load_reference_checkpoint(build(family), ckpt)
    frozen = LAYOUTS[family]["frozen"]
    for name, param in net.named_parameters():
        want = ckpt["model"]["module." + name] + (0.0 if name in frozen else 1.0)
        torch.testing.assert_close(param.detach(), want, rtol=0, atol=0, msg=name)


def test_reference_checkpoint_with_a_wrong_layout_is_refused():
    """Only the reference's weight-free `sigmas` is skipped; a stray index still fails loudly."""
    ckpt = seeded_reference_checkpoint(HIGH_RES, torch.Generator().manual_seed(0))
    name = next(n for n in ckpt["model"] if ".GroupNorm_0.weight" in n)
    index = int(name.split(".")[2])
    ckpt["model"][name.replace(f".{index}.", f".{index + 1}.", 1)] = ckpt["model"].pop(name)
    with pytest.raises(ValueError, match="missing"):
        checkpoint_convert.load_reference_state_dict(build(HIGH_RES), ckpt["model"])


def test_narrow_high_resolution_network_trains_on_cpu():
    """output_skip + input_skip, FIR, Fourier features: forward and backward reach every trainable weight."""
    net, x, cond = loaded_narrow_net(HIGH_RES)
    start = time.perf_counter()
    out = net.train()(x, cond)
    (out ** 2).mean().backward()
    elapsed = time.perf_counter() - start
    assert out.shape == x.shape and torch.isfinite(out).all()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert elapsed < 5.0, f"forward + backward took {elapsed:.1f} s"
