"""Text conditioning of a run (config.text.encoder set): the network with its text encoder, the
training images' captions as tokens, and the prompt's tokens at sampling.

The captions are made offline from each training image's label and the attributes measured on it
(`captions.make_captions`, seeded by text.captions_seed, without captions.HELD_OUT's combinations when
text.held_out). A transformer trained from scratch reads word ids of a vocabulary built from those
captions; the vocabulary is part of the network's state (`ContextConditionedNet`'s extra state), so
checkpoints and exported weights carry it and sampling needs no captions. A pretrained encoder
(transformers, from a local folder) tokenizes with its own tokenizer.
"""
from __future__ import annotations

import logging
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from score_toolkit import captions
from score_toolkit import image_data
from score_toolkit.errors import ConfigError, require
import models.text_encoder as text_encoder

Tensor = torch.Tensor
ENCODERS = ("transformer", "pretrained")


def is_text(config) -> bool:
    return bool(config.get("text", {}).get("encoder", ""))


def check_config(config) -> None:
    """The text settings, before any work; each error names its key."""
    t = config.text
    require(t.encoder in ENCODERS, "text.encoder", t.encoder, f"must be '' (no text) or one of {list(ENCODERS)}")
    require(config.data.kind == "images" and config.data.name == "fashion_mnist", "text.encoder", t.encoder,
            "the offline captions are Fashion-MNIST's (score_toolkit/captions.py): config.data.name = 'fashion_mnist'")
    require(not config.data.random_flip, "data.random_flip", True,
            "a caption names which way footwear points, which a mirrored image contradicts")
    require(config.model.get("context_dim", 0) > 0, "model.context_dim", config.model.get("context_dim", 0),
            "a text-conditioned network reads the caption through cross-attention: set model.context_dim "
            "(text.dim for the transformer) and model.context_resolutions")
    require(config.model.get("num_classes", 0) == 0, "model.num_classes", config.model.num_classes,
            "a text-conditioned network reads the class from its caption; set num_classes = 0")
    for key in ("vocab_size", "max_len", "dim", "depth", "heads"):
        v = t[key]
        require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"text.{key}", v, "must be a positive integer")
    require(0 <= t.p_uncond < 1, "text.p_uncond", t.p_uncond, "must lie in [0, 1)")
    words = len(text_encoder.tokenize(config.sampling.prompt))
    require(t.encoder != "transformer" or words + 1 <= t.max_len, "sampling.prompt", config.sampling.prompt,
            f"its {words} words and the start token are more than text.max_len = {t.max_len} tokens")
    if t.encoder == "transformer":
        require(config.model.context_dim == t.dim, "model.context_dim", config.model.context_dim,
                f"must equal text.dim = {t.dim}, the width of the transformer's output")
    else:
        require(bool(t.pretrained_path), "text.pretrained_path", t.pretrained_path,
                "text.encoder = 'pretrained' loads a transformers model from this local folder")


def build_encoder(config) -> nn.Module:
    t = config.text
    if t.encoder == "pretrained":
        try:
            return text_encoder.PretrainedTextEncoder(t.pretrained_path)
        except (ImportError, OSError, ValueError) as e:
            raise ConfigError(f"config.text.pretrained_path = {t.pretrained_path!r}: {e}") from e
    return text_encoder.TextTransformer(t.vocab_size, t.dim, t.depth, t.heads, t.max_len)


def build_network(config, net: nn.Module) -> nn.Module:
    """`net` (a network taking context) behind the configured text encoder."""
    encoder = build_encoder(config)
    null = [text_encoder.BOS] if config.text.encoder == "transformer" else encoder.encode_text([""])[0][0].tolist()
    return text_encoder.ContextConditionedNet(encoder, net, null_ids=null, p_uncond=config.text.p_uncond)


def training_captions(config, data) -> List[str]:
    """The captions of every training image (module docstring)."""
    images = image_data.to_unit_interval(data.train_uint8)
    exclude = captions.HELD_OUT if config.text.held_out else frozenset()
    return captions.make_captions(images, data.train_labels, config.text.captions_seed, exclude=exclude)


def tokenize(config, net: nn.Module, texts: List[str]) -> Tuple[Tensor, Tensor]:
    """(ids [N, L], mask [N, L]) of captions for the text-conditioned `net`, L = text.max_len."""
    if config.text.encoder == "pretrained":
        return net.encoder.encode_text(texts)
    vocab = net.vocabulary
    if vocab is None:
        raise ConfigError("this text-conditioned network has no vocabulary yet: train it first")
    return vocab.encode(texts, config.text.max_len, pad_to_max=True)


class CaptionData:
    """Image or latent data whose training batches carry their images' captions as
    {"tokens": ids [B, L], "tokens_mask": [B, L]}; everything else is the wrapped data's."""

    def __init__(self, data, config, net: nn.Module):
        self.data, self.config = data, config
        texts = training_captions(config, data)
        if config.text.encoder == "transformer" and net.vocabulary is None:  # a new run: build and attach it
            vocab = text_encoder.Vocabulary.build(texts)
            require(len(vocab) <= config.text.vocab_size, "text.vocab_size", config.text.vocab_size,
                    f"the training captions have {len(vocab)} tokens (specials included)")
            net.vocabulary = vocab
            logging.info("vocabulary of %d tokens from %d captions", len(vocab), len(texts))
        self.ids, self.mask = tokenize(config, net, texts)

    def __getattr__(self, name):
        if name == "data":
            raise AttributeError(name)
        return getattr(self.data, name)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        idx = self.data.draw_indices(batch_size, generator)
        x, cond = self.data.batch_at(idx, generator)
        cond.pop("y", None)  # the class is in the caption
        return x, {**cond, "tokens": self.ids[idx], "tokens_mask": self.mask[idx]}


def sample_cond(config, net: nn.Module, n: int) -> Dict[str, Tensor]:
    """The conditioning of n samples of a text model: sampling.prompt's tokens for each ("" : the null
    caption); words outside the vocabulary are named in a warning and read as the unknown token. {} for
    any other model."""
    if not is_text(config):
        return {}
    if not config.sampling.prompt:
        ids, mask = net.null_tokens(n)
        return {"tokens": ids.cpu(), "tokens_mask": mask.cpu()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, mask = tokenize(config, net, [config.sampling.prompt])
    for w in caught:
        logging.warning("config.sampling.prompt = %r: %s", config.sampling.prompt, w.message)
    return {"tokens": ids.expand(n, -1).clone(), "tokens_mask": mask.expand(n, -1).clone()}


def wrap(config, data, net: Optional[nn.Module]):
    """`data` with captions when config.text.encoder is set, else unchanged."""
    return CaptionData(data, config, net) if is_text(config) else data
