"""Imagen's efficient U-Net options on NCSN++ / DDPM++: blocks per level, resampling before the down
blocks and after the up blocks, scaled skip features. Each is checked where it acts (which
resolutions the blocks see, what the up blocks concatenate); the defaults leave the reference's
network untouched (tests/test_networks.py and tests/test_reference_layouts.py)."""
import pytest
import torch

from configs.fashionmnist_vp_ddpmpp_sr import get_config as sr_config
from models import layers
from models.ncsnpp import DDPMpp
from score_toolkit import factories, validation

KW = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16, num_channels=1,
          dropout=0.0)
BLOCKS = (layers.ResnetBlockBigGAN, layers.ResnetBlockDDPM)


def _record_inputs(net):
    """[(module, input)] of every residual and attention block, in call order."""
    seen = []
    for m in net.modules():
        if isinstance(m, BLOCKS + (layers.AttnBlock,)):
            m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0])))
    return seen


def _is_resampling(m):
    return isinstance(m, layers.ResnetBlockBigGAN) and (m.up or m.down)


@pytest.mark.parametrize("blocks", [(1, 2, 3), (2, 1, 1)])
def test_blocks_per_level_give_that_many_blocks_at_each_resolution(blocks):
    net = DDPMpp(**{**KW, "num_res_blocks": blocks})
    seen = _record_inputs(net)
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16), torch.rand(2) * 999)
    plain = [(x.shape[-1], x.shape[1]) for m, x in seen if isinstance(m, BLOCKS) and not _is_resampling(m)]
    down = {16: blocks[0], 8: blocks[1], 4: blocks[2] + 2}   # the middle's two blocks run at 4
    up = {16: blocks[0] + 1, 8: blocks[1] + 1, 4: blocks[2] + 1}
    for res in (16, 8, 4):
        assert sum(r == res for r, _ in plain) == down[res] + up[res]


def test_resample_first_runs_no_block_at_full_resolution_and_keeps_the_widths():
    net = DDPMpp(**{**KW, "resample_first": True, "num_res_blocks": (1, 2, 2), "attn_resolutions": (4,)})
    seen = _record_inputs(net)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = net(x, torch.rand(2) * 999)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0
    sizes = {(type(m).__name__, x.shape[-1]) for m, x in seen if not _is_resampling(m)}
    assert max(s for _, s in sizes) == 8                                   # level 0 at 16 / 2
    assert {s for _, s in sizes} == {8, 4, 2}                              # levels at 8, 4, 2
    attn = [x for m, x in seen if isinstance(m, layers.AttnBlock)]
    assert {a.shape[-1] for a in attn} == {4, 2}                           # level 1 (at 4) and the middle
    down = [m for m, _ in seen if _is_resampling(m) and m.down]
    up = [m for m, _ in seen if _is_resampling(m) and m.up]
    assert len(down) == len(up) == 3                                       # one per level, the first one too
    # DDPM-type blocks resample with the DDPM Downsample / Upsample
    assert DDPMpp(**{**KW, "resample_first": True, "resblock_type": "ddpm"})(
        torch.randn(2, 1, 16, 16), torch.rand(2) * 999).shape == (2, 1, 16, 16)


def test_skip_scale_multiplies_every_concatenated_skip_feature():
    net = DDPMpp(**{**KW, "skip_scale": 0.5})
    seen = _record_inputs(net)
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16), torch.rand(2) * 999)
    plain = [(m, x) for m, x in seen if isinstance(m, BLOCKS) and not _is_resampling(m)]
    middle_in = plain[3][1]        # down: 16, 8, 4 (one block each), then the middle's first block
    first_up = plain[5][1]         # the middle's two blocks, then the first up block: cat([h, skip])
    C = first_up.shape[1] // 2
    torch.testing.assert_close(first_up[:, C:], 0.5 * middle_in)     # its skip is the middle's input, halved
    torch.manual_seed(0)
    a = DDPMpp(**KW)
    torch.manual_seed(0)
    b = DDPMpp(**{**KW, "skip_scale": 1.0, "num_res_blocks": (1, 1, 1)})
    x, c = torch.randn(2, 1, 16, 16), torch.rand(2) * 999
    torch.testing.assert_close(a(x, c), b(x, c), rtol=0, atol=0)   # the defaults, spelled out, are the plain net


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_res_blocks=(1, 2)), r"one positive int per level of ch_mult \(3 levels\), got \(1, 2\)"),
    (dict(num_res_blocks=(1, 0, 2)), "num_res_blocks must be a positive int"),
    (dict(resample_first=True, progressive="output_skip"), "resample_first needs progressive"),
    (dict(resample_first=True, image_size=12), r"multiple of 2\*\*len\(ch_mult\) = 8"),
    (dict(skip_scale=0.0), r"skip_scale must be a number > 0"),
])
def test_bad_efficient_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMpp(**{**KW, **kwargs})


def test_the_efficient_super_resolution_config_builds_and_bad_options_are_named():
    c = sr_config("small,efficient")
    validation.validate_config(c)
    net = factories.build_model(c)
    assert net.resample_first and net.blocks == (1, 2, 4) and abs(net.skip_scale - 2 ** -0.5) < 1e-15
    with pytest.raises(ValueError, match=r"options must be among \['efficient', 'from8', 'noaug'\], got \['fast'\]"):
        sr_config("small,fast")
