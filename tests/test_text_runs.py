"""A text-conditioned model through the application on tiny 8x8 images: captions, vocabulary in the
checkpoint, prompts, caption guidance, and bad prompts refused before any work."""
import os

import numpy as np
import pytest
import torch

from configs.fashionmnist_vp_ddpmpp_latent_text import get_config
from score_toolkit import captions, caption_data, data_lib, evaluation, training
from score_toolkit.errors import ConfigError
from tests.helpers import write_tiny_image_set


def text_config(root):
    c = get_config()
    c.latent.autoencoder = ""  # a pixel model: the text path is the same for latents
    c.data.root, c.data.image_size, c.data.pad_to = root, 8, 0
    m = c.model
    m.num_channels, m.image_size, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 1, 8, 8, (1, 2), 1, ()
    m.context_resolutions = (8, 4)
    t = c.training
    t.n_iters, t.batch_size, t.checkpoint_freq, t.snapshot_freq = 3, 8, 3, 3
    c.sampling.N, c.sampling.n_samples, c.sampling.batch_size = 3, 4, 4
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(write_tiny_image_set(tmp_path_factory.mktemp("data"), 64, 16))
    workdir = tmp_path_factory.mktemp("text")
    c = text_config(root)
    training.train(c, str(workdir), net=training.check_inputs(c, str(workdir)))
    return c, workdir


def test_batches_carry_their_images_captions_and_the_checkpoint_the_vocabulary(trained):
    c, workdir = trained
    state = torch.load(workdir / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    vocab_keys = [k for k in state["model"] if k.endswith("_extra_state")]
    assert vocab_keys, "the vocabulary is part of the network's state"
    net = training.check_inputs(c, str(workdir))
    net.load_state_dict(state["model"])
    images = data_lib.load(c)
    data = caption_data.CaptionData(images, c, net)
    texts = caption_data.training_captions(c, images)
    g = torch.Generator().manual_seed(3)
    idx = images.draw_indices(5, torch.Generator().manual_seed(3))
    _, cond = data.train_batch(5, g)
    assert "y" not in cond and cond["tokens"].shape == (5, c.text.max_len)
    for row, i in zip(cond["tokens"], idx):
        assert net.vocabulary.decode(row) == " ".join(captions.tokenize(texts[i]))


def test_prompt_and_guidance_sample_from_the_checkpoint(trained, caplog):
    c, workdir = trained
    c.sampling.prompt, c.sampling.guidance_scale = "a dark trouser pointing sideways", 2.0
    x = evaluation.load_samples(evaluation.sample(c, str(workdir), eval_folder="prompt"))
    assert x.shape == (4, 1, 8, 8) and x.dtype == np.uint8
    assert "['pointing', 'sideways']" in caplog.text  # the unknown words (no footwear in these images), named
    # what the samplers got: the prompt's tokens for every sample, or the null caption [BOS]
    net = training.check_inputs(c, str(workdir))
    net.load_state_dict(torch.load(workdir / "checkpoints" / "checkpoint_3.pt", weights_only=True)["model"])
    cond = caption_data.sample_cond(c, net, 3)
    ids, mask = net.vocabulary.encode([c.sampling.prompt], c.text.max_len, pad_to_max=True)
    assert torch.equal(cond["tokens"], ids.expand(3, -1)) and torch.equal(cond["tokens_mask"], mask.expand(3, -1))
    c.sampling.prompt = ""
    assert cond["tokens"].shape[1] == c.text.max_len and caption_data.sample_cond(c, net, 2)["tokens"].tolist() == [[2], [2]]


def test_bad_text_settings_are_refused_naming_the_key(trained, tmp_path):
    c, _ = trained
    for key, value, words in (("sampling.prompt", "a " * 20 + "coat", "sampling.prompt"),
                              ("data.random_flip", True, "data.random_flip"),
                              ("model.context_dim", 32, "model.context_dim"),
                              ("text.encoder", "bert", "text.encoder")):
        bad = text_config(c.data.root)
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ConfigError, match=words):
            training.check_inputs(bad, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
