"""image_data: loaders on small files written in the real formats, the batch stream, scalers and
dequantization, each against values known by construction."""
import gzip
import itertools
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from score_toolkit import image_data


def write_idx(path, array, magic, gz):
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_set(root, n_train=3, n_test=2, rows=4, cols=5, gz_train=True, gz_test=False):
    """IDX files of non-square images (so rows/cols mix-ups show); returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, gz in (("train", n_train, gz_train), ("test", n_test, gz_test)):
        images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        image_stem, label_stem = image_data.IDX_STEMS[split]
        suffix = ".gz" if gz else ""
        write_idx(root / (image_stem + suffix), images, 2051, gz)
        write_idx(root / (label_stem + suffix), labels, 2049, gz)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "Fashion-MNIST"])
def test_idx_gz_and_raw_load_exact_pixels_and_labels(tmp_path, name):
    arrays = make_idx_set(tmp_path)
    for split in ("train", "test"):  # train is gzipped, test raw
        images, labels = image_data.load_split(name, tmp_path, split)
        want_images, want_labels = arrays[split]
        assert images.dtype == torch.uint8 and images.shape == (len(want_images), 1, 4, 5)
        assert labels.dtype == torch.int64
        np.testing.assert_array_equal(images[:, 0].numpy(), want_images)
        np.testing.assert_array_equal(labels.numpy(), want_labels)


def test_gzip_detected_by_content_not_name(tmp_path):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "images"
    write_idx(path, images, 2051, gz=True)
    np.testing.assert_array_equal(image_data.read_idx(path, 2051), images)


def test_truncated_idx_names_file_and_sizes(tmp_path):
    make_idx_set(tmp_path, gz_test=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated") as info:
        image_data.load_split("fashion_mnist", tmp_path, "test")
    # header 4 + 3*4 = 16 bytes, data 2*4*5 = 40: 56 expected, 49 present
    assert "49 bytes" in str(info.value) and "dims (2, 4, 5) has 56" in str(info.value)


def test_truncated_gzip_is_a_value_error(tmp_path):
    make_idx_set(tmp_path, gz_train=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: gzip stream"):
        image_data.load_split("fashion_mnist", tmp_path, "train")


def test_wrong_magic_says_what_was_expected(tmp_path):
    make_idx_set(tmp_path)
    labels = (tmp_path / "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(labels)  # a labels file where images belong
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: IDX magic number is 2049, "
                                         r"expected 2051"):
        image_data.load_split("fashion_mnist", tmp_path, "test")


def test_image_label_count_mismatch(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), 2049, gz=False)
    with pytest.raises(ValueError, match="2 images but .* 5 labels"):
        image_data.load_split("fashion_mnist", tmp_path, "test")


def test_missing_idx_names_path_and_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        image_data.load_split("fashion_mnist", tmp_path / "nowhere", "train")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert "dataset-fashion-mnist" in message


def test_unknown_name_and_split_list_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset name 'svhn'.*fashion_mnist.*cifar10"):
        image_data.load_split("svhn", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'valid'; known: train, test"):
        image_data.load_split("mnist", tmp_path, "valid")


def test_pad_to_32_and_image_size_check(tmp_path):
    arrays = make_idx_set(tmp_path, rows=28, cols=28)
    images, _ = image_data.load_split("mnist", tmp_path, "test", image_size=32, pad_to=32)
    assert images.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(images[:, 0, 2:30, 2:30].numpy(), arrays["test"][0])
    border = images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0
    with pytest.raises(ValueError, match="image_size=32 but its images are 28x28; pad_to"):
        image_data.load_split("mnist", tmp_path, "test", image_size=32)


# --------------------------------------------------------------------------- CIFAR-10


def make_cifar(folder, per_batch=2):
    """Python batches like the real ones; returns {split: (data [N, 3072], labels)}."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    out = {}
    for split, names in image_data.CIFAR_BATCHES.items():
        datas, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            batch_labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            with open(folder / name, "wb") as f:
                pickle.dump({b"batch_label": name.encode(), b"labels": batch_labels,
                             b"data": data, b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
            datas.append(data)
            labels += batch_labels
        out[split] = (np.concatenate(datas), np.array(labels))
    return out


@pytest.mark.parametrize("at_parent", [True, False])
def test_cifar_batches_exact_layout(tmp_path, at_parent):
    folder = tmp_path / "cifar-10-batches-py"
    arrays = make_cifar(folder)
    root = tmp_path if at_parent else folder
    images, labels = image_data.load_split("cifar10", root, "train")
    data, want_labels = arrays["train"]
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8
    # Row layout: 1024 red values, then green, then blue, each plane row-major.
    n, c, i, j = 7, 2, 5, 30
    assert int(images[n, c, i, j]) == int(data[n, c * 1024 + i * 32 + j])
    np.testing.assert_array_equal(images.reshape(10, -1).numpy(), data)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    test_images, _ = image_data.load_split("cifar10", root, "test")
    np.testing.assert_array_equal(test_images.reshape(2, -1).numpy(), arrays["test"][0])


def test_cifar_grey_matches_pil_luma(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py")
    rgb, _ = image_data.load_split("cifar10", tmp_path, "test")
    grey, _ = image_data.load_split("cifar10", tmp_path, "test", num_channels=1)
    pil_grey = np.asarray(Image.fromarray(rgb[0].permute(1, 2, 0).numpy()).convert("L"))
    np.testing.assert_array_equal(grey[0, 0].numpy(), pil_grey)


def test_cifar_missing_batch_names_path_and_tarball(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_4.*cifar-10-python\.tar\.gz"):
        image_data.load_split("cifar10", tmp_path, "train")


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickles can run code",))


def test_cifar_refuses_pickles_that_name_other_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(), b"labels": []}, f)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch.*builtins.print"):
        image_data.load_split("cifar10", tmp_path, "test")


# --------------------------------------------------------------------------- image folders


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_classes_crop_and_channels(tmp_path):
    rng = np.random.default_rng(2)
    wide = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)  # H=8, W=12: crop keeps columns 2..9
    square = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save_png(tmp_path / "dog" / "a.png", square)
    save_png(tmp_path / "cat" / "deep" / "b.png", wide)  # recursion inside a class folder
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    images, labels = image_data.load_split("folder", tmp_path, "train", image_size=8)
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]  # cat < dog
    np.testing.assert_array_equal(images[0].permute(1, 2, 0).numpy(), wide[:, 2:10])
    np.testing.assert_array_equal(images[1].permute(1, 2, 0).numpy(), square)
    grey, _ = image_data.load_split("folder", tmp_path, "train", image_size=8, num_channels=1)
    pil_grey = np.asarray(Image.fromarray(square).convert("L"))
    np.testing.assert_array_equal(grey[1, 0].numpy(), pil_grey)


