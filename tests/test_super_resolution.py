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
    assert sr.cond_keys == ("low_res", "aug_level") and plain.cond_keys == ()
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
    training.train(c, str(tmp_path / "a"))
    assert (tmp_path / "a" / "samples" / "samples_6.png").exists()   # sampled given the test images' low resolution
    training.train(c, str(tmp_path / "b"), max_steps=3)
    training.train(c, str(tmp_path / "b"))
    assert_same_state(final_weights(tmp_path / "a")[1], final_weights(tmp_path / "b")[1])
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
