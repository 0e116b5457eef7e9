"""Captions for Fashion-MNIST from each image's label and attributes measured on the image itself
(brightness, size, and for footwear the way the toe points), so that a text-conditioned model's
samples can be scored against the prompt that made them.

Images are [B, 1, H, W] in [0, 1]: Fashion-MNIST's 28x28, or zero-padded around it (e.g. 32x32);
every measure counts garment pixels, so zero padding changes none of them. Labels are [B] in [0, 10).
An attribute value is an int: the index of its word in ATTRIBUTES[name], or -1 where it is undefined
(direction of a non-shoe) or not named (in a caption).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from models.text_encoder import tokenize

Tensor = torch.Tensor
CLASS_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
FOOTWEAR = (5, 7, 9)  # sandal, sneaker, ankle boot
ATTRIBUTES = {"brightness": ("dark", "light"), "size": ("small", "large"), "direction": ("left", "right")}
UNDEFINED = -1

# A pixel is garment when its intensity exceeds this: the background is 0 with a faint anti-aliased
# rim; 0.1 (25.5 of 255 levels) drops the rim and keeps the garment's dark parts (straps, soles).
GARMENT_THRESHOLD = 0.1
# dark: mean intensity of the garment pixels below this. It is the median of that mean over the
# 60,000 training images (0.64973), so half of them are dark; classes differ (84% of sandals and 72%
# of sneakers are dark, 32% of coats and ankle boots), as "dark" means the same shade in every class.
BRIGHTNESS_SPLIT = 0.6497
# large: more garment pixels than the median of the image's class over the training images. Size is
# relative to the class, as the word is ("a large sandal" is smaller than a small coat): a split at
# one global value would make size a proxy of the class (every sandal small, every coat large), so
# a size word would add nothing to the class word and "a large sandal" would never be seen.
SIZE_SPLIT = (426, 249, 479, 306, 450, 192, 463, 222, 421, 337)  # garment pixels, per class
# Toe direction: the heel side of a shoe is the taller one (heel counter, ankle shaft, high heel), so
# the toe points away from the end whose outer third of columns has the larger mean garment height;
# a tie falls to the side with the more mass. Checked by eye on rendered training images: about 92%
# of sandals, 99.7% of sneakers and all ankle boots point left; flat flip-flops are nearly mirror
# symmetric and read either way. A mirrored image reads the opposite way (the rule is symmetric).

# Held out of training captions to test composition: each word is common in other classes.
HELD_OUT = frozenset({("sandal", "brightness", "light"),   # 16% of sandals: ~960 training images
                      ("bag", "size", "large")})            # half of the bags


def _check_images(images: Tensor, labels: Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 1 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor [B, 1, H, W] in [0, 1], got {got}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"images must lie in [0, 1] (map [-1, 1] data by (x + 1) / 2), got values in "
                         f"[{float(images.min()):.3g}, {float(images.max()):.3g}]")
    if (not torch.is_tensor(labels) or labels.is_floating_point() or tuple(labels.shape) != images.shape[:1]
            or (labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASS_NAMES)))):
        raise ValueError(f"labels must be an integer tensor [{images.shape[0]}] of classes in [0, "
                         f"{len(CLASS_NAMES)}), got {labels!r:.80}")


# ----------------------------------------------------------------------------- measures on the image

def garment_stats(images: Tensor) -> Tuple[Tensor, Tensor]:
    """(pixels, brightness), float64 [B]: the number of garment pixels (x > GARMENT_THRESHOLD) and their
    mean intensity (0 for a blank image)."""
    x = images[:, 0]
    garment = x > GARMENT_THRESHOLD
    pixels = garment.sum((1, 2), dtype=torch.float64)
    return pixels, (x * garment).sum((1, 2), dtype=torch.float64) / pixels.clamp(min=1)


def heel_side(images: Tensor) -> Tensor:
    """float64 [B] whose sign says which end of the garment is the heel: > 0 the right end (the toe
    points left), < 0 the left end, 0 for a blank image. With columns [l, r] holding garment and
    w = r - l + 1, it is (mean height over columns in (r - w/3, r] - mean height over [l, l + w/3)) / H,
    a column's height being its lowest garment row - its highest + 1; where the two tie, it is the
    horizontal centre of mass minus (l + r) / 2, over W."""
    x = images[:, 0]
    garment = x > GARMENT_THRESHOLD
    B, H, W = garment.shape
    cols = torch.arange(W, dtype=torch.float64, device=x.device)
    present = garment.any(1)                                          # [B, W]
    left, right = _first(present, 1), W - 1 - _first(present.flip(1), 1)
    # a column's extent from its first garment row from the top to its first from the bottom
    height = torch.where(present, H - _first(garment.flip(1), 1) - _first(garment, 1), 0.0)   # [B, W]
    third = ((right - left + 1) / 3)[:, None]
    in_left = (cols >= left[:, None]) & (cols < left[:, None] + third)
    in_right = (cols <= right[:, None]) & (cols > right[:, None] - third)
    dh = (_mean_over(height, in_right) - _mean_over(height, in_left)) / H
    mass = (x * garment).sum(1, dtype=torch.float64)
    centre = (mass * cols).sum(1) / mass.sum(1).clamp(min=1e-12) - (left + right) / 2
    return torch.where(dh != 0, dh, centre / W) * present.any(1)


def _first(mask: Tensor, dim: int) -> Tensor:
    """The index (float64) of the first True along `dim` (0 where there is none)."""
    return mask.to(torch.uint8).argmax(dim).double()


def _mean_over(values: Tensor, selected: Tensor) -> Tensor:
    """The mean of values [B, W] over the selected columns of each row (0 where none is)."""
    return (values * selected).sum(1) / selected.sum(1).clamp(min=1)


def measure(images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """The attributes of each image, int64 [B] each: "brightness" (0 dark, 1 light), "size" (0 small,
    1 large, relative to the class) and "direction" (0 left, 1 right: where the toe points; -1 for
    classes other than FOOTWEAR and for blank images). See the module's thresholds."""
    _check_images(images, labels)
    pixels, brightness = garment_stats(images)
    split = torch.tensor(SIZE_SPLIT, dtype=torch.float64, device=images.device)[labels.long()]
    heel = heel_side(images)
    footwear = torch.isin(labels, torch.tensor(FOOTWEAR, device=labels.device)) & (pixels > 0)
    return {"brightness": (brightness >= BRIGHTNESS_SPLIT).long(),
            "size": (pixels > split).long(),
            "direction": torch.where(footwear, (heel < 0).long(), UNDEFINED)}


