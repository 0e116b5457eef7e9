"""Text encoders: the vocabulary's exact ids and its errors, the transformer's padding invariance and
position dependence (and agreement with torch's own pre-LN layer), class tokens, a frozen pretrained
encoder loaded from a local folder, and the encoder + network wrapper with its caption dropout."""
import json
import sys
import warnings

import pytest
import torch
import torch.nn as nn

from models.precond import Precond
from models.text_encoder import (BOS, PAD, UNK, ClassTokenEncoder, ContextConditionedNet, OneHotEncoder,
                                 PretrainedTextEncoder, TextTransformer, Vocabulary, tokenize)
from sde_lib import VPSDE
from sde_lib.checks import cond_keys

F64 = torch.float64
TRAIN = ["a dark sneaker", "A light Sneaker pointing left", "sneaker, dark, large", "a small bag"]


def vocab():
    return Vocabulary.build(TRAIN)


# ----------------------------------------------------------------------------- vocabulary

def test_words_are_lower_case_runs_of_letters_and_digits():
    assert tokenize("Ankle-Boot, dark!  2x") == ["ankle", "boot", "dark", "2x"]
    assert tokenize("") == [] and tokenize(" ,;") == []


def test_vocabulary_orders_words_by_count_then_alphabet():
    v = vocab()
    # counts: a 3, sneaker 3, dark 2, then the words seen once, alphabetically
    assert v.tokens == ["<pad>", "<unk>", "<bos>", "a", "sneaker", "dark", "bag", "large", "left", "light",
                        "pointing", "small"]
    assert len(v) == 12
    assert Vocabulary.build(TRAIN, min_count=2).tokens[3:] == ["a", "sneaker", "dark"]


def test_encode_gives_bos_words_and_padding_to_the_longest():
    v = vocab()
    ids, mask = v.encode(["a dark sneaker", "", "Sneaker"], max_len=6)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.tolist() == [[BOS, 3, 5, 4], [BOS, PAD, PAD, PAD], [BOS, 4, PAD, PAD]]
    assert mask.tolist() == [[True] * 4, [True, False, False, False], [True, True, False, False]]
    ids, mask = v.encode([""], max_len=5, pad_to_max=True)
    assert ids.tolist() == [[BOS, PAD, PAD, PAD, PAD]] and mask.tolist() == [[True] + [False] * 4]


def test_a_caption_longer_than_max_len_names_itself_and_both_lengths():
    with pytest.raises(ValueError, match=r"caption 'a light sneaker pointing left' is 6 tokens long .*max_len = 5"):
        vocab().encode(["a bag", "a light sneaker pointing left"], max_len=5)
    vocab().encode(["a light sneaker pointing left"], max_len=6)  # BOS + 5 words fit exactly


def test_unknown_words_become_unk_with_one_warning_naming_them_sorted():
    v = vocab()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, _ = v.encode(["a zebra sneaker", "purple zebra", "a bag"], max_len=4)
    assert len(caught) == 1 and "['purple', 'zebra']" in str(caught[0].message)
    assert ids[0].tolist() == [BOS, 3, UNK, 4] and ids[1, :3].tolist() == [BOS, UNK, UNK]
    assert v.unknown_words("Zebra, purple zebra bag") == ["purple", "zebra"]
    with pytest.raises(ValueError, match=r"\['purple', 'zebra'\]"):
        v.encode(["a zebra sneaker", "purple"], max_len=4, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v.encode(["a bag"], max_len=4)  # known words: no warning


def test_vocabulary_saves_as_plain_lists_and_decodes():
    v = vocab()
    state = json.loads(json.dumps(v.to_dict()))  # survives JSON: plain lists and strings only
    w = Vocabulary.from_dict(state)
    assert w.tokens == v.tokens
    with pytest.warns(UserWarning, match="zebra"):
        ids, mask = w.encode(["a light sneaker", "dark zebra"], max_len=4)
    assert ids.tolist() == [[BOS, 3, 9, 4], [BOS, 5, UNK, PAD]]
    assert w.decode(ids[0]) == "a light sneaker" and w.decode(ids[1].tolist()) == "dark <unk>"
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary.from_dict({"tokens": ["a", "b"]})
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        v.decode([2, 12])


def test_vocabulary_argument_errors():
    with pytest.raises(ValueError, match="min_count must be a positive integer, got 0"):
        Vocabulary.build(TRAIN, min_count=0)
    with pytest.raises(ValueError, match="max_len must be a positive integer, got 0"):
        vocab().encode(["a"], max_len=0)
    with pytest.raises(TypeError, match="single str 'a bag'"):
        vocab().encode("a bag", max_len=4)
    with pytest.raises(TypeError, match="must be a str, got int 3"):
        vocab().encode(["a", 3], max_len=4)


# ----------------------------------------------------------------------------- the transformer

def transformer(dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(vocab_size=20, dim=16, depth=2, heads=4, max_len=12)
    return TextTransformer(**{**args, **kwargs}).to(dtype).eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (F64, 1e-12)])
