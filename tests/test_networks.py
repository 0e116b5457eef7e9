"""Image score networks (NCSN++, DDPM++, DDPM), FIR resampling and reference-checkpoint loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import checkpoint_convert, ddpm, layers, ncsnpp
from models import up_or_down_sampling as updown
from models.registry import get_model

# The reference timing configuration (1x32x32 images); score_sde_pytorch's parameter counts there
# are 1,775,937 (NCSN++, VE) and 1,752,993 (DDPM++, VP), and 1,589,633 for its DDPM.
SMALL = dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
             num_channels=1, image_size=32)
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
            num_channels=1, image_size=16)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def perturb_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every weight, so layers initialised near zero (init_scale=0) matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def cond_for(net: torch.nn.Module, batch: int) -> torch.Tensor:
    """sigma for Fourier-embedded (VE) nets, 999 t for the others."""
    if getattr(net, "embedding_type", "positional") == "fourier":
        return torch.logspace(-2, 1, batch)
    return torch.linspace(1.0, 999.0, batch)


# ----------------------------------------------------------------------------- architecture

def test_registry_builds_every_network():
    assert get_model("ncsnpp") is ncsnpp.NCSNpp
    assert issubclass(get_model("ddpmpp"), ncsnpp.NCSNpp)
    assert get_model("ddpm") is ddpm.DDPM


def test_parameter_counts_equal_the_reference():
    assert n_params(get_model("ncsnpp")(**SMALL)) == 1_775_937
    assert n_params(get_model("ddpmpp")(**SMALL)) == 1_752_993
    assert n_params(get_model("ddpm")(**SMALL)) == 1_589_633


def test_reference_module_layout():
    """Names, shapes and parameter order a score_sde_pytorch checkpoint (and its EMA list) relies on."""
    net = get_model("ncsnpp")(**SMALL)
    assert len(net.all_modules) == 33
    sd = net.state_dict()
    assert sd["all_modules.0.W"].shape == (32,)  # Fourier features, 2 * 32 = 64 wide
    assert sd["all_modules.1.weight"].shape == (128, 64)
    assert sd["all_modules.3.weight"].shape == (32, 1, 3, 3)
    assert sd["all_modules.7.Conv2d_0.weight"].shape == (32, 1, 3, 3)  # input-pyramid FIR downsample
    assert sd["all_modules.9.NIN_0.W"].shape == (64, 64)
    assert [n for n, _ in net.all_modules[8].named_parameters()] == [
        f"{m}.{p}" for m in ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Conv_1", "Conv_2")
        for p in ("weight", "bias")]
    assert not net.all_modules[0].W.requires_grad  # so it is not in the EMA's shadow_params
    # Every reference family's names, shapes and order: tests/test_reference_layouts.py.
    assert not any(k.endswith("fir_kernel") or k.endswith(".fir") for k in sd)  # FIR taps are not state


NCSNPP_VARIANTS = [
    dict(),  # VE defaults: Fourier, FIR, BigGAN, residual input pyramid
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", progressive_input="residual"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="sum", fir=False),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="input_skip"),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, skip_rescale=False),
    dict(embedding_type="positional", scale_by_sigma=False, centered=True, fir=False, progressive_input="none"),
    dict(num_channels=3, image_size=28, ch_mult=(1, 2), attn_resolutions=(14,), progressive="residual"),
    dict(image_size=32, ch_mult=(1, 2, 2), attn_resolutions=(16, 8), nonlinearity="elu"),
]


@pytest.mark.parametrize("variant", NCSNPP_VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "defaults")
def test_ncsnpp_variants_shape_finite_and_cond_dependent(variant):
    torch.manual_seed(0)
    kw = {**TINY, **variant}
    net = perturb_(get_model("ncsnpp")(**{**kw, "scale_by_sigma": False}))
    c, s = kw["num_channels"], kw["image_size"]
    x = torch.rand(3, c, s, s)
    cond = cond_for(net, 3)
    out = net(x, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = net(x, cond.flip(0) * 0.5)
    assert (out - other).abs().amax() > 1e-4 * out.abs().amax()


@pytest.mark.parametrize("name", ["ddpmpp", "ddpm"])
@pytest.mark.parametrize("size,ch_mult", [(28, (1, 2)), (32, (1, 2, 2))])
def test_vp_networks_on_28_and_32_pixel_images(name, size, ch_mult):
    torch.manual_seed(0)
    extra = {"num_groups": 4} if name == "ddpm" else {}
    net = perturb_(get_model(name)(**{**TINY, "image_size": size, "ch_mult": ch_mult,
                                      "attn_resolutions": (size // 2,), "num_channels": 3}, **extra))
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([10.0, 900.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out - net(x, torch.tensor([900.0, 10.0]))).abs().amax() > 1e-4 * out.abs().amax()


def test_unconditional_network_ignores_cond():
    torch.manual_seed(0)
    net = perturb_(get_model("ddpmpp")(**TINY, conditional=False))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(net(x, torch.tensor([1.0, 2.0])), net(x, torch.tensor([500.0, 900.0])))


def test_scale_by_sigma_divides_by_cond_and_uncentered_maps_to_minus_one_one():
    torch.manual_seed(0)
    plain = perturb_(get_model("ncsnpp")(**TINY, scale_by_sigma=False, centered=True))
    scaled = get_model("ncsnpp")(**TINY, scale_by_sigma=True, centered=False).eval()
    scaled.load_state_dict(plain.state_dict())
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.1, 4.0])
    torch.testing.assert_close(scaled(x, sigma) * sigma[:, None, None, None], plain(2 * x - 1, sigma))


def test_channels_last_weights_give_the_same_output():
    """Converting the conv weights to channels_last (faster convolutions on CPU) changes no result."""
    torch.manual_seed(0)
    net = perturb_(get_model("ncsnpp")(**{**TINY, "num_channels": 3}))
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.1, 4.0])
    want = net(x, sigma)
    got = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), sigma)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ddpmpp_is_ncsnpp_with_the_vp_defaults():
    net = get_model("ddpmpp")(**TINY)
    assert (net.embedding_type, net.progressive_input, net.scale_by_sigma, net.centered) == (
        "positional", "none", False, True)
    assert get_model("ddpmpp")(**TINY, fir=True).all_modules[3].fir


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=30, ch_mult=(1, 2, 2)), "image_size.*4"),
    (dict(progressive="skip"), "progressive must be one of"),
    (dict(progressive_input="residuals"), "progressive_input"),
    (dict(progressive_combine="avg"), "progressive_combine"),
    (dict(resblock_type="resnet"), "resblock_type"),
    (dict(embedding_type="learned"), "embedding_type"),
    (dict(num_channels=0), "num_channels must be an int >= 1, got 0"),
    (dict(conv_size=5), "conv_size"),
    (dict(nf=18), "nf=18"),
    (dict(nf=2), "nf must be"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(nonlinearity="tanh"), "nonlinearity"),
    (dict(fir_kernel=()), "fir_kernel"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_ncsnpp_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_model("ncsnpp")(**{**TINY, **kwargs})


def test_bad_ddpm_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="num_groups=32"):
        get_model("ddpm")(**TINY)  # 8 channels cannot form the reference's 32 groups
    with pytest.raises(ValueError, match="image_size"):
        get_model("ddpm")(**{**TINY, "image_size": 15}, num_groups=4)
    net = get_model("ncsnpp")(**TINY)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 16, 16\]"):
        net(torch.rand(2, 1, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="cond must have shape"):
        net(torch.rand(2, 1, 16, 16), torch.ones(()))


# ----------------------------------------------------------------------------- FIR resampling

def slow_upfirdn(x, k2d, up=1, down=1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d, one plane at a time: zero insertion, zero padding, true convolution
    (flipped kernel), decimation."""
    n, c, h, w = x.shape
    planes = []
    for plane in x.reshape(n * c, 1, h, w):
        u = torch.zeros(1, 1, h * up, w * up, dtype=x.dtype)
        u[..., ::up, ::up] = plane
        u = F.pad(u, (pad[0], pad[1], pad[0], pad[1]))
        planes.append(F.conv2d(u, k2d.flip(0, 1)[None, None])[..., ::down, ::down])
    return torch.cat(planes).reshape(n, c, *planes[0].shape[-2:])