def test_folder_resize_of_flat_colour_and_jpeg(tmp_path):
    save_png(tmp_path / "flat.png", np.full((20, 30, 3), (10, 200, 90), np.uint8))
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "grey.JPG", quality=95)
    images, labels = image_data.load_split("folder", tmp_path, "train", image_size=6)
    assert images.shape == (2, 3, 6, 6) and labels.tolist() == [0, 0]  # images at the top: no classes
    assert (images[0] == torch.tensor([10, 200, 90], dtype=torch.uint8).view(3, 1, 1)).all()
    assert (images[1].int() - 128).abs().max() <= 2  # JPEG is lossy


def test_folder_split_subfolder_and_errors(tmp_path):
    save_png(tmp_path / "train" / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "test" / "b.png", np.full((4, 4), 7, np.uint8))
    images, _ = image_data.load_split("folder", tmp_path, "test", image_size=4, num_channels=1)
    assert images.shape == (1, 1, 4, 4) and int(images.max()) == 7
    with pytest.raises(ValueError, match="image_size is required"):
        image_data.load_split("folder", tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "test")):
        image_data.load_split("folder", tmp_path / "train", "test", image_size=4)
    (tmp_path / "train").rename(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="split 'train' needs the sub-folder"):
        image_data.load_split("folder", tmp_path, "train", image_size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .png/.jpg/.jpeg files under .*empty"):
        image_data.load_split("folder", tmp_path / "empty", "train", image_size=4)


def test_num_channels_validated_first(tmp_path):
    with pytest.raises(ValueError, match="num_channels=5: allowed 1, 3 or None"):
        image_data.load_split("folder", tmp_path, "train", image_size=4, num_channels=5)


# --------------------------------------------------------------------------- batches


def numbered(n, width=6):
    """Images whose first pixel is their index and whose rows are not mirror-symmetric."""
    images = torch.arange(width, dtype=torch.uint8).repeat(n, 1, width, 1)  # [n, 1, W, W]
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8) + 100
    return images, torch.arange(n)