def test_context_at_real_tokens_ignores_appended_padding_of_any_ids(dtype, tol):
    net = transformer(dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 20, (3, 5), generator=g)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None] < lengths[:, None]
    ids[:, 0] = BOS
    with torch.no_grad():
        ref, _ = net(ids, mask)
        for extra in (1, 7):
            junk = torch.randint(0, 20, (3, extra), generator=g)  # padding ids need not be PAD
            out, mask2 = net(torch.cat([ids, junk], 1), torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], 1))
            assert out.dtype == dtype and out.shape == (3, 5 + extra, 16)
            assert (out[:, :5] - ref)[mask].abs().max() < tol
            assert torch.all(out[~mask2] == 0)  # padding outputs are zeroed
    assert ref[mask].abs().max() > 0.1


def test_word_order_matters_through_the_positions_only():
    net = transformer(F64)
    ids = torch.tensor([[BOS, 5, 9, 13, 17]])
    perm = torch.tensor([0, 3, 1, 4, 2])
    with torch.no_grad():
        a, b = net(ids)[0], net(ids[:, perm])[0]
        assert (a[:, perm] - b).abs().max() > 1e-2  # the learned positions tell the orders apart
        net.pos_embed.zero_()  # without positions, self-attention is permutation equivariant
        a, b = net(ids)[0], net(ids[:, perm])[0]
    assert (a[:, perm] - b).abs().max() < 1e-12