def fir2d(k):
    k1 = torch.tensor(k, dtype=torch.float64)
    return torch.outer(k1, k1) / k1.sum() ** 2


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 4, 1), (1, 2, 1)])
@pytest.mark.parametrize("size", [6, 7])
def test_fir_resampling_matches_per_plane_reference(taps, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    k1, k2, kk = updown.fir_kernel_1d(taps, dtype=torch.float64), fir2d(taps), len(taps)
    p = kk - 2
    torch.testing.assert_close(updown.upsample_2d(x, k1), slow_upfirdn(x, 4 * k2, up=2, pad=((p + 1) // 2 + 1, p // 2)))
    torch.testing.assert_close(updown.downsample_2d(x, k1), slow_upfirdn(x, k2, down=2, pad=((p + 1) // 2, p // 2)))
    # Fused conv + FIR: correlate the zero-inserted input with w over its full support, then filter.
    u = slow_upfirdn(x, torch.ones(1, 1, dtype=x.dtype), up=2, pad=(2, 2))[..., : 2 * size + 3, : 2 * size + 3]
    full = F.conv2d(u, w)  # [(H-1)*2 + 3] samples a side
    p = kk - 2 - 2
    torch.testing.assert_close(updown.upsample_conv_2d(x, w, k1), slow_upfirdn(full, 4 * k2, pad=((p + 1) // 2 + 1, p // 2 + 1)))
    p = kk - 2 + 2
    torch.testing.assert_close(updown.conv_downsample_2d(x, w, k1),
                               F.conv2d(slow_upfirdn(x, k2, pad=((p + 1) // 2, p // 2)), w, stride=2))


def test_fir_upsampling_keeps_a_constant_image_constant():
    k = updown.fir_kernel_1d((1, 3, 3, 1))
    up = updown.upsample_2d(torch.full((1, 2, 6, 6), 2.5), k)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full((1, 2, 10, 10), 2.5))
    # At the border one of the taps 1/4, 3/4 falls on the zero padding: 3/4 of the value per axis.
    torch.testing.assert_close(up[0, 0, 0, 3], torch.tensor(2.5 * 0.75))
    torch.testing.assert_close(up[0, 0, 0, 0], torch.tensor(2.5 * 0.75 ** 2))
    down = updown.downsample_2d(torch.full((1, 1, 8, 8), 2.5), k)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 1, 2, 2), 2.5))
    torch.testing.assert_close(down[0, 0, 0, 2], torch.tensor(2.5 * 7 / 8))  # tap 1/8 on the padding


def test_fir_down_after_up_recovers_a_smooth_image():
    """[1, 3, 3, 1] / 8 has frequency response cos(w/2)**3; upsampling then downsampling passes a
    sinusoid of w = 2 pi / 32 per pixel with gain cos(w/4)**6 per axis, so x comes back times
    cos(pi/64)**12 ~ 0.9856 away from the borders."""
    i = torch.arange(32, dtype=torch.float64)
    x = (torch.sin(2 * math.pi * i / 32)[:, None] * torch.cos(2 * math.pi * i / 32)[None, :])[None, None]
    k = updown.fir_kernel_1d((1, 3, 3, 1), dtype=torch.float64)
    back = updown.downsample_2d(updown.upsample_2d(x, k), k)
    gain = math.cos(math.pi / 64) ** 12
    torch.testing.assert_close(back[..., 2:-2, 2:-2], gain * x[..., 2:-2, 2:-2], rtol=0, atol=1e-6)
    assert (back - gain * x).abs().amax() > 0.05  # the zero-padded border is attenuated


def test_fir_kernel_normalisation_gain_and_box_special_case():
    torch.testing.assert_close(updown.fir_kernel_1d((2, 6, 6, 2)), torch.tensor([1.0, 3, 3, 1]) / 8)
    x = torch.randn(2, 3, 8, 8)
    k = updown.fir_kernel_1d((1, 3, 3, 1))
    torch.testing.assert_close(updown.downsample_2d(x, k, gain=3.0), 3.0 * updown.downsample_2d(x, k))
    torch.testing.assert_close(updown.upsample_2d(x, k, gain=0.5), 0.5 * updown.upsample_2d(x, k))
    box = updown.fir_kernel_1d((1, 1))  # the box filter is average pooling / nearest neighbour
    torch.testing.assert_close(updown.downsample_2d(x, box), F.avg_pool2d(x, 2))
    torch.testing.assert_close(updown.upsample_2d(x, box), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(updown.naive_upsample_2d(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(updown.naive_downsample_2d(x, 4), F.avg_pool2d(x, 4))
    with pytest.raises(ValueError, match="sum to zero"):
        updown.fir_kernel_1d((1, -1))


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    block = perturb_(layers.AttnBlock(8, skip_rescale=True))
    x = torch.randn(2, 8, 4, 4)
    h = block.GroupNorm_0(x)
    q, k, v = (torch.einsum("bchw,co->bohw", h, n.W) + n.b[:, None, None] for n in (block.NIN_0, block.NIN_1, block.NIN_2))
    w = torch.softmax(torch.einsum("bchw,bcij->bhwij", q, k).reshape(2, 4, 4, 16) / math.sqrt(8), dim=-1)
    a = torch.einsum("bhwk,bck->bchw", w, v.reshape(2, 8, 16))
    want = (x + torch.einsum("bchw,co->bohw", a, block.NIN_3.W) + block.NIN_3.b[:, None, None]) / math.sqrt(2)
    torch.testing.assert_close(block(x), want)


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales():
    drop = layers.Dropout(0.25)
    x = torch.ones(100_000)
    torch.manual_seed(0)
    y = drop(x)
    zeros = (y == 0).double().mean().item()
    assert abs(zeros - 0.25) < 4 * math.sqrt(0.25 * 0.75 / x.numel())
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 4.0 / 3.0))
    torch.testing.assert_close(drop.eval()(x), x)
    torch.testing.assert_close(layers.Dropout(0.0)(x), x)
    assert (layers.Dropout(1.0)(x) == 0).all()


# ----------------------------------------------------------------------------- training

def smooth_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """n smooth images in [0, 1]: random mixtures of the lowest cosines, [n, 1, size, size]."""
    u = torch.linspace(0, math.pi, size)
    imgs = sum(torch.randn(n, 1, 1, 1, generator=gen) * torch.cos(fx * u)[:, None] * torch.cos(fy * u)[None, :]
               for fx in range(2) for fy in range(2))
    imgs = imgs - imgs.amin(dim=(2, 3), keepdim=True)
    return imgs / imgs.amax(dim=(2, 3), keepdim=True)


def overfit(net, loss_fn, steps: int) -> tuple:
    """Adam on one batch of 8 images; the loss before and after on a fixed set of noise draws."""
    gen = torch.Generator().manual_seed(1)
    x0 = smooth_images(8, 8, torch.Generator().manual_seed(0))
    x_eval, z_eval, u_eval = x0.repeat(8, 1, 1, 1), torch.randn(64, 1, 8, 8, generator=gen), torch.rand(64, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds overhead
    try:
        with torch.no_grad():
            before = loss_fn(net, x_eval, z_eval, u_eval).item()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = loss_fn(net, x0, torch.randn(x0.shape, generator=gen), torch.rand(8, generator=gen))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = loss_fn(net, x_eval, z_eval, u_eval).item()
    finally:
        torch.set_num_threads(threads)
    return before, after


@pytest.mark.slow
def test_tiny_ncsnpp_overfits_under_ve_denoising_score_matching():
    def loss_fn(net, x, z, u):
        # log sigma ~ U(log 0.05, log 2); the target of sigma * s(x + sigma z) is -z.
        sigma = 0.05 * 40.0 ** u
        return ((sigma[:, None, None, None] * net(x + sigma[:, None, None, None] * z, sigma) + z) ** 2).mean()

    torch.manual_seed(0)
    net = get_model("ncsnpp")(**{**TINY, "image_size": 8, "attn_resolutions": (4,)})
    before, after = overfit(net, loss_fn, steps=400)
    assert before == pytest.approx(1.0, abs=0.05)  # the zero-initialised last conv outputs ~0
    assert after < 0.1 * before


@pytest.mark.slow
def test_tiny_ddpmpp_overfits_under_vp_epsilon_matching():
    def loss_fn(net, x, z, u):
        # VP SDE with beta from 0.1 to 20, t ~ U(1e-3, 1), conditioning on 999 t; target: the noise.
        t = 1e-3 + (1 - 1e-3) * u
        mean_coeff = torch.exp(-0.25 * t ** 2 * 19.9 - 0.05 * t)[:, None, None, None]
        xt = mean_coeff * (2 * x - 1) + torch.sqrt(1 - mean_coeff ** 2) * z
        return ((net(xt, 999 * t) - z) ** 2).mean()

    torch.manual_seed(0)
    net = get_model("ddpmpp")(**{**TINY, "image_size": 8, "attn_resolutions": (4,)})
    before, after = overfit(net, loss_fn, steps=300)
    assert before == pytest.approx(1.0, abs=0.05)
    assert after < 0.1 * before


# ----------------------------------------------------------------------------- reference checkpoints

def reference_checkpoint(net: torch.nn.Module) -> dict:
    """A checkpoint in score_sde_pytorch's layout, built from `net`'s weights (EMA = weights + 1)."""
    return {"model": {"module." + k: v.clone() for k, v in net.state_dict().items()},
            "ema": {"decay": 0.999, "num_updates": 7,
                    "shadow_params": [p.detach() + 1.0 for p in net.parameters() if p.requires_grad]},
            "optimizer": {}, "step": 7}


@pytest.mark.parametrize("name", ["ncsnpp", "ddpmpp", "ddpm"])
def test_reference_checkpoint_loads_weights_and_ema(name):
    extra = {"num_groups": 4} if name == "ddpm" else {}
    torch.manual_seed(0)
    src = perturb_(get_model(name)(**TINY, **extra))
    ckpt = reference_checkpoint(src)
    torch.manual_seed(1)
    dst = get_model(name)(**TINY, **extra).eval()
    checkpoint_convert.load_reference_checkpoint(dst, ckpt, use_ema=False)
    x, cond = torch.rand(2, 1, 16, 16), cond_for(dst, 2)
    torch.testing.assert_close(dst(x, cond), src(x, cond), rtol=0, atol=0)
    checkpoint_convert.load_reference_checkpoint(dst, ckpt)
    for (n, p), (_, q) in zip(dst.named_parameters(), src.named_parameters()):
        torch.testing.assert_close(p, q + 1.0 if q.requires_grad else q, msg=n)  # frozen W from "model"


def test_broken_reference_state_dicts_raise_and_write_nothing():
    torch.manual_seed(0)
    src = get_model("ncsnpp")(**TINY)
    dst = get_model("ncsnpp")(**TINY)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = reference_checkpoint(src)["model"]
    del sd["module.all_modules.1.weight"]
    sd["module.all_modules.99.weight"] = torch.zeros(1)
    sd["module.all_modules.3.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as err:
        checkpoint_convert.load_reference_state_dict(dst, sd)
    msg = str(err.value)
    assert "missing (1): all_modules.1.weight" in msg
    assert "unexpected (1): all_modules.99.weight" in msg
    assert "all_modules.3.bias: model (8,), checkpoint (5,)" in msg
    ema = reference_checkpoint(src)["ema"]
    n = len(ema["shadow_params"])
    with pytest.raises(ValueError, match=r"missing \(1\): all_modules\.\d+\.bias"):
        checkpoint_convert.load_reference_state_dict(dst, dict(ema, shadow_params=ema["shadow_params"][:-1]))
    with pytest.raises(ValueError, match=rf"unexpected \(1\): shadow_params\[{n}\]"):
        checkpoint_convert.load_reference_state_dict(dst, dict(ema, shadow_params=ema["shadow_params"] + [torch.zeros(1)]))
    bad = list(ema["shadow_params"])
    bad[0] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"all_modules\.1\.weight: model \(32, 16\), shadow_params\[0\] \(3,\)"):
        checkpoint_convert.load_reference_state_dict(dst, dict(ema, shadow_params=bad))
    with pytest.raises(ValueError, match="no 'ema' entry"):
        checkpoint_convert.load_reference_checkpoint(dst, {"model": sd})
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
