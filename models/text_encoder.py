"""Text and class-token encoders that turn conditioning tokens into a context sequence for cross-attention,
and `ContextConditionedNet`, which puts an encoder in front of a context-conditioned network.

Every encoder is called as encoder(ids [B, L] int64, mask [B, L] bool) -> (context [B, L, dim], mask),
where mask is True at real tokens; context is zero at padding, so nothing downstream can read it.
"""
from __future__ import annotations

import collections
import os
import re
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sde_lib.checks import check_positive_int, cond_keys

Tensor = torch.Tensor
PAD, UNK, BOS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<bos>")
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> List[str]:
    """The words of a caption: lower-cased, split on every run of characters outside [a-z0-9]
    ("Ankle-Boot, dark!" -> ["ankle", "boot", "dark"])."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__} {caption!r}")
    return _WORD.findall(caption.lower())


class Vocabulary:
    """Word ids for captions: PAD = 0, UNK = 1, BOS = 2, then the training words, most frequent first
    (ties alphabetical). A caption's words are its lower-cased runs of a-z and 0-9: it is split on
    every other character (spaces, punctuation, hyphens, non-ASCII letters), see `tokenize`. Every
    encoded caption starts with BOS, so the empty caption "" is one real token, [BOS]: the null
    condition of classifier-free guidance."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or tokenize(w) != [w]]
        if bad or len(set(words)) != len(words):
            raise ValueError(f"words must be distinct lower-case alphanumeric strings, got {bad or words!r}")
        self.tokens = list(SPECIALS) + words
        self.index = {w: i for i, w in enumerate(self.tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """The words that occur at least `min_count` times in the training captions."""
        check_positive_int(min_count, "min_count")
        counts = collections.Counter(w for c in captions for w in tokenize(c))
        return cls(sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.tokens)

    def unknown_words(self, caption: str) -> List[str]:
        """The distinct words of `caption` outside the vocabulary, sorted."""
        return sorted({w for w in tokenize(caption) if w not in self.index})

    def encode(self, captions: Sequence[str], max_len: int, *, pad_to_max: bool = False,
               strict: bool = False) -> Tuple[Tensor, Tensor]:
        """Captions -> (ids int64 [B, L], mask bool [B, L]): [BOS, w_1, ..., w_n] then PAD, mask True at
        the n + 1 real tokens. L is the longest caption's n + 1, or max_len with pad_to_max. A caption of
        more than max_len tokens is a ValueError; unknown words become UNK with one warning naming them
        (strict=True: a ValueError instead)."""
        check_positive_int(max_len, "max_len")
        if isinstance(captions, str):
            raise TypeError(f"captions must be a sequence of str, got the single str {captions!r}")
        rows = [[BOS] + [self.index.get(w, UNK) for w in tokenize(c)] for c in captions]
        for c, row in zip(captions, rows):
            if len(row) > max_len:
                raise ValueError(f"caption {c!r} is {len(row)} tokens long (BOS included), more than "
                                 f"max_len = {max_len}")
        unknown = sorted({w for c in captions for w in self.unknown_words(c)})
        if unknown and strict:
            raise ValueError(f"captions hold words outside the vocabulary of {len(self)} tokens: {unknown}")
        if unknown:
            warnings.warn(f"words outside the vocabulary, encoded as <unk>: {unknown}", stacklevel=2)
        width = max_len if pad_to_max else max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows], dtype=torch.long)[:, None]
        return ids, mask

    def decode(self, ids) -> str:
        """Token ids [L] (a tensor or list) -> the caption's words joined by spaces; PAD and BOS are
        dropped, UNK reads "<unk>"."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"ids must be a 1-D sequence of token ids in [0, {len(self)}), got {bad[:5]}")
        return " ".join(self.tokens[i] for i in ids if i not in (PAD, BOS))

    def to_dict(self) -> Dict[str, list]:
        """Plain lists, to store inside a checkpoint: {"tokens": [the specials, then the words]}."""
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, state: Dict[str, list]) -> "Vocabulary":
        """The vocabulary `to_dict` saved."""
        tokens = state.get("tokens") if isinstance(state, dict) else None
        if not isinstance(tokens, list) or tuple(tokens[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"state must be a dict whose 'tokens' list starts with {list(SPECIALS)}, "
                             f"got {str(state)[:80]!r}")
        return cls(tokens[len(SPECIALS):])


# ----------------------------------------------------------------------------- checks shared by encoders

def check_tokens(ids: Tensor, mask: Optional[Tensor], num_ids: int, max_len: Optional[int] = None,
                 name: str = "ids") -> Tensor:
    """mask as bool [B, L] (None: all real) if ids is an integer [B, L] tensor with values in [0, num_ids),
    L <= max_len, and every row has a real token (attention over no key is undefined)."""
    if not torch.is_tensor(ids) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        got = f"{ids.dtype} of shape {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"{name} must be an integer tensor [B, L] of token ids, got {got}")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{name} holds {ids.shape[1]} tokens per row, more than max_len = {max_len}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_ids):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} must lie in [0, {num_ids}) (the vocabulary size), got id {bad}")
    if mask is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != ids.shape:
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"the mask of {name} must be a bool tensor shaped like it, {tuple(ids.shape)}, got {got}")
    if mask.shape[1] and not bool(mask.any(dim=1).all()):
        raise ValueError(f"the mask of {name} has a row with no real token; every row needs one (e.g. BOS)")
    return mask


def _zero_padding(context: Tensor, mask: Tensor) -> Tensor:
    return context * mask[..., None].to(context.dtype)


# ----------------------------------------------------------------------------- a transformer from scratch

class _EncoderLayer(nn.Module):
    """A pre-LayerNorm transformer layer: h = h + Attn(LN(h)); h = h + MLP(LN(h)), with MLP = Linear(dim,
    4 dim), GELU, Linear(4 dim, dim), and multi-head self-attention over the real tokens only."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def attend(self, h: Tensor, mask: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(d) + log mask) v per head: h [B, L, dim], mask [B, L] -> [B, L, dim]."""
        B, L, dim = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return F.dropout(self.proj(out.transpose(1, 2).reshape(B, L, dim)), self.dropout, self.training)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        h = h + self.attend(self.norm1(h), mask)
        return h + self.mlp(self.norm2(h))