def test_a_layer_equals_torch_pre_layernorm_encoder_layer():
    net = transformer(F64, depth=1)
    layer = net.layers[0]
    ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=64, dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=True).to(F64).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(layer.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(layer.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(layer.proj.weight)
        ref.self_attn.out_proj.bias.copy_(layer.proj.bias)
        for mine, theirs in ((layer.mlp[0], ref.linear1), (layer.mlp[2], ref.linear2),
                             (layer.norm1, ref.norm1), (layer.norm2, ref.norm2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
        h = torch.randn(2, 6, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
        mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
        want = ref(h, src_key_padding_mask=~mask)
        got = layer(h, mask)
    assert (got - want)[mask].abs().max() < 1e-12


def test_transformer_argument_and_input_errors():
    with pytest.raises(ValueError, match="vocab_size must be an int > 3 .*got 3"):
        TextTransformer(3, 16, 1, 4, 8)
    with pytest.raises(ValueError, match="dim = 10 must be divisible by heads = 4"):
        TextTransformer(10, 10, 1, 4, 8)
    with pytest.raises(ValueError, match="max_len must be a positive integer, got 0"):
        TextTransformer(10, 16, 1, 4, 0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.0"):
        TextTransformer(10, 16, 1, 4, 8, dropout=1.0)
    net = transformer()
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\) \(the vocabulary size\), got id 20"):
        net(torch.tensor([[BOS, 20]]))
    with pytest.raises(ValueError, match="13 tokens per row, more than max_len = 12"):
        net(torch.full((1, 13), BOS))
    with pytest.raises(ValueError, match="a row with no real token"):
        net(torch.tensor([[BOS, 4]]), torch.tensor([[False, False]]))
    with pytest.raises(ValueError, match="integer tensor"):
        net(torch.zeros(1, 3))


# ----------------------------------------------------------------------------- class tokens

def test_class_tokens_embed_each_label_and_the_null_class():
    enc = ClassTokenEncoder(num_classes=10, dim=8)
    ids, mask = ClassTokenEncoder.tokens(torch.tensor([3, 0, 10]))
    assert ids.tolist() == [[3], [0], [10]] and mask.tolist() == [[True]] * 3
    out, out_mask = enc(ids, mask)
    assert out.shape == (3, 1, 8) and torch.equal(out[:, 0], enc.weight[[3, 0, 10]]) and out_mask.all()
    with pytest.raises(ValueError, match=r"\[0, 11\).*got id 11"):
        enc(torch.tensor([[11]]))
    with pytest.raises(ValueError, match="2 tokens per row, more than max_len = 1"):
        enc(torch.tensor([[1, 2]]))


def test_one_hot_encoder_has_no_parameters_and_follows_the_dtype():
    enc = OneHotEncoder(num_classes=3)
    assert list(enc.parameters()) == [] and enc.dim == 4
    out, mask = enc(torch.tensor([[2], [3]]))
    assert out.dtype == torch.float32 and out.tolist() == [[[0, 0, 1, 0]], [[0, 0, 0, 1]]] and mask.all()
    assert enc.double()(torch.tensor([[0]]))[0].dtype == F64


# ----------------------------------------------------------------------------- pretrained

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dark", "light", "sneaker", "bag", "##s"]


@pytest.fixture
def tiny_bert(tmp_path):
    """A randomly initialised 1-layer BERT (hidden 16) and its WordPiece tokenizer, saved to a folder."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=len(WORDPIECE), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                                     hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model


@pytest.mark.slow  # importing transformers takes 2-8 s here
def test_pretrained_encoder_reads_the_folder_and_matches_the_model(tiny_bert):
    path, model = tiny_bert
    enc = PretrainedTextEncoder(path)
    ids, mask = enc.encode_text(["a dark sneaker", "bags"])
    # [CLS] = 2, [SEP] = 3, "bags" -> "bag", "##s"
    assert ids.tolist() == [[2, 5, 6, 8, 3], [2, 9, 10, 3, 0]]
    assert mask.tolist() == [[True] * 5, [True] * 4 + [False]]
    out, out_mask = enc(ids, mask)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert out.shape == (2, 5, 16) and enc.dim == 16 and torch.equal(out_mask, mask)
    assert (out - want)[mask].abs().max() < 1e-6 and torch.all(out[~mask] == 0)
    with pytest.raises(ValueError, match=r"caption 'a a a a a a a a a a a a a a a' is 17 tokens long, more than"):
        enc.encode_text(["a " * 14 + "a"])


@pytest.mark.slow
def test_pretrained_encoder_is_frozen_and_stays_in_eval_mode(tiny_bert):
    enc = PretrainedTextEncoder(tiny_bert[0])
    wrapper = nn.Sequential(enc).train()  # training the surrounding network must not train the encoder
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.model.training
    ids, mask = enc.encode_text(["a light bag"])
    a, b = enc(ids, mask)[0], enc(ids, mask)[0]  # dropout 0.5 would make these differ
    assert wrapper.training and torch.equal(a, b)


def test_pretrained_encoder_names_a_missing_folder(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="path '.*nowhere' is not a folder"):
        PretrainedTextEncoder(tmp_path / "nowhere")


def test_pretrained_encoder_without_transformers_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match="optional package 'transformers': pip install transformers"):
        PretrainedTextEncoder(tmp_path)


# ----------------------------------------------------------------------------- encoder + network

class RecordingNet(nn.Module):
    """A stub U-Net that takes a context: returns x and keeps what it was called with."""
    cond_keys = ("y", "context", "context_mask")

    def forward(self, x, cond, y=None, context=None, context_mask=None):
        self.got = dict(cond=cond, y=y, context=context, context_mask=context_mask)
        return x


def test_wrapper_takes_tokens_in_place_of_the_context():
    net = ContextConditionedNet(OneHotEncoder(3), RecordingNet(), null_ids=[3])
    assert net.cond_keys == ("y", "tokens", "tokens_mask", "tokens_null") and cond_keys(net) == net.cond_keys
    assert Precond(VPSDE(), net).select({"y": 1, "tokens": 2, "other": 3}) == {"y": 1, "tokens": 2}
    x, c, y = torch.randn(2, 1, 4, 4), torch.rand(2), torch.tensor([0, 1])
    assert net(x, c, tokens=torch.tensor([[1], [2]]), y=y) is x
    got = net.net.got
    assert got["cond"] is c and got["y"] is y and got["context_mask"].all()
    assert got["context"].tolist() == [[[0, 1, 0, 0]], [[0, 0, 1, 0]]]
    net(x, c)  # no tokens: the null caption for every sample
    assert net.net.got["context"].tolist() == [[[0, 0, 0, 1]]] * 2


def test_caption_dropout_replaces_whole_captions_with_the_padded_null_caption():
    v = vocab()
    net = ContextConditionedNet(lambda ids, mask: (ids, mask), RecordingNet(), null_ids=[BOS], p_uncond=0.5)
    tokens, mask = v.encode(["a dark sneaker"] * 64, max_len=6)
    x, c = torch.zeros(64, 2), torch.rand(64)
    torch.manual_seed(5)
    drop = torch.rand(64) < 0.5  # the draw the wrapper makes: one uniform per sample, global RNG
    torch.manual_seed(5)
    net.train()(x, c, tokens=tokens, tokens_mask=mask)
    ids, got_mask = net.net.got["context"], net.net.got["context_mask"]
    assert 20 < int(drop.sum()) < 44
    assert ids[drop].tolist() == [[BOS, PAD, PAD, PAD]] * int(drop.sum())
    assert got_mask[drop].tolist() == [[True, False, False, False]] * int(drop.sum())
    assert torch.equal(ids[~drop], tokens[~drop]) and torch.equal(got_mask[~drop], mask[~drop])
    state = torch.get_rng_state()
    net.eval()(x, c, tokens=tokens, tokens_mask=mask)  # eval: nothing dropped, no number drawn
    assert torch.equal(net.net.got["context"], tokens) and torch.equal(torch.get_rng_state(), state)


def test_a_null_caption_longer_than_the_tokens_widens_them_with_padding():
    net = ContextConditionedNet(lambda ids, mask: (ids, mask), RecordingNet(), null_ids=[BOS, 7], p_uncond=0.5)
    x, c = torch.zeros(4, 2), torch.rand(4)
    torch.manual_seed(0)
    drop = torch.rand(4) < 0.5
    torch.manual_seed(0)
    net.train()(x, c, tokens=torch.full((4, 1), 9))
    ids, mask = net.net.got["context"], net.net.got["context_mask"]
    assert 0 < int(drop.sum()) < 4
    assert ids[drop].tolist() == [[BOS, 7]] * int(drop.sum()) and mask[drop].all()
    assert ids[~drop].tolist() == [[9, PAD]] * int((~drop).sum())
    assert mask[~drop].tolist() == [[True, False]] * int((~drop).sum())


def test_wrapper_errors():
    with pytest.raises(TypeError, match=r"cond_keys holding \('context', 'context_mask'\), got \('y',\)"):
        ContextConditionedNet(OneHotEncoder(3), type("N", (nn.Module,), {"cond_keys": ("y",)})(), null_ids=[3])
    with pytest.raises(ValueError, match=r"p_uncond must be a number in \[0, 1\), got 1"):
        ContextConditionedNet(OneHotEncoder(3), RecordingNet(), null_ids=[3], p_uncond=1)
    with pytest.raises(ValueError, match="null_ids must be a non-empty 1-D integer tensor"):
        ContextConditionedNet(OneHotEncoder(3), RecordingNet(), null_ids=[])
    net = ContextConditionedNet(OneHotEncoder(3), RecordingNet(), null_ids=[3])
    with pytest.raises(ValueError, match=r"tokens must be a tensor \[B, L\] with B = 2 .*got \(3, 1\)"):
        net(torch.zeros(2, 2), torch.rand(2), tokens=torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens_mask must be a bool tensor shaped like tokens"):
        net(torch.zeros(2, 2), torch.rand(2), tokens=torch.zeros(2, 1, dtype=torch.long),
            tokens_mask=torch.ones(2, 1))


def test_the_vocabulary_travels_in_the_state_dict(tmp_path):
    enc = TextTransformer(len(vocab()), 8, 1, 2, 6)
    trained = ContextConditionedNet(enc, RecordingNet(), null_ids=[BOS], vocabulary=vocab())
    torch.save(trained.state_dict(), tmp_path / "net.pt")
    fresh = ContextConditionedNet(TextTransformer(len(vocab()), 8, 1, 2, 6), RecordingNet(), null_ids=[BOS])
    assert fresh.vocabulary is None
    fresh.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))  # plain lists and strings only
    assert fresh.vocabulary.tokens == vocab().tokens
    assert torch.equal(fresh.encoder.pos_embed, enc.pos_embed)


def test_tokens_null_gives_the_flagged_samples_the_null_caption_and_guidance_mixes_both():
    import samplers
    net = ContextConditionedNet(OneHotEncoder(3), RecordingNet(), null_ids=[3])
    x, c = torch.randn(3, 1, 4, 4), torch.rand(3)
    tokens, mask = torch.tensor([[0], [2], [1]]), torch.ones(3, 1, dtype=torch.bool)
    net(x, c, tokens=tokens, tokens_mask=mask, tokens_null=torch.tensor([False, True, False]))
    assert torch.equal(net.net.got["context"][:, 0], torch.eye(4)[[0, 3, 1]])
    with pytest.raises(ValueError, match="tokens_null must be a bool tensor of shape \\[3\\]"):
        net(x, c, tokens=tokens, tokens_null=torch.tensor([1, 0, 0]))

    # caption CFG: (1 + w) s(c) - w s(null), from one doubled call, for a score that reads the first token
    def score(x, t, tokens=None, tokens_mask=None, tokens_null=None):
        first = torch.where(tokens_null, torch.full_like(tokens[:, 0], 3), tokens[:, 0]).double()
        return x * 0 + first.view(-1, 1, 1, 1)
    score.cond_keys = ("tokens", "tokens_mask", "tokens_null")
    guided = samplers.caption_cfg_score(score, 2.0)
    out = guided(x.double(), c, tokens=tokens, tokens_mask=mask)
    assert torch.equal(out[:, 0, 0, 0], 3 * tokens[:, 0].double() - 2 * 3) and guided.cond_keys == ("tokens", "tokens_mask")
    with pytest.raises(ValueError, match="caption classifier-free guidance needs a text-conditioned score_fn"):
        samplers.caption_cfg_score(RecordingNet(), 1.0)
