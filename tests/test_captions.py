"""Fashion-MNIST captions: attributes measured on synthetic images with exact answers and on real
training images (balanced splits, shoes that point left and turn right when mirrored), captions
reproducible per seed that never name a held-out combination, and parse inverting every template."""
import itertools
import os

import pytest
import torch

from models.text_encoder import Vocabulary
from score_toolkit import captions as C
from score_toolkit.image_data import DEFAULT_ROOTS, load_idx_split, pad_images

F64 = torch.float64
ROOT = DEFAULT_ROOTS["fashion_mnist"]
TSHIRT, SANDAL, SNEAKER, BAG, BOOT = 0, 5, 7, 8, 9


def canvas(n=1):
    return torch.zeros(n, 1, 28, 28)


def shoe():
    """A sole (rows 20-21, columns 1-24) and a heel block (rows 10-21, columns 17-24): heel on the right."""
    x = canvas()
    x[0, 0, 20:22, 1:25] = 0.5
    x[0, 0, 10:22, 17:25] = 0.75
    return x


def test_brightness_and_size_of_squares_with_a_faint_rim():
    x = canvas(2)
    x[0, 0, 2:26, 2:26] = 1.0            # 24 x 24 = 576 pixels: more than a t-shirt's median 426
    x[0, 0, 2:26, 2:14] = 0.5            # half of them at 0.5: mean 0.75
    x[0, 0, 1, 2:26] = 0.0625            # a rim below GARMENT_THRESHOLD counts for nothing
    x[1, 0, 10:18, 10:18] = 0.25         # 64 dim pixels
    pixels, brightness = C.garment_stats(x)
    assert pixels.tolist() == [576.0, 64.0]
    assert (brightness - torch.tensor([0.75, 0.25], dtype=F64)).abs().max() < 1e-12
    attrs = C.measure(x, torch.tensor([TSHIRT, TSHIRT]))
    assert attrs["brightness"].tolist() == [1, 0] and attrs["size"].tolist() == [1, 0]
    assert attrs["direction"].tolist() == [-1, -1] and attrs["size"].dtype == torch.int64
    # size is relative to the class: 200 pixels is small for a t-shirt (426), large for a sandal (192)
    y = canvas(2)
    y[:, 0, 4:24, 4:14] = 1.0
    assert C.measure(y, torch.tensor([TSHIRT, SANDAL]))["size"].tolist() == [0, 1]


def test_a_synthetic_shoe_and_its_mirror_image_point_opposite_ways():
    x = shoe()
    # heights: 2 over the left third (columns 1-8), 12 over the right third (17-24): (12 - 2) / 28
    assert abs(C.heel_side(x).item() - 10 / 28) < 1e-12
    both = torch.cat([x, x.flip(-1)])
    for label in C.FOOTWEAR:
        assert C.measure(both, torch.tensor([label, label]))["direction"].tolist() == [0, 1]
    assert C.measure(both, torch.tensor([BAG, TSHIRT]))["direction"].tolist() == [-1, -1]
    assert C.measure(canvas(), torch.tensor([SNEAKER]))["direction"].tolist() == [-1]  # blank: nothing to read


def test_equal_heights_fall_back_to_the_side_with_more_mass():
    x = canvas()
    x[0, 0, 10:20, 4:24] = 0.5
    x[0, 0, 10:20, 14:24] = 1.0          # a flat block, heavier on the right: its heel
    assert C.heel_side(x).item() > 0
    assert C.measure(torch.cat([x, x.flip(-1)]), torch.tensor([SNEAKER] * 2))["direction"].tolist() == [0, 1]


def test_zero_padding_to_32_changes_no_attribute():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([shoe(), (torch.rand(3, 1, 28, 28, generator=g) > 0.5).float() * 0.8])
    labels = torch.tensor([SNEAKER, TSHIRT, SANDAL, BOOT])
    a, b = C.measure(x, labels), C.measure(pad_images(x, 32), labels)
    assert all(torch.equal(a[k], b[k]) for k in C.ATTRIBUTES)


