"""Cross-attention conditioning on a context sequence (models.attention, in NCSN++ / DDPM++ and the point MLP).

Known answers: attention equals a float64 softmax written out with explicit -inf at the padding, one
context token c gives W_o W_v c + b_o at every query, the order of the tokens and the values of padding
tokens change nothing, new context layers are exactly the identity (a context network equals the
context-free one with the same weights), and on a labelled Gaussian mixture a network conditioned on
one-hot context tokens learns the exact class-conditional score as well as one conditioned on labels.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import models
import samplers
import sde_lib
from models import layers
from models.attention import (BasicTransformerBlock, CrossAttention, FeedForward, GEGLU, SpatialTransformer,
                              TokenCrossAttention, last_real_token)
from models.ddpm import DDPM
from models.mlp import ScoreMLP
from models.ncsnpp import NCSNpp
from sde_lib.analytic import GaussianMixture

F64 = torch.float64
D = 6  # context width
# Fourier embeddings: the sinusoidal one is computed in float32, and these tests run in float64
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_channels=1, image_size=8,
            embedding_type="fourier")
NETS = {  # (class, constructor arguments, context arguments, input shape [B, ...])
    "ddpmpp": (models.get_model("ddpmpp"), TINY, dict(context_resolutions=(8, 4), context_pool=True), (1, 8, 8)),
    "ncsnpp": (NCSNpp, dict(TINY, progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
               dict(context_resolutions=(4,), context_heads=2, context_dim_head=4, context_depth=2), (1, 8, 8)),
    "resample_first": (models.get_model("ddpmpp"), dict(TINY, num_res_blocks=(1, 2), resample_first=True),
                       dict(context_resolutions=(4, 2)), (1, 8, 8)),
    "mlp": (ScoreMLP, dict(hidden=16, num_layers=2, embedding_dim=8), dict(context_heads=2), (2,)),
}
CONTEXT_PARAMS = {"mlp": "cross_attn."}  # the prefix of the context layers' parameters (U-Nets: context_layers.)


def build(name, context=True, seed=0, **kwargs):
    cls, args, context_args, _ = NETS[name]
    torch.manual_seed(seed)
    extra = dict(context_args, context_dim=D) if context else {}
    return cls(**{**args, **extra, **kwargs}).double().eval()


def randomize(module, seed=1, scale=0.3):
    """Every weight ~ scale N(0, 1): zero-initialised layers (W_o, proj_out, the pool) would hide the context."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def inputs(name, batch, seed=2, length=4):
    """x, cond, context [batch, length, D] and a mask with at least one real token per sample (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *NETS[name][3], generator=g, dtype=F64)
    cond = 0.1 + torch.rand(batch, generator=g, dtype=F64)
    context = torch.randn(batch, length, D, generator=g, dtype=F64)
    mask = torch.rand(batch, length, generator=g) < 0.6
    mask[:, 0] = True
    return x, cond, context, mask


def tokens(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def prefix(name):
    return CONTEXT_PARAMS.get(name, "context_layers.")


# ----------------------------------------------------------------------------- the attention layer

def reference_attention(attn, x, context, mask):
    """concat_h(softmax(Q K^T / sqrt(d) + M) V) W_o + b_o with M = -inf at the padding, in float64."""
    def heads(t):  # [B, n, H d] -> [B, H, n, d]
        return t.reshape(t.shape[0], t.shape[1], attn.heads, attn.dim_head).permute(0, 2, 1, 3)
    q, k, v = (heads(a @ w.weight.T) for a, w in ((x, attn.to_q), (context, attn.to_k), (context, attn.to_v)))
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.dim_head)
    scores = scores.masked_fill(~mask[:, None, None, :], -math.inf)
    out = (torch.softmax(scores, -1) @ v).permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    return out @ attn.to_out.weight.T + attn.to_out.bias


def attention(seed=0, query_dim=5, context_dim=D, heads=3, dim_head=4):
    torch.manual_seed(seed)
    return randomize(CrossAttention(query_dim, context_dim, heads, dim_head).double())


def test_masked_attention_equals_a_float64_softmax_with_minus_inf_at_the_padding():
    attn = attention()
    x, context = tokens(4, 7, 5), tokens(4, 6, D, seed=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1], [0, 1, 1, 0, 1, 0]]).bool()
    torch.testing.assert_close(attn(x, context, mask), reference_attention(attn, x, context, mask), rtol=0, atol=1e-12)
    every = torch.ones(4, 6, dtype=torch.bool)
    torch.testing.assert_close(attn(x, context), reference_attention(attn, x, context, every), rtol=0, atol=1e-12)
    own = attention(query_dim=5, context_dim=5)  # context None: self-attention on x
    torch.testing.assert_close(own(x), reference_attention(own, x, x, torch.ones(4, 7, dtype=torch.bool)),
                               rtol=0, atol=1e-12)


def test_a_sample_with_only_padding_gets_the_output_bias_and_leaves_the_others_alone():
    attn = attention()
    x, context = tokens(3, 5, 5), tokens(3, 4, D, seed=1).requires_grad_()
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]).bool()
    out = attn(x, context, mask)
    assert torch.equal(out[1], attn.to_out.bias.detach().expand(5, -1)), "no real token: A V = 0, out = b_o"
    for b in (0, 2):  # each sample alone, as if the padded one were not in the batch
        torch.testing.assert_close(out[b:b + 1], attn(x[b:b + 1], context[b:b + 1], mask[b:b + 1]), rtol=0, atol=1e-13)
    out.square().sum().backward()
    assert torch.isfinite(context.grad).all() and torch.equal(context.grad[1], torch.zeros(4, D, dtype=F64))


def test_one_context_token_gives_w_o_w_v_c_at_every_query():
    attn = attention(heads=2, dim_head=3)
    x, c = tokens(3, 9, 5), tokens(3, 1, D, seed=1)
    want = c @ attn.to_v.weight.T @ attn.to_out.weight.T + attn.to_out.bias  # [3, 1, 5], whatever Q and K are
    torch.testing.assert_close(attn(x, c), want.expand(3, 9, 5), rtol=0, atol=1e-12)


def test_token_order_and_padding_values_change_nothing():
    attn = attention()
    x, context = tokens(3, 5, 5), tokens(3, 6, D, seed=1)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    out = attn(x, context, mask)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(attn(x, context[:, perm], mask[:, perm]), out, rtol=0, atol=1e-12)
    junk = 1e3 * tokens(3, 4, D, seed=4)  # padding of any value, appended with mask False
    padded = attn(x, torch.cat([context, junk], 1), torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, out, rtol=0, atol=1e-12)


def test_geglu_and_the_feed_forward_equal_their_formulas():
    torch.manual_seed(0)
    ff = randomize(FeedForward(5, mult=3).double())
    x = tokens(4, 2, 5)
    W, b = ff.geglu.proj.weight, ff.geglu.proj.bias
    a, g = x @ W[:15].T + b[:15], x @ W[15:].T + b[15:]
    want = a * 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))  # a * g Phi(g)
    torch.testing.assert_close(ff.geglu(x), want, rtol=0, atol=1e-14)
    torch.testing.assert_close(ff(x), want @ ff.out.weight.T + ff.out.bias, rtol=0, atol=1e-13)
    assert isinstance(ff.geglu, GEGLU) and ff.geglu.proj.out_features == 2 * 15


def test_transformer_block_is_self_attention_cross_attention_and_feed_forward_each_with_a_residual():
    torch.manual_seed(0)
    block = randomize(BasicTransformerBlock(8, D, heads=2, dim_head=4).double())
    x, c = tokens(2, 5, 8), tokens(2, 3, D, seed=1)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]]).bool()
    h = x + reference_attention(block.attn1, block.norm1(x), block.norm1(x), torch.ones(2, 5, dtype=torch.bool))
    h = h + reference_attention(block.attn2, block.norm2(h), c, mask)
    torch.testing.assert_close(block(x, c, mask), h + block.ff(block.norm3(h)), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- image and point layers

def test_a_new_spatial_transformer_is_the_identity_and_then_equivariant_to_moving_pixels():
    torch.manual_seed(0)
    st = SpatialTransformer(8, D, heads=2, dim_head=3, depth=2).double()
    x, c = tokens(2, 8, 4, 4), tokens(2, 3, D, seed=1)
    assert torch.equal(st(x, c), x), "proj_out starts at zero"
    randomize(st)
    out = st(x, c)
    assert (out - x).abs().amax() > 0.1 and (st(x, -c) - out).abs().amax() > 1e-3  # it reads x and the context
    # GroupNorm, the 1x1 convolutions and attention treat the H W pixels as an unordered set
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    moved = st(x.flatten(2)[:, :, perm].reshape(2, 8, 4, 4), c)
    torch.testing.assert_close(moved.flatten(2), out.flatten(2)[:, :, perm], rtol=0, atol=1e-12)


def test_token_cross_attention_is_the_identity_then_adds_w_o_w_v_c_for_one_token():
    torch.manual_seed(0)
    layer = TokenCrossAttention(8, D, heads=2).double()
    h, c = tokens(3, 8), tokens(3, 1, D, seed=1)
    assert torch.equal(layer(h, c), h)
    randomize(layer)
    attn = layer.attn
    want = h + (c[:, 0] @ attn.to_v.weight.T @ attn.to_out.weight.T + attn.to_out.bias)
    torch.testing.assert_close(layer(h, c), want, rtol=0, atol=1e-12)


def test_last_real_token_is_the_pooled_caption():
    c = tokens(3, 4, D)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]).bool()
    want = torch.stack([c[0, 1], torch.zeros(D, dtype=F64), c[2, 3]])
    assert torch.equal(last_real_token(c, mask), want)
    assert torch.equal(last_real_token(c, None), c[:, -1])


# ----------------------------------------------------------------------------- networks

@pytest.mark.parametrize("name", list(NETS))
def test_context_layers_come_last_and_leave_the_other_initial_weights_alone(name):
    plain, ctx = build(name, context=False).state_dict(), build(name).state_dict()
    assert list(ctx)[:len(plain)] == list(plain)
    assert list(ctx)[len(plain):] and all(k.startswith(prefix(name)) for k in list(ctx)[len(plain):])
    for key, value in plain.items():
        assert torch.equal(ctx[key], value), key
    assert build(name).cond_keys == ("context", "context_mask") and build(name, context=False).cond_keys == ()


@pytest.mark.parametrize("name", list(NETS))
def test_a_new_context_network_equals_the_context_free_one_with_the_same_weights(name):
    plain = randomize(build(name, context=False))
    net = build(name, seed=5)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(prefix(name)) for k in missing)
    x, cond, context, mask = inputs(name, 3)
    with torch.no_grad():
        assert torch.equal(net(x, cond, context=context, context_mask=mask), plain(x, cond))
        assert torch.equal(net(x, cond, context=context), plain(x, cond))


@pytest.mark.parametrize("name", list(NETS))
def test_the_context_reaches_the_output_and_padding_gets_no_gradient(name):
    net = randomize(build(name))
    x, cond, context, mask = inputs(name, 3, length=5)
    context.requires_grad_()
    out = net(x, cond, context=context, context_mask=mask)
    out.square().sum().backward()
    norms = context.grad.norm(dim=-1)  # [B, L]
    assert (norms[mask] > 1e-6).all(), "every real token moves the output"
    assert torch.equal(norms[~mask], torch.zeros_like(norms[~mask])), "padding is out of every softmax"
    with torch.no_grad():
        perm = torch.randperm(5, generator=torch.Generator().manual_seed(3))
        junk = torch.cat([context.detach(), 1e3 * tokens(3, 2, D, seed=4)], 1)
        padded_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
        if name != "ddpmpp":  # the pooled token is the last real one: the order matters there
            torch.testing.assert_close(net(x, cond, context=context[:, perm], context_mask=mask[:, perm]), out,
                                       rtol=0, atol=1e-12)
        torch.testing.assert_close(net(x, cond, context=junk, context_mask=padded_mask), out, rtol=0, atol=1e-12)


def test_every_spatial_transformer_runs_once_in_forward_order_after_the_attention():
    net = randomize(build("ddpmpp"))
    ran = []
    layers_at = [(place, layer) for place, layer in net.context_layers.transformers.items()]
    layers_at += [("attn", m) for m in net.all_modules if isinstance(m, layers.AttnBlock)]
    for place, layer in layers_at:
        layer.register_forward_hook(lambda m, args, out, place=place: ran.append((place, tuple(args[0].shape[1:]))))
    x, cond, context, mask = inputs("ddpmpp", 2)
    net(x, cond, context=context, context_mask=mask)
    # ch_mult (1, 2) at 8 and 4 pixels, attention at 4: one block per level down, the middle, two blocks
    # per level up; a level's attention (after its last block, in the up path) comes before the transformer
    small, large = (16, 4, 4), (8, 8, 8)
    assert ran == [("down_0_0", large), ("attn", small), ("down_1_0", small), ("attn", small), ("mid", small),
                   ("up_1_0", small), ("attn", small), ("up_1_1", small), ("up_0_0", large), ("up_0_1", large)]


def test_every_token_cross_attention_of_the_mlp_follows_its_own_block():
    net = randomize(build("mlp"))
    ran = []
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, args, out, i=i: ran.append(("block", i)))
        net.cross_attn[i].register_forward_hook(lambda m, args, out, i=i: ran.append(("cross", i)))
    x, cond, context, mask = inputs("mlp", 2)
    net(x, cond, context=context, context_mask=mask)
    assert ran == [("block", 0), ("cross", 0), ("block", 1), ("cross", 1)]


def test_the_pooled_caption_is_the_last_real_token_through_a_linear_map():
    net = randomize(build("ddpmpp", context_resolutions=()))  # the pooled embedding alone
    assert not net.context_layers.transformers
    x, cond, context, _ = inputs("ddpmpp", 2)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0]]).bool()  # last real tokens: 3 and 2
    with torch.no_grad():
        out = net(x, cond, context=context, context_mask=mask)
        other = context.clone()
        other[:, :2] = tokens(2, 2, D, seed=9)
        assert torch.equal(net(x, cond, context=other, context_mask=mask), out)
        for b, last in ((0, 3), (1, 2)):
            moved = context.clone()
            moved[b, last] += 1.0
            diff = (net(x, cond, context=moved, context_mask=mask) - out).flatten(1).abs().amax(1)
            assert diff[b] > 1e-4 and diff[1 - b] == 0


@pytest.mark.parametrize("cls, kwargs", [
    (NCSNpp, dict()), (NCSNpp, dict(progressive="output_skip", progressive_input="input_skip")),
    (NCSNpp, dict(progressive="residual", progressive_input="residual")), (NCSNpp, dict(sr_from=4)),
    (NCSNpp, dict(learn_variance=True)), (DDPM, dict()), (DDPM, dict(sr_from=4)), (DDPM, dict(learn_variance=True)),
])
def test_unets_run_on_four_channel_latents(cls, kwargs):
    torch.manual_seed(0)
    args = dict(TINY, num_channels=4)
    if cls is DDPM:
        del args["embedding_type"]
        args["num_groups"] = 4
    net = randomize(cls(**args, **kwargs), scale=0.2).eval()  # float32: DDPM's embedding is computed in float32
    x, cond = tokens(2, 4, 8, 8).float(), torch.tensor([0.5, 3.0])
    sr = {"low_res": tokens(2, 4, 4, 4, seed=1).float()} if kwargs.get("sr_from") else {}
    with torch.no_grad():
        out = net(x, cond, **sr)
        assert out.shape == (2, 8 if kwargs.get("learn_variance") else 4, 8, 8) and torch.isfinite(out).all()
        moved = x.clone()
        moved[:, 3] += 1.0  # the fourth channel is read, not dropped
        assert (net(moved, cond, **sr) - out).abs().amax() > 1e-3 * out.abs().amax()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_num_channels_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=rf"num_channels must be an int >= 1, got {value!r}"):
        NCSNpp(**dict(TINY, num_channels=value))


# ----------------------------------------------------------------------------- refused inputs and settings

@pytest.mark.parametrize("name", ["ddpmpp", "mlp"])
def test_bad_context_inputs_are_refused(name):
    net = build(name, max_context_len=5)
    x, cond, context, mask = inputs(name, 2)
    with pytest.raises(ValueError, match=rf"context_dim = {D}\) and needs context \[B, L, {D}\]; for the "
                                         "unconditional score pass an encoded empty caption, not None"):
        net(x, cond)
    with pytest.raises(ValueError, match=rf"context must have shape \[B, L, context_dim\] = \[2, L >= 1, {D}\] "
                                         rf"\(context_dim = {D}\), got \(2, 4, 5\)"):
        net(x, cond, context=context[..., :5])
    with pytest.raises(ValueError, match=r"got \(3, 4, 6\)"):
        net(x, cond, context=torch.cat([context, context[:1]]))
    with pytest.raises(ValueError, match="context has L = 6 tokens, more than max_context_len = 5"):
        net(x, cond, context=torch.cat([context, context[:, :2]], 1))
    with pytest.raises(ValueError, match=r"context must be a float tensor \[B, L, context_dim\].*got torch.int64"):
        net(x, cond, context=context.long())
    with pytest.raises(ValueError, match=r"context_mask must be a bool tensor \[B, L\] = \[2, 4\] .*got torch.bool "
                                         r"\(2, 3\)"):
        net(x, cond, context=context, context_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"context_mask must be a bool tensor .*got torch.float32 \(2, 4\)"):
        net(x, cond, context=context, context_mask=mask.float())
    plain = build(name, context=False)
    words = f"{type(plain).__name__} takes no context \\(context_dim = 0\\)"
    with pytest.raises(TypeError, match=words):
        plain(x, cond, context=context)
    with pytest.raises(TypeError, match=words):
        plain(x, cond, context_mask=mask)


@pytest.mark.parametrize("kwargs, words", [
    (dict(context_dim=-1, context_resolutions=(4,)), r"context_dim must be an int >= 0 .*got -1"),
    (dict(context_dim=D, context_resolutions=(16,)), r"context_resolutions must be feature-map resolutions of this "
                                                     r"U-Net, \[8, 4\]; got \(16,\)"),
    (dict(context_resolutions=(4,)), r"context_resolutions = \(4,\) and context_pool = False read a context, but "
                                     "context_dim = 0"),
    (dict(context_dim=D), rf"context_dim = {D} needs context_resolutions \(e.g. \(16, 8\)\) or context_pool"),
    (dict(context_dim=D, context_resolutions=(4,), context_heads=3), "context_heads = 3 must divide the 16 channels"),
    (dict(context_dim=D, context_resolutions=(4,), context_heads=0), "context_heads must be an int >= 1, got 0"),
    (dict(context_dim=D, context_resolutions=(4,), max_context_len=-2), "max_context_len must be an int >= 0"),
    (dict(context_dim=D, context_resolutions=(4,), context_depth=0), "context_depth must be an int >= 1, got 0"),
])
def test_bad_context_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        NCSNpp(**TINY, **kwargs)


def test_bad_mlp_context_settings_are_refused():
    with pytest.raises(ValueError, match="context_heads = 3 must divide hidden = 16"):
        ScoreMLP(hidden=16, context_dim=D, context_heads=3)
    with pytest.raises(ValueError, match=r"context_dim must be an int >= 0 .*got 2.0"):
        ScoreMLP(context_dim=2.0)


def test_the_context_travels_through_the_conditioning_channel():
    """A sampler passes context and context_mask to a context network; at initialisation its samples are
    the context-free network's, bit for bit; a network without context refuses them."""
    sde = sde_lib.VPSDE()
    plain = randomize(build("mlp", context=False))
    net = build("mlp")
    net.load_state_dict(plain.state_dict(), strict=False)
    _, _, context, mask = inputs("mlp", 4)
    score, plain_score = models.Precond(sde, net), models.Precond(sde, plain)
    assert score.select({"y": torch.zeros(4), "context": context, "context_mask": mask}).keys() == {"context",
                                                                                                   "context_mask"}
    run = dict(steps=3, seed=0, dtype=F64)
    x, _ = samplers.ddim_sample(sde, score, (4, 2), cond={"context": context, "context_mask": mask}, **run)
    assert torch.equal(x, samplers.ddim_sample(sde, plain_score, (4, 2), **run)[0])
    with pytest.raises(TypeError, match="conditioning 'context' is not taken by the score function Precond"):
        samplers.ddim_sample(sde, plain_score, (4, 2), cond={"context": context}, **run)


