"""Super-resolution models: the networks take the low-resolution image and its augmentation level
through the conditioning channel; the training data make and augment it (Gaussian noise by the SDE's
own marginal, Gaussian blur) from the training generator alone, so a resumed run is the same run; bad
settings are refused naming their key."""
import os

import pytest
import torch

import sde_lib
from configs.fashionmnist_vp_ddpmpp_sr import get_config
from models.ddpm import DDPM
from models.ncsnpp import NCSNpp
from score_toolkit import errors, super_resolution, validation

SMALL = {NCSNpp: dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16, num_channels=1,
                      embedding_type="positional", centered=True),
         DDPM: dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16, num_channels=1,
                    num_groups=8)}


def test_blur_kernels_sum_to_one_and_keep_a_constant_image():
    k = super_resolution.blur_kernels(torch.tensor([0.0, 0.4, 1.5]), 9)
    torch.testing.assert_close(k.sum(1), torch.ones(3, dtype=torch.float64))
    assert k[0, 4] == 1 and torch.equal(k[1], k[1].flip(0))          # width 0: the identity; symmetric
    const = torch.full((3, 2, 8, 8), 0.3)
    torch.testing.assert_close(super_resolution.gaussian_blur(const, torch.tensor([0.0, 0.5, 2.0])), const)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    blurred = super_resolution.gaussian_blur(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(blurred[0], x[0])
    assert blurred[1].var() < 0.5 * x[1].var()                           # a wide blur smooths


@pytest.mark.parametrize("cls", [NCSNpp, DDPM])
def test_a_super_resolution_network_reads_its_low_resolution_and_level(cls):
    torch.manual_seed(0)
    plain = cls(**SMALL[cls])
    torch.manual_seed(0)
    sr = cls(**SMALL[cls], sr_from=8)
    assert sr.cond_keys == ("low_res", "aug_level", "low_res_null") and plain.cond_keys == ()
    # the plain network's parameters in the same order, the input convolution reading 2C channels; the SR
    # module registered last
    names = [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in sr.named_parameters()][:len(names)] == names
    widened = [n for (n, p), (_, q) in zip(plain.named_parameters(), sr.named_parameters()) if p.shape != q.shape]
    assert len(widened) == 1 and dict(sr.named_parameters())[widened[0]].shape[1] == 2
    x, c = torch.randn(3, 1, 16, 16), torch.rand(3) + 0.1
    low = torch.randn(3, 1, 8, 8)
    out = sr(x, c, low_res=low, aug_level=torch.zeros(3))
    assert out.shape == x.shape
    assert not torch.allclose(out, sr(x, c, low_res=-low, aug_level=torch.zeros(3)))  # it reads the low resolution
    with pytest.raises(ValueError, match=r"needs low_res of shape \(3, 1, 8, 8\)"):
        sr(x, c, low_res=torch.randn(3, 1, 4, 4), aug_level=torch.zeros(3))
    with pytest.raises(TypeError, match="not a super-resolution network"):
        plain(x, c, low_res=low)
    with pytest.raises(ValueError, match="sr_from = 5 must be a low resolution below image_size = 16 that divides"):
        cls(**SMALL[cls], sr_from=5)


@pytest.mark.parametrize("cls", [NCSNpp, DDPM])
def test_a_network_trained_to_drop_its_low_resolution_has_a_null_that_ignores_it(cls):
    torch.manual_seed(0)
    sr = cls(**SMALL[cls], sr_from=8, sr_p_uncond=0.2)
    with torch.no_grad():  # the null vector and the level's last layer start at 0: make them matter
        sr.low_res.null.normal_()
        sr.low_res.dense_1.weight.normal_(0, 0.1)
    sr.eval()
    x, c, s = torch.randn(4, 1, 16, 16), torch.rand(4) + 0.1, torch.rand(4)
    low = torch.randn(4, 1, 8, 8)
    null = torch.tensor([False, True, False, True])
    out = sr(x, c, low_res=low, aug_level=s, low_res_null=null)
    # a dropped sample reads neither its low resolution nor its level: the same as low_res=None
    torch.testing.assert_close(out[null], sr(x, c, low_res=None)[null])
    torch.testing.assert_close(out[null], sr(x, c, low_res=-low, aug_level=1 - s, low_res_null=null)[null])
    torch.testing.assert_close(out[~null], sr(x, c, low_res=low, aug_level=s)[~null])   # the others as without a mask
    assert not torch.allclose(out[~null], sr(x, c, low_res=None)[~null])
    # in training each sample is dropped with probability p_uncond, from the global RNG (resumable)
    sr.train()
    torch.manual_seed(3)
    drops = torch.rand(1000) < 0.2
    torch.manual_seed(3)
    assert torch.equal(sr.low_res.dropped(torch.zeros(1000, 1, 8, 8), None, 1000, "cpu"), drops)
    assert 150 < int(drops.sum()) < 250
    # a network trained without dropping refuses to be asked for its unconditional score; no null parameter
    plain = cls(**SMALL[cls], sr_from=8)
    assert not any("null" in n for n, _ in plain.named_parameters())
    with pytest.raises(ValueError, match="trained without dropping its low resolution"):
        plain(x, c, low_res=None)
    with pytest.raises(ValueError, match=r"sr_p_uncond .* must be in \[0, 1\), got 1.0"):
        cls(**SMALL[cls], sr_from=8, sr_p_uncond=1.0)


def test_low_resolution_guidance_mixes_the_conditional_and_null_scores_in_one_call():
    """With exact Gaussian scores: s_c the conditional score given z (the issue's formula), s_u the
    unconditional; the guided score is (1 + w) s_c - w s_u, made in one call on the doubled batch."""
    import samplers
    sde = sde_lib.VPSDE()
    g = sde_lib.GaussianMixture([1.0], torch.zeros(1, 16, dtype=torch.float64),
                                torch.diag(torch.linspace(0.2, 2.0, 16, dtype=torch.float64))[None])
    D = torch.kron(torch.eye(8, dtype=torch.float64), torch.full((1, 2), 0.5))       # 16 -> 8: pairs' means
    cond_score = g.super_resolution_score_fn(sde, D)
    uncond = g.score_fn(sde)
    calls = []

    def both(x, t, low_res=None, aug_level=None, low_res_null=None):
        calls.append(x.shape[0])
        out = cond_score(x, t, low_res=low_res, aug_level=aug_level)
        return torch.where(low_res_null[:, None], uncond(x, t), out)

    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, 16, generator=gen, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    z, s = torch.randn(5, 8, generator=gen, dtype=torch.float64), torch.full((5,), 0.1, dtype=torch.float64)
    guided = samplers.low_res_cfg_score(both, 2.5)
    want = 3.5 * cond_score(x, t, low_res=z, aug_level=s) - 2.5 * uncond(x, t)
    torch.testing.assert_close(guided(x, t, low_res=z, aug_level=s), want, rtol=1e-12, atol=1e-12)
    assert calls == [10] and guided.cond_keys == ("low_res", "aug_level")
    with pytest.raises(ValueError, match="needs a super-resolution score_fn"):
        samplers.low_res_cfg_score(uncond, 1.0)


def test_guiding_a_super_resolution_model_needs_it_trained_to_drop_the_low_resolution():
    config = get_config()
    config.sampling.guidance_scale = 1.0
    with pytest.raises(errors.ConfigError, match="config.sampling.guidance_scale = 1.0 is not allowed: .*"
                                                 "trained without dropping it"):
        validation.validate_config(config)
    config.model.sr_p_uncond = 0.1
    validation.validate_config(config)
    config.model.sr_p_uncond = 1.2
    with pytest.raises(errors.ConfigError, match=r"config.model.sr_p_uncond = 1.2 is not allowed: must be a number"):
        validation.validate_config(config)


def _data(sr_aug_max=0.5, blur=1.0):
    config = get_config()
    config.training.sr_aug_max, config.training.sr_blur_prob = sr_aug_max, blur

    class Images:  # the interface SuperResolutionData wraps
        test = torch.rand(10, 1, 32, 32) * 2 - 1

        def train_batch(self, n, g):
            return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, {}

    return super_resolution.SuperResolutionData(Images(), config, sde_lib.VPSDE())


def test_the_training_data_make_and_augment_the_low_resolution_from_the_generator_alone():
    data = _data()
    a = data.train_batch(64, torch.Generator().manual_seed(3))
    b = data.train_batch(64, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in ("low_res", "aug_level"))
    s = a[1]["aug_level"]
    assert a[1]["low_res"].shape == (64, 1, 16, 16) and 0 <= float(s.min()) and float(s.max()) <= 0.5
    # level 0 and no blur: the block means themselves; a level's noise is the SDE's marginal at s T
    clean = _data(0.0, 0.0)
    x, cond = clean.train_batch(4, torch.Generator().manual_seed(4))
    torch.testing.assert_close(cond["low_res"], torch.nn.functional.avg_pool2d(x, 2))
    y = torch.zeros(20000, 1, 1, 1)
    z = clean.augment(y, torch.full((20000,), 0.3), torch.Generator().manual_seed(5))
    sigma = float(sde_lib.VPSDE().marginal_coeffs(torch.tensor([0.3], dtype=torch.float64))[1])
    assert abs(float(z.std()) - sigma) < 0.02 * sigma


@pytest.mark.parametrize("key, value, match", [
    ("model.sr_from", 12, "that divides it"),
    ("training.sr_aug_max", 1.5, r"must be a number in \[0, 1\]"),
    ("sampling.aug_level", -0.1, r"must be a number in \[0, 1\]"),
    ("training.sr_blur_sigma_max", 0.1, "must be >= training.sr_blur_sigma_min"),
    ("eval.enable_nll", True, "likelihood given its low resolution is not evaluated yet"),
])
def test_bad_super_resolution_settings_name_their_key(key, value, match):
    config = get_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(errors.ConfigError, match=f"config.{key} = .* is not allowed: .*{match}"):
        validation.validate_config(config)


def test_sr_from_on_point_data_is_refused():
    from configs.swissroll_vp_mlp import get_config as points
    config = points()
    config.model.sr_from = 4
    with pytest.raises(errors.ConfigError, match="config.model.sr_from = 4 is not allowed: needs image data"):
        validation.validate_config(config)


@pytest.fixture
def tiny_images(tmp_path):
    from tests.helpers import write_tiny_image_set
    return write_tiny_image_set(tmp_path / "data", 64, 16)


def tiny_sr_config(root):
    c = get_config()
    c.device, c.data.root, c.data.image_size, c.data.pad_to = "cpu", str(root), 8, 0
    m = c.model
    m.image_size, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.sr_from = 8, 8, (1, 2), 1, (4,), 4
    t = c.training
    t.n_iters, t.batch_size, t.checkpoint_freq, t.snapshot_freq, t.log_freq = 6, 8, 3, 6, 1
    t.sr_blur_prob = 0.5
    s = c.sampling
    s.method, s.steps, s.n_samples, s.batch_size = "ddim", 3, 4, 4
    c.eval.n_samples, c.eval.batch_size, c.eval.feature_extractor = 4, 4, "none"
    return c


def test_a_super_resolution_run_trains_snapshots_resumes_bit_for_bit_and_evaluates(tiny_images, tmp_path):
    from score_toolkit import evaluation, training
    from tests.helpers import assert_same_state, final_weights
    c = tiny_sr_config(tiny_images)
    c.model.sr_p_uncond = 0.25   # the low resolution dropped in training: resumed runs drop the same samples
    training.train(c, str(tmp_path / "a"))
    assert (tmp_path / "a" / "samples" / "samples_6.png").exists()   # sampled given the test images' low resolution
    training.train(c, str(tmp_path / "b"), max_steps=3)
    training.train(c, str(tmp_path / "b"))
    assert_same_state(final_weights(tmp_path / "a")[1], final_weights(tmp_path / "b")[1])
    c.sampling.guidance_scale = 1.0   # guided on the low resolution
    res = evaluation.evaluate(c, str(tmp_path / "a"))   # the held-out loss and samples, given low resolutions
    assert res["heldout_loss"] > 0
    import numpy as np
    samples = np.load(tmp_path / "a" / "eval" / "samples_ddim_ckpt6" / "batch_0.npz")["samples"]
    assert samples.shape == (4, 1, 8, 8)


def tiny_base_config(root):
    """A base model on the 4 x 4 block means of the tiny images."""
    c = tiny_sr_config(root)
    c.data.image_size, c.model.image_size, c.model.sr_from = 4, 4, 0
    c.model.ch_mult, c.model.attn_resolutions = (1,), ()
    c.training.sr_blur_prob = 0.0
    return c


@pytest.fixture
def tiny_pair(tmp_path):
    """Tiny 8 x 8 images and their 4 x 4 block means, as two IDX data sets."""
    import numpy as np
    from tests.helpers import tiny_two_class_images, write_idx
    rng = np.random.default_rng(0)
    for name in ("high", "low"):
        (tmp_path / name).mkdir()
    for prefix, n in (("train", 64), ("t10k", 16)):
        images, labels = tiny_two_class_images(n, rng)
        write_idx(tmp_path / "high", prefix, images, labels)
        write_idx(tmp_path / "low", prefix, images.reshape(n, 4, 2, 4, 2).mean((2, 4)).round().astype(images.dtype), labels)
    return tmp_path / "low", tmp_path / "high"


def test_the_cascade_mode_chains_workdirs_and_keeps_every_stage(tiny_pair, tmp_path):
    import numpy as np
    from score_toolkit import cascade_run, training
    low, high = tiny_pair
    base, sr = tiny_base_config(low), tiny_sr_config(high)
    training.train(base, str(tmp_path / "base"))
    training.train(sr, str(tmp_path / "sr"))
    sr.sampling.cascade_from, sr.sampling.aug_level, sr.sampling.truncated = str(tmp_path / "base"), 0.3, True
    cascade_run.check_inputs(sr, str(tmp_path / "sr"))
    folder = cascade_run.run(sr, str(tmp_path / "sr"))
    first = [np.load(os.path.join(folder, f"stage_{i}", "batch_0.npz"))["samples"] for i in (0, 1)]
    assert first[0].shape == (4, 1, 4, 4) and first[1].shape == (4, 1, 8, 8)
    again = cascade_run.run(sr, str(tmp_path / "sr"))   # read back, not drawn again
    assert np.array_equal(np.load(os.path.join(again, "stage_1", "batch_0.npz"))["samples"], first[1])
    sr.sampling.cascade_from = str(tmp_path / "nowhere")
    with pytest.raises(errors.MissingInputError, match="no trained workdir there"):
        cascade_run.check_inputs(sr, str(tmp_path / "sr"))
    sr.sampling.cascade_from = str(tmp_path / "sr")   # an 8 x 8 stage below an 8 x 8 one
    with pytest.raises(errors.ConfigError, match="loops|is not a super-resolution model of stage 0"):
        cascade_run.check_inputs(sr, str(tmp_path / "sr"))


def test_a_fixed_size_set_loads_at_a_size_that_divides_it_as_block_means(tiny_pair):
    from score_toolkit import image_data
    low, high = tiny_pair
    small, labels = image_data.load_split("fashion_mnist", str(high), "train", image_size=4)
    same, same_labels = image_data.load_split("fashion_mnist", str(low), "train", image_size=4)
    assert torch.equal(small, same) and torch.equal(labels, same_labels)
    with pytest.raises(ValueError, match="an image_size that divides their size takes block means"):
        image_data.load_split("fashion_mnist", str(high), "train", image_size=3)