class TextTransformer(nn.Module):
    """A small text encoder trained from scratch with the diffusion model (as in GLIDE):
    h_0 = E_tok[ids] + E_pos[0:L], h_i = layer_i(h_{i-1}, mask) for `depth` pre-LayerNorm layers,
    context = LN(h_depth), zero at padding. ids, mask [B, L] (L <= max_len) -> ([B, L, dim], mask).

    Padding neither attends nor is attended to, so the context at real tokens does not depend on
    the ids at padding or on how much padding follows. The learned positions make word order count.
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads), ("max_len", max_len)):
            check_positive_int(value, name)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIALS):
            raise ValueError(f"vocab_size must be an int > {len(SPECIALS)} (PAD, UNK, BOS and at least one "
                             f"word), got {vocab_size!r}")
        if dim % heads:
            raise ValueError(f"dim = {dim} must be divisible by heads = {heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        # std 0.02 for both tables, as in GPT-2: positions as strong as words from the first step on
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(max_len, dim))
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, float(dropout)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        mask = check_tokens(ids, mask, self.vocab_size, self.max_len)
        h = self.drop(self.token_embed(ids) + self.pos_embed[:ids.shape[1]])
        for layer in self.layers:
            h = layer(h, mask)
        return _zero_padding(self.norm(h), mask), mask


# ----------------------------------------------------------------------------- class labels as tokens

class ClassTokenEncoder(nn.Embedding):
    """Class labels as one-token captions: ids [B, 1] with class k in [0, K) and K = num_classes the null
    class -> (E[ids] [B, 1, dim], mask all True). Weight [K + 1, dim], N(0, 1)."""

    def __init__(self, num_classes: int, dim: int):
        check_positive_int(num_classes, "num_classes")
        super().__init__(num_classes + 1, check_positive_int(dim, "dim"))
        self.num_classes, self.dim = num_classes, dim

    @staticmethod
    def tokens(labels: Tensor) -> Tuple[Tensor, Tensor]:
        """Labels [B] -> (ids [B, 1], mask [B, 1] all True), the tokens this encoder reads."""
        return labels.long()[:, None], torch.ones(labels.shape[0], 1, dtype=torch.bool, device=labels.device)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        mask = check_tokens(ids, mask, self.num_classes + 1, max_len=1)
        return super().forward(ids), mask


class OneHotEncoder(nn.Module):
    """Class labels as one-hot context, no parameters: ids [B, 1] in [0, K] (K = num_classes, the null
    class) -> (one_hot(ids) [B, 1, K + 1] in the module's float dtype, mask all True). Cross-attention
    over this one token returns W_o W_v e_y, a learned vector per class: a label embedding."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.dim = num_classes + 1
        self.register_buffer("eye", torch.eye(self.dim), persistent=False)  # follows .double(), .to(device)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        mask = check_tokens(ids, mask, self.dim, max_len=1)
        return self.eye[ids], mask


# ----------------------------------------------------------------------------- a frozen pretrained encoder

class PretrainedTextEncoder(nn.Module):
    """A frozen pretrained text encoder (e.g. BERT, T5's encoder) of the optional `transformers` package,
    read only from a local folder `path` holding the tokenizer and model files (nothing is downloaded).
    forward(ids, mask) -> (last_hidden_state [B, L, hidden_size], zero at padding; mask).

    Its parameters never train: requires_grad is False and it stays in eval mode under .train(), so
    its dropout never fires and its output for a caption is always the same.
    """

    def __init__(self, path):
        super().__init__()
        try:
            import transformers
        except ImportError as err:
            raise ImportError("PretrainedTextEncoder needs the optional package 'transformers': "
                              "pip install transformers") from err
        if not os.path.isdir(path):
            raise FileNotFoundError(f"path {str(path)!r} is not a folder holding a pretrained tokenizer and model")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.get_encoder() if hasattr(model, "get_encoder") and model.config.is_encoder_decoder else model
        self.model.requires_grad_(False).eval()
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)
        self.max_len = getattr(model.config, "max_position_embeddings", None)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        super().train(mode)
        self.model.eval()  # frozen: dropout off whatever the surrounding network does
        return self

    def encode_text(self, captions: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Captions -> (ids int64 [B, L], mask bool [B, L]) by the model's own tokenizer, padded to the
        longest; a caption longer than the model's positions is a ValueError."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"captions must be a sequence of str, got {captions!r}")
        out = self.tokenizer(list(captions), padding=True, return_tensors="pt")
        ids, mask = out["input_ids"].long(), out["attention_mask"].bool()
        lengths = mask.sum(dim=1).tolist()
        for c, n in zip(captions, lengths):
            if self.max_len is not None and n > self.max_len:
                raise ValueError(f"caption {c!r} is {n} tokens long, more than the model's {self.max_len}")
        return ids, mask

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        mask = check_tokens(ids, mask, self.model.config.vocab_size, self.max_len)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return _zero_padding(hidden, mask), mask


# ----------------------------------------------------------------------------- encoder + network

CONTEXT_KEYS = ("context", "context_mask")
TOKEN_KEYS = ("tokens", "tokens_mask", "tokens_null")


class ContextConditionedNet(nn.Module):
    """A network conditioned on tokens: net(x, c_noise, context=C, context_mask=M, **other) with
    (C, M) = encoder(tokens, tokens_mask). It takes the net's conditioning, less the context, plus
    `tokens` [B, L] int and `tokens_mask` [B, L] bool (None: every token real).

    Caption dropout for classifier-free guidance: in training mode each sample's tokens are replaced
    by the null caption `null_ids` [L0] (e.g. [BOS], or [K] for class tokens) with probability p_uncond
    (u < p_uncond, u ~ U[0, 1) from `torch.rand`: the global RNG, as LabelEmbedding). tokens=None is
    the null caption for every sample. A dropped row reads null_ids then `pad_id` with mask False.

    `vocabulary` (a Vocabulary, or None) is kept in the module's state (its extra state, as plain
    lists), so a checkpoint of the network turns prompts into tokens without the training captions.
    """

    def __init__(self, encoder: nn.Module, net: nn.Module, null_ids, p_uncond: float = 0.0, pad_id: int = PAD,
                 vocabulary: Optional[Vocabulary] = None):
        super().__init__()
        keys = cond_keys(net)
        if keys is None or not set(CONTEXT_KEYS) <= set(keys):
            raise TypeError(f"net must declare cond_keys holding {CONTEXT_KEYS}, got {keys!r}")
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be a number in [0, 1), got {p_uncond!r}")
        null_ids = torch.as_tensor(null_ids)
        if null_ids.ndim != 1 or not len(null_ids) or null_ids.is_floating_point() or null_ids.dtype == torch.bool:
            raise ValueError(f"null_ids must be a non-empty 1-D integer tensor of token ids, got {null_ids!r}")
        self.encoder, self.net, self.p_uncond, self.pad_id = encoder, net, float(p_uncond), int(pad_id)
        self.register_buffer("null_ids", null_ids.long(), persistent=False)
        self.cond_keys = tuple(k for k in keys if k not in CONTEXT_KEYS) + TOKEN_KEYS
        self.learn_variance = bool(getattr(net, "learn_variance", False))  # Precond reads it off the net
        self.vocabulary = vocabulary

    def get_extra_state(self) -> Dict[str, Optional[dict]]:
        return {"vocabulary": None if self.vocabulary is None else self.vocabulary.to_dict()}

    def set_extra_state(self, state: Dict[str, Optional[dict]]) -> None:
        vocab = state.get("vocabulary") if isinstance(state, dict) else None
        self.vocabulary = None if vocab is None else Vocabulary.from_dict(vocab)

    def null_tokens(self, batch: int, width: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """The null caption for `batch` samples, padded to `width` (>= len(null_ids)): ids, mask [batch, width]."""
        n = len(self.null_ids)
        width = n if width is None else width
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=self.null_ids.device)
        ids[:, :n] = self.null_ids
        mask = torch.zeros(batch, width, dtype=torch.bool, device=ids.device)
        mask[:, :n] = True
        return ids, mask

    def drop_tokens(self, tokens: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """tokens, mask [B, L] with each row replaced by the null caption with probability p_uncond;
        L grows to len(null_ids) if it is shorter (the new columns are padding)."""
        return self.replace_by_null(tokens, mask, torch.rand(tokens.shape[0], device=tokens.device) < self.p_uncond)

    def replace_by_null(self, tokens: Tensor, mask: Tensor, drop: Tensor) -> Tuple[Tensor, Tensor]:
        """tokens, mask [B, L] with the rows where drop [B] (bool) is True replaced by the null caption."""
        B, L = tokens.shape
        drop = torch.as_tensor(drop, device=tokens.device)
        if drop.dtype != torch.bool or tuple(drop.shape) != (B,):
            raise ValueError(f"tokens_null must be a bool tensor of shape [{B}], got {drop.dtype} {tuple(drop.shape)}")
        width = max(L, len(self.null_ids))
        tokens = F.pad(tokens.long(), (0, width - L), value=self.pad_id)
        mask = F.pad(mask, (0, width - L), value=False)
        null_ids, null_mask = self.null_tokens(B, width)
        keep = ~drop[:, None]
        return torch.where(keep, tokens, null_ids), torch.where(keep, mask, null_mask)

    def forward(self, x: Tensor, cond: Tensor, tokens: Optional[Tensor] = None,
                tokens_mask: Optional[Tensor] = None, tokens_null: Optional[Tensor] = None, **other) -> Tensor:
        """net(x, cond, context=..., context_mask=..., **other) for x [B, ...] and noise labels cond [B];
        tokens_null [B] bool: the samples that read the null caption instead of theirs (for
        `samplers.caption_cfg_score`, which doubles the batch)."""
        batch = x.shape[0]
        if tokens is None:
            if tokens_mask is not None:
                raise ValueError("tokens_mask was given without tokens; pass both, or neither for the null caption")
            tokens, tokens_mask = self.null_tokens(batch)
        else:
            tokens_mask = self._check(tokens, tokens_mask, batch)
            if self.training and self.p_uncond > 0:
                tokens, tokens_mask = self.drop_tokens(tokens, tokens_mask)
            if tokens_null is not None:
                tokens, tokens_mask = self.replace_by_null(tokens, tokens_mask, tokens_null)
        context, context_mask = self.encoder(tokens, tokens_mask)
        return self.net(x, cond, context=context, context_mask=context_mask, **other)

    @staticmethod
    def _check(tokens: Tensor, mask: Optional[Tensor], batch: int) -> Tensor:
        if not torch.is_tensor(tokens) or tokens.ndim != 2 or tokens.shape[0] != batch:
            got = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"tokens must be a tensor [B, L] with B = {batch} (the batch of x), got {got}")
        if mask is None:
            return torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != tokens.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"tokens_mask must be a bool tensor shaped like tokens, {tuple(tokens.shape)}, got {got}")
        return mask