def test_measure_refuses_bad_images_and_labels():
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\] .*got values in \[-1, -1\]"):
        C.measure(canvas() - 1, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"images must be a float tensor \[B, 1, H, W\]"):
        C.measure(torch.zeros(1, 28, 28), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor \[1\] of classes in \[0, 10\)"):
        C.measure(canvas(), torch.tensor([10]))


# ----------------------------------------------------------------------------- real images

@pytest.fixture(scope="module")
def real():
    """The first 1,000 training images in [0, 1] and their labels."""
    if not os.path.isdir(ROOT):
        pytest.skip(f"no Fashion-MNIST files in {ROOT}")
    images, labels = load_idx_split(ROOT, "train")
    return images[:1000].float() / 255, labels[:1000]


def test_real_images_split_evenly_and_only_shoes_have_a_direction(real):
    images, labels = real
    attrs = C.measure(images, labels)
    assert 0.4 <= attrs["brightness"].float().mean() <= 0.6
    assert 0.4 <= attrs["size"].float().mean() <= 0.6
    footwear = torch.isin(labels, torch.tensor(C.FOOTWEAR))
    assert torch.equal(attrs["direction"] != -1, footwear) and int(footwear.sum()) > 250
    assert (attrs["direction"][footwear] == 0).float().mean() > 0.9  # Fashion-MNIST's shoes point left
    brightness, sizes = C.fit_splits(images, labels)  # the thresholds are these medians, on all 60,000
    assert abs(brightness - C.BRIGHTNESS_SPLIT) < 0.01
    assert all(abs(s - t) < 0.1 * t for s, t in zip(sizes, C.SIZE_SPLIT))


def test_a_mirrored_real_shoe_points_the_other_way(real):
    images, labels = real
    footwear = torch.isin(labels, torch.tensor(C.FOOTWEAR))
    shoes, kinds = images[footwear], labels[footwear]
    before = C.measure(shoes, kinds)["direction"]
    after = C.measure(shoes.flip(-1), kinds)["direction"]
    assert (before != after).float().mean() >= 0.9


# ----------------------------------------------------------------------------- captions

def synthetic(n, seed=0):
    """n images of random class, each a square of random side and intensity (so every attribute value
    occurs) whose left column is brighter in half of them (those read as pointing right)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = torch.zeros(n, 1, 28, 28)
    side = torch.randint(3, 26, (n,), generator=g)
    level = 0.3 + 0.7 * torch.rand(n, generator=g)
    cols = torch.arange(28)
    block = (cols[None, :] < side[:, None]).float()                       # [n, 28]
    x[:, 0] = block[:, None, :] * (cols[:, None] < side[:, None, None]).float() * level[:, None, None]
    heel = torch.rand(n, generator=g) < 0.5
    x[heel, 0, :side.min(), 0] = 1.0  # a brighter left column: more mass on the left, so the heel
    return x.clamp(0, 1), labels


def test_captions_are_reproducible_per_seed():
    x, y = synthetic(300)
    first = C.make_captions(x, y, seed=3)
    assert C.make_captions(x, y, seed=3) == first
    assert sum(a != b for a, b in zip(first, C.make_captions(x, y, seed=4))) > 100
    assert len(first) == 300 and all(isinstance(c, str) for c in first)


def named_combos(captions):
    """The (class, attribute, value) combinations that the captions name."""
    return {(C.CLASS_NAMES[d["label"]], name, C.ATTRIBUTES[name][d[name]])
            for d in map(C.parse, captions) for name in C.ATTRIBUTES if d[name] != -1}


def test_held_out_combinations_never_appear_in_10000_captions():
    x, y = synthetic(10000)
    attrs = C.measure(x, y)
    assert int(C.held_out_mask(y, attrs).sum()) > 300  # the combinations exist in the images
    assert not named_combos(C.make_captions(x, y, seed=0, attrs=attrs)) & C.HELD_OUT
    assert C.HELD_OUT <= named_combos(C.make_captions(x, y, seed=0, attrs=attrs, exclude=()))


def test_captions_name_what_was_measured_and_fit_the_vocabulary():
    x, y = synthetic(2000)
    attrs = C.measure(x, y)
    captions = C.make_captions(x, y, seed=1, exclude=(), p_omit=0.0)
    for i, text in enumerate(captions):
        assert C.parse(text) == {"label": int(y[i]), **{k: int(attrs[k][i]) for k in C.ATTRIBUTES}}, text
    vocab = Vocabulary.build(captions)
    ids, mask = vocab.encode(captions, max_len=C.MAX_CAPTION_WORDS + 1, strict=True)
    assert int(mask.sum(1).max()) == C.MAX_CAPTION_WORDS + 1


@pytest.mark.parametrize("template", range(len(C.TEMPLATES)))
def test_parse_inverts_caption_for_every_class_and_named_subset(template):
    for label in range(10):
        directions = (-1, 0, 1) if label in C.FOOTWEAR else (-1,)
        for b, s, d in itertools.product((-1, 0, 1), (-1, 0, 1), directions):
            attrs = {"brightness": b, "size": s, "direction": d}
            text = C.caption(label, attrs, template)
            assert C.parse(text) == {"label": label, **attrs}, text
            assert len(text.split()) <= C.MAX_CAPTION_WORDS


def test_parse_reads_free_prompts_and_refuses_contradictions():
    assert C.parse("Dark SNEAKER, pointing right!") == {"label": 7, "brightness": 0, "size": -1, "direction": 1}
    assert C.parse("") == {"label": -1, "brightness": -1, "size": -1, "direction": -1}
    with pytest.raises(ValueError, match=r"names more than one value of \['brightness', 'label'\]"):
        C.parse("a dark light bag or boot")


def test_caption_argument_errors():
    with pytest.raises(ValueError, match=r"label must be an int in \[0, 10\), got 10"):
        C.caption(10, {})
    with pytest.raises(ValueError, match=r"template must be an int in \[0, 3\), got 3"):
        C.caption(0, {}, 3)
    with pytest.raises(ValueError, match=r"attrs\['size'\] = 2"):
        C.caption(0, {"size": 2})
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        C.caption(0, {"colour": 1})
    with pytest.raises(ValueError, match=r"exclude holds \('sandal', 'size', 'tiny'\)"):
        C.make_captions(canvas(), torch.tensor([0]), seed=0, exclude={("sandal", "size", "tiny")})


def test_attribute_agreement_scores_samples_against_their_prompts():
    x = torch.cat([shoe(), shoe()])
    prompts = ["a dark small sneaker pointing left", "a light sneaker pointing right"]
    # the shoe: 32 sole + 96 heel = 128 pixels (small for a sneaker), mean 0.6875 (light), toe left
    assert C.attribute_agreement(x, prompts) == {"brightness": (1, 2), "size": (1, 1), "direction": (1, 2)}
    with pytest.raises(ValueError, match="must name a class"):
        C.attribute_agreement(x, ["something dark", "a bag"])
