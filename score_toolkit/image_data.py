"""Image data sets as uint8 tensors, the batch stream, the scalers and the dequantization.

Every loader returns `(images, labels)`: images uint8 [N, C, H, W] holding pixel levels
k in {0, ..., 255}, labels int64 [N]. Sources:
  * "fashion_mnist", "mnist": IDX files (gzipped or raw), 28x28, one channel;
  * "cifar10": the python pickle batches of CIFAR-10, 32x32, three channels;
  * "folder": PNG / JPEG files under a folder (recursive), resized and center-cropped.
Nothing is ever downloaded: a missing file raises FileNotFoundError saying how to get it.

Value conventions (one place for them):
  * training data:  y = k / 255 in [0, 1], then the scaler x = a*y + b (a=2, b=-1 if centered);
  * likelihood:     y = (k + u) / 256 with u ~ U[0, 1) (`dequantize`), so that
                    bpd = -(logp_x + D*log(a)) / (D*ln 2) + log2(256) with n_bins = 256.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

import likelihood
from score_toolkit.errors import BadFileError

KNOWN_DATASETS = ("fashion_mnist", "mnist", "cifar10", "folder")
SPLITS = ("train", "test")
DEFAULT_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
HOW_TO_GET = {
    "fashion_mnist": "install the Debian package 'dataset-fashion-mnist' (files land in "
    "/usr/share/datasets/fashion-mnist/) or copy the four IDX files into the root",
    "mnist": "copy the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) into the root",
    "cifar10": "unpack the 'CIFAR-10 python version' tarball (cifar-10-python.tar.gz) at the root, "
    "giving <root>/cifar-10-batches-py/data_batch_1..5 and test_batch",
}

IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8 entries (type byte 0x08), 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8 entries, 1 dimension
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Images = torch.Tensor  # uint8 [N, C, H, W]
Labels = torch.Tensor  # int64 [N]


# --------------------------------------------------------------------------- IDX (MNIST family)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic 1f 8b (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise BadFileError(f"{path}: gzip stream is truncated or corrupt ({err})") from err


def read_idx(path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file into a uint8 array shaped by its header.

    Layout, big-endian: a 4-byte magic (0x00 0x00, type byte 0x08 for uint8, number of dims d),
    then d uint32 sizes, then prod(sizes) bytes of data. Images have magic 2051 (d = 3:
    [N, rows, cols]); labels 2049 (d = 1: [N]). The length must match the header exactly.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise BadFileError(f"{path}: {len(raw)} bytes, too short for an IDX header (expected magic "
                         f"{expected_magic})")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise BadFileError(f"{path}: IDX magic number is {magic}, expected {expected_magic} "
                         f"(2051 = uint8 images, 2049 = uint8 labels)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BadFileError(f"{path}: truncated IDX header ({len(raw)} bytes, the header needs {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise BadFileError(f"{path}: {len(raw)} bytes, but an IDX file of dims {dims} has {expected}; "
                         f"the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def check_idx(path, expected_magic: int) -> None:
    """`read_idx`'s checks of the header and the length, reading the header only (and a gzip file's
    trailer, which holds the uncompressed length mod 2^32): a truncated file is caught before any work."""
    path, gz = Path(path), False
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            if gz:
                f.seek(-4, os.SEEK_END)
                size = int.from_bytes(f.read(4), "little")
        with (gzip.open(path, "rb") if gz else path.open("rb")) as f:
            head = f.read(4 + 4 * 3)
        size = size if gz else path.stat().st_size
    except FileNotFoundError:
        raise
    except (EOFError, OSError, zlib.error) as err:
        what = "gzip stream is truncated or corrupt" if gz else "cannot be read"
        raise BadFileError(f"{path}: {what} ({err})") from err
    if len(head) < 4 or int.from_bytes(head[:4], "big") != expected_magic:
        raise BadFileError(f"{path}: not an IDX file of magic {expected_magic} (2051 = uint8 images, 2049 = labels)")
    ndim = head[3]
    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim]) if len(head) >= 4 + 4 * ndim else None
    expected = None if dims is None else 4 + 4 * ndim + math.prod(dims)
    if expected is None or size != expected % (2 ** 32 if gz else 2 ** 63):
        raise BadFileError(f"{path}: {'a gzip stream of ' if gz else ''}{size} bytes, but an IDX file of dims {dims} "
                           f"has {expected}; the file is truncated or corrupt")


def _find_idx(root: Path, stem: str, name: str) -> Path:
    candidates = [root / f"{stem}.gz", root / stem]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{name}: no IDX file {looked}; {HOW_TO_GET[name]}")


def load_idx_split(root, split: str, name: str = "fashion_mnist") -> Tuple[Images, Labels]:
    """Images uint8 [N, 1, 28, 28] and labels int64 [N] of one split of an MNIST-format set."""
    image_stem, label_stem = IDX_STEMS[split]
    image_path = _find_idx(Path(root), image_stem, name)
    label_path = _find_idx(Path(root), label_stem, name)
    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise BadFileError(f"{image_path} holds {len(images)} images but {label_path} holds "
                         f"{len(labels)} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle naming any other global
    (a way to run code on load) is refused, since the batches come from a configured path."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data batch")
        # numpy 2 keeps numpy.core only as a deprecated alias of numpy._core.
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def read_cifar_batch(path) -> Tuple[Images, Labels]:
    """One CIFAR-10 python batch: a pickled dict with b"data" uint8 [N, 3072] (the 1024 red, then
    green, then blue values of each 32x32 image, row-major) and b"labels" (N ints in 0..9)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise BadFileError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise BadFileError(f"{path}: expected a dict with keys b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BadFileError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
    if labels.shape != (len(data),):
        raise BadFileError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10_split(root, split: str) -> Tuple[Images, Labels]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N]; `root` holds cifar-10-batches-py/
    (or is that folder itself)."""
    root = Path(root)
    folder = root if (root / CIFAR_BATCHES[split][0]).is_file() else root / "cifar-10-batches-py"
    parts = []
    for name in CIFAR_BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"cifar10: no batch file {path}; {HOW_TO_GET['cifar10']}")
        parts.append(read_cifar_batch(path))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# --------------------------------------------------------------------------- image folders


def list_image_folder(root) -> Tuple[List[Path], List[int], List[str]]:
    """Image paths (sorted), their labels and the class names of a folder.

    Class sub-folders are used when every image lies inside a top-level sub-folder: the sorted
    names of the sub-folders that hold images give labels 0, 1, ...; otherwise every label is 0.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"folder: no {'/'.join(IMAGE_SUFFIXES)} files under {root}")
    tops = [p.relative_to(root).parts for p in paths]
    if any(len(parts) == 1 for parts in tops):
        return paths, [0] * len(paths), []
    classes = sorted({parts[0] for parts in tops})
    index = {c: i for i, c in enumerate(classes)}
    return paths, [index[parts[0]] for parts in tops], classes


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (bicubic, antialiased when shrinking), then cut the
    central size x size square (offsets rounded down)."""
    width, height = image.size
    if min(width, height) != size:
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path, image_size: int, num_channels: int) -> torch.Tensor:
    """One image file -> uint8 [num_channels, image_size, image_size]. Alpha is dropped. A file that
    does not decode (truncated, not an image) is a BadFileError naming it."""
    mode = {1: "L", 3: "RGB"}[num_channels]
    try:
        with Image.open(path) as image:
            image = resize_center_crop(image.convert(mode), image_size)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadFileError(f"{path}: not a readable image ({e})") from e
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def load_folder(root, image_size: int, num_channels: int = 3) -> Tuple[Images, Labels]:
    """Every image under `root` as uint8 [N, C, S, S] and labels int64 [N] (see list_image_folder)."""
    paths, labels, _ = list_image_folder(root)
    images = torch.stack([load_image(p, image_size, num_channels) for p in paths])
    return images, torch.tensor(labels, dtype=torch.int64)


# --------------------------------------------------------------------------- common shape


def convert_channels(images: Images, num_channels: int) -> Images:
    """uint8 [N, C, H, W] -> [N, num_channels, H, W]: grey repeated to RGB, or RGB to grey with
    PIL's integer ITU-R 601 luma L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, so that tensor
    sources and image files give the same grey levels."""
    channels = images.shape[1]
    if channels == num_channels:
        return images
    if channels == 1 and num_channels == 3:
        return images.repeat(1, 3, 1, 1)
    if channels == 3 and num_channels == 1:
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
        luma = ((images.to(torch.int64) * weights).sum(1, keepdim=True) + 32768) >> 16
        return luma.to(torch.uint8)
    raise ValueError(f"num_channels={num_channels} from {channels}-channel images: allowed 1 or 3")


def pad_images(images: Images, pad_to: int) -> Images:
    """Zero-pad [N, C, H, W] to [N, C, pad_to, pad_to], centered (28 -> 32 adds 2 on each side;
    an odd remainder goes to the bottom / right)."""
    height, width = images.shape[-2:]
    if pad_to < max(height, width):
        raise ValueError(f"pad_to={pad_to} is smaller than the images ({height}x{width})")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    pads = (left, pad_to - width - left, top, pad_to - height - top)
    return torch.nn.functional.pad(images, pads, value=0)


def _check_choice(arg: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {arg} {value!r}; known: {', '.join(allowed)}")


def load_split(name: str, root=None, split: str = "train", image_size: Optional[int] = None,
               num_channels: Optional[int] = None, pad_to: Optional[int] = None
               ) -> Tuple[Images, Labels]:
    """Load one split of a named data set as (uint8 [N, C, H, W], int64 [N]).

    name: one of KNOWN_DATASETS ("fashion-mnist" is read as "fashion_mnist").
    root: the data folder; default DEFAULT_ROOTS[name] where there is one.
    split: "train" or "test". For "folder", root/<split>/ is used when it exists, else the whole
        folder serves as "train" (unless it has a test/ sub-folder).
    image_size: final H = W. Required for "folder" (resize + center crop); for the fixed-size
        sets the native size (after pad_to), or a size that divides it (block means: 32 -> 16 or 8),
        and None accepts the native size.
    num_channels: 1 or 3 (grey is repeated / RGB turned to luma); None keeps the native count
        (3 for folders).
    pad_to: zero-pad the fixed-size sets to pad_to x pad_to (e.g. 28 -> 32).
    """
    name = name.lower().replace("-", "_")
    _check_choice("dataset name", name, KNOWN_DATASETS)
    _check_choice("split", split, SPLITS)
    root = root if root is not None else DEFAULT_ROOTS.get(name)
    if root is None:
        raise ValueError(f"{name}: root is required (no default location for this data set)")
    if num_channels not in (None, 1, 3):
        raise ValueError(f"num_channels={num_channels!r}: allowed 1, 3 or None (native)")
    if name == "folder":
        images, labels = _load_folder_split(Path(root), split, image_size, num_channels or 3)
    elif name == "cifar10":
        images, labels = load_cifar10_split(root, split)
    else:
        images, labels = load_idx_split(root, split, name)
    if num_channels is not None:
        images = convert_channels(images, num_channels)
    if pad_to is not None:
        images = pad_images(images, pad_to)
    size = images.shape[-1]
    if image_size is not None and size != image_size and name != "folder" and image_size < size and not size % image_size:
        images = block_means(images, size // image_size)  # the low resolution a cascade's base stage models
    if image_size is not None and images.shape[-1] != image_size:
        raise ValueError(f"{name}: image_size={image_size} but its images are "
                         f"{images.shape[-2]}x{images.shape[-1]}; pad_to can enlarge 28x28 sets, and an image_size "
                         "that divides their size takes block means")
    return images, labels


def block_means(images: Images, factor: int) -> Images:
    """uint8 [N, C, H, W] -> the means of factor x factor blocks, rounded: [N, C, H / f, W / f] (the
    down-sampling of samplers.AveragePooling and of a super-resolution model's training data)."""
    x = torch.nn.functional.avg_pool2d(images.float(), factor)
    return x.round().clamp(0, 255).to(torch.uint8)


def _load_folder_split(root: Path, split: str, image_size, num_channels) -> Tuple[Images, Labels]:
    if image_size is None:
        raise ValueError("folder: image_size is required (images are resized and center-cropped)")
    if (root / split).is_dir():
        return load_folder(root / split, image_size, num_channels)
    if split == "train" and not (root / "test").is_dir():  # a lone test/ must not become a class
        return load_folder(root, image_size, num_channels)
    raise FileNotFoundError(f"folder: split {split!r} needs the sub-folder {root / split}")


# --------------------------------------------------------------------------- batches and scaling


def iterate_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, seed: int = 0,
                    shuffle: bool = True, random_flip: bool = False, drop_last: bool = False,
                    num_epochs: Optional[int] = 1) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images [B, ...], labels [B]) batches, epoch after epoch (num_epochs=None: forever).

    One torch.Generator seeded with `seed` draws every permutation and flip, so the same seed
    gives the same stream. Each epoch visits every sample once (drop_last drops the last
    N mod B of that epoch's order). random_flip mirrors each sample left-right with prob. 1/2.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} images but {labels.shape[0]} labels")
    if batch_size < 1 or (drop_last and batch_size > n):
        raise ValueError(f"batch_size={batch_size} with {n} samples (drop_last={drop_last}): "
                         f"need 1 <= batch_size{' <= N' if drop_last else ''}")
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            batch = images[index]
            if random_flip:
                batch = random_hflip(batch, generator)
            yield batch, labels[index]
        epoch += 1


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample of [B, ..., W] along W with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 levels k -> float32 k / 255 in [0, 1] (the training-data convention)."""
    return images.to(torch.float32) / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 round(255 y), clipped (as saving a PNG would)."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


# One dequantizer and one data scale for training, sampling and bits/dim: those of `likelihood`.
scaler_coefficients, dequantize = likelihood.data_scale, likelihood.dequantize


def get_scaler(centered: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """y in [0, 1] -> x = 2y - 1 in [-1, 1] when centered, else x = y."""
    a, b = scaler_coefficients(centered)
    return lambda y: y * a + b


def get_inverse_scaler(centered: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> y = (x + 1) / 2 when centered, else y = x (inverse of get_scaler)."""
    a, b = scaler_coefficients(centered)
    return lambda x: (x - b) / a