def test_batches_reproducible_and_cover_each_epoch():
    images, labels = numbered(23)
    stream = lambda seed: list(image_data.iterate_batches(images, labels, 5, seed=seed,
                                                          num_epochs=2))
    first, again, other = stream(3), stream(3), stream(4)
    assert [len(b[1]) for b in first] == [5, 5, 5, 5, 3] * 2
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    for epoch in (first[:5], first[5:]):
        assert sorted(torch.cat([b[1] for b in epoch]).tolist()) == list(range(23))
    assert not torch.equal(torch.cat([b[1] for b in first[:5]]), torch.cat([b[1] for b in first[5:]]))
    for x, y in first:  # without flips the images travel with their labels untouched
        assert torch.equal(x, images[y])


def test_drop_last_unshuffled_and_endless():
    images, labels = numbered(7)
    batches = list(image_data.iterate_batches(images, labels, 3, shuffle=False, drop_last=True))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]
    endless = image_data.iterate_batches(images, labels, 7, num_epochs=None)
    assert len(list(itertools.islice(endless, 5))) == 5
    with pytest.raises(ValueError, match="batch_size=8 with 7 samples"):
        next(image_data.iterate_batches(images, labels, 8, drop_last=True))


def test_random_flip_mirrors_about_half_only_when_asked():
    images, labels = numbered(200)
    flipped = 0
    for x, y in image_data.iterate_batches(images, labels, 50, seed=0, random_flip=True):
        for sample, index in zip(x, y):
            original = images[index]
            if torch.equal(sample, original):
                continue
            # a flip mirrors the last axis (left-right) and nothing else
            assert torch.equal(sample, original.flip(-1))
            flipped += 1
    assert 70 <= flipped <= 130  # Binomial(200, 1/2): mean 100, std 7


# --------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("centered, low, high", [(True, -1.0, 1.0), (False, 0.0, 1.0)])
def test_scaler_range_and_round_trip(centered, low, high):
    y = image_data.to_unit_interval(torch.arange(256, dtype=torch.uint8))
    x = image_data.get_scaler(centered)(y)
    assert float(x[0]) == low and float(x[-1]) == high
    back = image_data.get_inverse_scaler(centered)(x)
    torch.testing.assert_close(back, y, rtol=0, atol=1e-7)
    assert torch.equal(image_data.to_uint8(back), torch.arange(256, dtype=torch.uint8))


def test_dequantize_in_half_open_bins():
    levels = torch.arange(256, dtype=torch.uint8).repeat(200)
    y = image_data.dequantize(levels, torch.Generator().manual_seed(0))
    k = levels.double()
    assert bool((y.double() >= k / 256).all()) and bool((y.double() < (k + 1) / 256).all())
    assert abs(float((y.double() * 256 - k).mean()) - 0.5) < 0.01  # u ~ U[0, 1): mean 1/2
    again = image_data.dequantize(levels, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_dequantize_stays_below_the_next_level_when_u_rounds_up():
    # (255 + (1 - 2^-24)) / 256 is exactly 1.0 in float32: the bin's upper edge.
    levels = torch.tensor([255, 3], dtype=torch.uint8)
    u = torch.full((2,), 1 - 2.0 ** -24)
    y = image_data.dequantize(levels, noise=u)
    assert float(y[0]) < 1.0 and float(y[1]) < 4 / 256
    assert float(y[0]) > 1.0 - 1e-6