def fit_splits(images: Tensor, labels: Tensor) -> Tuple[float, Tuple[int, ...]]:
    """The medians the thresholds were set to, on a set of images: (brightness median, per-class median
    garment pixels). On the 60,000 training images these are BRIGHTNESS_SPLIT and SIZE_SPLIT."""
    _check_images(images, labels)
    pixels, brightness = garment_stats(images)
    sizes = tuple(int(pixels[labels == k].median()) if bool((labels == k).any()) else -1
                  for k in range(len(CLASS_NAMES)))
    return float(brightness.median()), sizes


# ----------------------------------------------------------------------------- captions

def _words(attrs: Dict[str, int]) -> Dict[str, str]:
    """The words of the named attributes (value >= 0)."""
    out = {}
    for name, value in attrs.items():
        if name not in ATTRIBUTES:
            raise ValueError(f"attrs has an unknown attribute {name!r}; allowed: {tuple(ATTRIBUTES)}")
        if value != UNDEFINED:
            if not 0 <= value < len(ATTRIBUTES[name]):
                raise ValueError(f"attrs[{name!r}] = {value!r}; allowed: -1 (not named) or an index into "
                                 f"{ATTRIBUTES[name]}")
            out[name] = ATTRIBUTES[name][value]
    return out


def _adjectives(cls: str, w: Dict[str, str]) -> str:    # "a small light sneaker pointing left"
    text = " ".join(["a"] + [w[k] for k in ("size", "brightness") if k in w] + [cls])
    return text + (f" pointing {w['direction']}" if "direction" in w else "")


def _list(cls: str, w: Dict[str, str]) -> str:          # "sneaker, light, large, pointing left"
    parts = [cls] + [w[k] for k in ("brightness", "size") if k in w]
    return ", ".join(parts + ([f"pointing {w['direction']}"] if "direction" in w else []))


def _photo(cls: str, w: Dict[str, str]) -> str:         # "a photo of a large sneaker that is light, facing left"
    text = f"a photo of a {w['size'] + ' ' if 'size' in w else ''}{cls}"
    text += f" that is {w['brightness']}" if "brightness" in w else ""
    return text + (f", facing {w['direction']}" if "direction" in w else "")


TEMPLATES = (_adjectives, _list, _photo)
MAX_CAPTION_WORDS = 11  # the longest: "a photo of a small sneaker that is light, facing left"