# ----------------------------------------------------------------------------- known answer by training

K = 3
MIX = GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, -0.5], [0.0, 2.0]],
                      [[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.1], [-0.1, 0.3]], [[0.15, 0.0], [0.0, 0.3]]])


def _cond(kind, y):
    """Labels y [B], or the output of an encoder mapping each caption to its class: one token one-hot(y)."""
    return {"y": y} if kind == "label" else {"context": F.one_hot(y, K).float()[:, None]}


def _train(kind, steps=800, seed=0):
    """A small ScoreMLP trained by DSM on the labelled mixture (label = component), Adam with the rate
    decaying linearly to 0; the same budget, seed and data for both kinds."""
    from score_toolkit import losses
    sde = sde_lib.VPSDE()
    torch.manual_seed(seed)
    net = ScoreMLP(hidden=64, num_layers=2, embedding_dim=32, **({"num_classes": K} if kind == "label" else
                                                                {"context_dim": K}))
    score_fn, loss_fn = models.get_score_fn(sde, net), losses.get_loss_fn(sde)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0, y = MIX.sample(256, g, return_labels=True)
        loss = loss_fn(score_fn, x0, g, _cond(kind, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return sde, score_fn.eval()


def _relative_error(kind, n=4000):
    """E||s_net - s_y||^2 / E||s_y||^2 against the exact class-conditional score, averaged over t in
    {0.1, 0.3, 0.5}, where the classes' scores differ (by t = 0.8 they nearly agree)."""
    sde, score_fn = _train(kind)
    exact = MIX.conditional_score_fn(sde)
    g = torch.Generator().manual_seed(123)
    x0, y = MIX.sample(n, g, return_labels=True)
    errors = []
    for t in (0.1, 0.3, 0.5):
        tt = torch.full((n,), t)
        alpha, sigma = (c.float()[:, None] for c in sde.marginal_coeffs(tt.double()))
        x = alpha * x0 + sigma * torch.randn(n, 2, generator=g)
        with torch.no_grad():
            err = score_fn(x, tt, **_cond(kind, y)).double() - exact(x, tt, y).double()
        errors.append(err.square().sum(1).mean() / exact(x, tt, y).double().square().sum(1).mean())
    return float(sum(errors) / len(errors))


@pytest.mark.slow
def test_one_hot_context_tokens_learn_the_class_conditional_score_as_well_as_labels():
    """Known answer: the labelled mixture's exact component scores. Measured: labels 0.0021, context
    0.0020 (seeds 0-4: ratio 0.9-1.25); a network that ignores the class scores 0.13-0.36 here."""
    label, context = _relative_error("label"), _relative_error("context")
    assert context < 0.01, f"context model: relative score error {context:.4f}"
    assert label < 0.01, f"label model: relative score error {label:.4f}"
    assert context < 1.5 * label, f"context {context:.4f} vs label {label:.4f}"