def caption(label: int, attrs: Dict[str, int], template: int = 0) -> str:
    """The caption of class `label` naming the attributes of `attrs` ({name: value}, -1: not named) in
    the words of template number `template` (0 <= template < len(TEMPLATES))."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be an int in [0, {len(CLASS_NAMES)}), got {label!r}")
    if isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(TEMPLATES):
        raise ValueError(f"template must be an int in [0, {len(TEMPLATES)}), got {template!r}")
    return TEMPLATES[template](CLASS_NAMES[label], _words(attrs))


def _exclusions(exclude: Iterable[Tuple[str, str, str]]) -> Dict[Tuple[int, str], int]:
    """{(class index, attribute): value index} of (class word, attribute, value word) triples."""
    out = {}
    for combo in exclude:
        cls, name, value = combo if isinstance(combo, tuple) and len(combo) == 3 else (None, None, None)
        if cls not in CLASS_NAMES or name not in ATTRIBUTES or value not in ATTRIBUTES[name]:
            raise ValueError(f"exclude holds {combo!r}; allowed: (class, attribute, value) with a class in "
                             f"{CLASS_NAMES} and an attribute and value of {ATTRIBUTES}")
        out[CLASS_NAMES.index(cls), name] = ATTRIBUTES[name].index(value)
    return out


def held_out_mask(labels: Tensor, attrs: Dict[str, Tensor], exclude=HELD_OUT) -> Tensor:
    """bool [B]: the images whose class and measured attributes form one of the `exclude` combinations
    (to drop them from training, or to score a model on them)."""
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for (k, name), value in _exclusions(exclude).items():
        mask |= (labels == k) & (attrs[name] == value)
    return mask


def make_captions(images: Tensor, labels: Tensor, seed: int, *, exclude=HELD_OUT, p_omit: float = 0.25,
                  attrs: Optional[Dict[str, Tensor]] = None) -> List[str]:
    """One caption per image from its label and measured attributes. With a generator seeded by
    `seed`, each image draws a template uniformly and leaves out each attribute with probability
    p_omit (so prompts naming only some attributes are in the training distribution). An attribute
    whose (class, attribute, value) is in `exclude` is never named, whatever the draw. `attrs`: the
    images' `measure` if already at hand (images is then not read)."""
    if isinstance(p_omit, bool) or not isinstance(p_omit, (int, float)) or not 0.0 <= p_omit < 1.0:
        raise ValueError(f"p_omit must be a number in [0, 1), got {p_omit!r}")
    attrs = measure(images, labels) if attrs is None else attrs
    held = _exclusions(exclude)
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(len(TEMPLATES), (len(labels),), generator=g).tolist()
    omit = (torch.rand(len(labels), len(ATTRIBUTES), generator=g) < p_omit).tolist()
    values = {name: attrs[name].tolist() for name in ATTRIBUTES}
    out = []
    for i, label in enumerate(labels.tolist()):
        named = {name: values[name][i] for j, name in enumerate(ATTRIBUTES)
                 if not omit[i][j] and held.get((label, name)) != values[name][i]}
        out.append(caption(label, named, templates[i]))
    return out


def parse(text: str) -> Dict[str, int]:
    """{"label": class index, then each attribute's value index}, -1 for what the caption does not
    name; any template's wording, or a free prompt using the same words. A caption naming two classes
    or two values of one attribute is a ValueError."""
    words = set(tokenize(text))
    found = {"label": [CLASS_NAMES.index(w) for w in CLASS_NAMES if w in words]}
    found.update({name: [i for i, w in enumerate(vals) if w in words] for name, vals in ATTRIBUTES.items()})
    clash = {k: v for k, v in found.items() if len(v) > 1}
    if clash:
        raise ValueError(f"caption {text!r} names more than one value of {sorted(clash)}")
    return {k: v[0] if v else UNDEFINED for k, v in found.items()}


def attribute_agreement(images: Tensor, prompts: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """For samples made from `prompts` (one each, naming a class): {attribute: (samples showing the named
    value, samples whose prompt names one)}, measured with the prompt's class."""
    parsed = [parse(p) for p in prompts]
    unnamed = [p for p, d in zip(prompts, parsed) if d["label"] == UNDEFINED]
    if unnamed:
        raise ValueError(f"prompts must name a class of {CLASS_NAMES} to score samples; these do not: {unnamed[:3]}")
    labels = torch.tensor([d["label"] for d in parsed], dtype=torch.long, device=images.device)
    attrs = measure(images, labels)
    out = {}
    for name in ATTRIBUTES:
        want = torch.tensor([d[name] for d in parsed], device=images.device)
        named = want != UNDEFINED
        out[name] = (int((attrs[name] == want)[named].sum()), int(named.sum()))
    return out
