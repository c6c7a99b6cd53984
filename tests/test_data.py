"""The data layer on generated files in each real layout: loaders, errors, splits."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import (INTEL_CLASSES, class_value, label_of, make_cifar10,
                      make_fashion_mnist, write_idx)
from fkt.data import DATASETS, aptos, cifar10, fashion_mnist, imagefolder, intel_image, load_dataset
from fkt.data.base import ImageSet
from fkt.data.splits import load_splits, make_splits, save_splits, stratified_holdout, stratified_subset
from fkt.errors import UserError


def assert_labels_match_images(images: ImageSet, labels: list[int], num_classes: int) -> None:
    """Labels as expected, and each image's colour says the same class (so label and file pair up)."""
    assert images.targets.tolist() == labels
    for i in range(len(images)):
        img = images.image(i)
        assert isinstance(img, Image.Image) and img.mode == "RGB", (i, img.mode)
        assert label_of(img, num_classes) == images.targets[i], i


def assert_colour(img: Image.Image, label: int, num_classes: int, grey: bool = False, tol: int = 4) -> None:
    """The flat colour the generator used: (v, 255-v, 128), or (v, v, v) for a grey source."""
    v = class_value(label, num_classes)
    want = np.array([v, v, v] if grey else [v, 255 - v, 128], dtype=float)
    got = np.asarray(img, dtype=float).reshape(-1, 3).mean(axis=0)
    assert np.abs(got - want).max() <= tol, (got, want)


# ============================================================================ Fashion-MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_generated_idx_round_trip(tmp_path, gz):
    gen = make_fashion_mnist(tmp_path, num_classes=4, train_per_class=[3, 1, 2, 5], test_per_class=2,
                             image_size=12, gz=gz)
    bundle = fashion_mnist.load(tmp_path)
    assert bundle.name == "fashion-mnist"
    assert bundle.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                              "Sneaker", "Bag", "Ankle boot"]
    assert Path(bundle.source) == tmp_path
    assert (len(bundle.train), len(bundle.test)) == (11, 8)
    assert np.bincount(bundle.train.targets).tolist() == [3, 1, 2, 5]
    np.testing.assert_array_equal(bundle.train.pixels, gen.train_pixels)  # same order, same bytes
    np.testing.assert_array_equal(bundle.test.pixels, gen.test_pixels)
    assert bundle.train.pixels.shape == (11, 12, 12) and bundle.train.pixels.dtype == np.uint8
    assert_labels_match_images(bundle.train, gen.train_labels, 4)
    assert_labels_match_images(bundle.test, gen.test_labels, 4)
    img = bundle.train.image(3)
    assert img.size == (12, 12)
    # grey -> RGB with equal channels, row 0 is the ramp starting at the image's index
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert arr[0, :3, 0].tolist() == [3, 8, 13]


def test_fashion_mnist_torchvision_raw_layout(tmp_path):
    """torchvision's download layout (`FashionMNIST/raw/`) is found under the root as well."""
    gen = make_fashion_mnist(tmp_path / "FashionMNIST" / "raw", num_classes=2, train_per_class=2, test_per_class=1)
    bundle = load_dataset("fashion-mnist", tmp_path)
    assert bundle.train.targets.tolist() == gen.train_labels
    assert Path(bundle.source) == tmp_path


def test_fashion_mnist_via_load_dataset_uses_given_root_not_system_copy(fashion_mnist_data):
    bundle = load_dataset("fashion-mnist", fashion_mnist_data.root)
    assert len(bundle.train) == 30 and len(bundle.test) == 20
    assert Path(bundle.source) == fashion_mnist_data.root


def test_fashion_mnist_incomplete_copy_is_an_error(fashion_mnist_data):
    (fashion_mnist_data.root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"incomplete Fashion-MNIST copy.*t10k-labels-idx1-ubyte") as err:
        fashion_mnist.load(fashion_mnist_data.root)
    assert str(fashion_mnist_data.root) in str(err.value)


def test_fashion_mnist_truncated_and_wrong_magic_files_are_named(tmp_path):
    make_fashion_mnist(tmp_path, num_classes=2, train_per_class=2, test_per_class=1, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(UserError, match="truncated IDX") as err:
        fashion_mnist.load(tmp_path)
    assert str(images) in str(err.value)
    images.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # 0x0D = float, not unsigned byte
    with pytest.raises(UserError, match="not an unsigned-byte IDX") as err:
        fashion_mnist.load(tmp_path)
    assert str(images) in str(err.value)


def test_fashion_mnist_bad_gzip_is_named(tmp_path):
    make_fashion_mnist(tmp_path, num_classes=2, train_per_class=2, test_per_class=1)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(UserError, match="cannot read IDX") as err:
        fashion_mnist.load(tmp_path)
    assert str(bad) in str(err.value)


def test_fashion_mnist_image_label_count_mismatch(tmp_path):
    make_fashion_mnist(tmp_path, num_classes=2, train_per_class=2, test_per_class=1)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(UserError, match="train has 4 images but 3 labels"):
        fashion_mnist.load(tmp_path)


def test_write_idx_header_is_the_real_format(tmp_path):
    """The generator itself: magic 0x00000803 / 0x00000801 and big-endian dims, gzipped."""
    gen = make_fashion_mnist(tmp_path, num_classes=2, train_per_class=2, test_per_class=1, image_size=5)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "rb") as handle:
        head = handle.read(16)
    assert head == bytes.fromhex("00000803" "00000004" "00000005" "00000005")
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        data = handle.read()
    assert data[:8] == bytes.fromhex("00000801" "00000002") and list(data[8:]) == gen.test_labels


@pytest.mark.skipif(not fashion_mnist.SYSTEM_ROOT.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_copy_loads_with_no_root():
    bundle = load_dataset("fashion-mnist", None)
    assert Path(bundle.source) == fashion_mnist.SYSTEM_ROOT
    assert bundle.train.pixels.shape == (60000, 28, 28)
    assert bundle.test.pixels.shape == (10000, 28, 28)
    assert np.bincount(bundle.train.targets).tolist() == [6000] * 10
    assert np.bincount(bundle.test.targets).tolist() == [1000] * 10
    assert bundle.test.image(0).mode == "RGB" and bundle.test.image(0).size == (28, 28)
    assert 0 < bundle.train.pixels[:100].mean() < 255


# ============================================================================ CIFAR-10

def test_cifar10_loads_generated_batches(cifar10_data):
    gen = cifar10_data
    bundle = cifar10.load(gen.root)
    assert bundle.name == "cifar10"
    assert bundle.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                              "truck"]
    assert (len(bundle.train), len(bundle.test)) == (30, 20)
    assert bundle.train.pixels.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(bundle.train.pixels, gen.train_pixels)  # batches 1..5 in order
    np.testing.assert_array_equal(bundle.test.pixels, gen.test_pixels)
    assert_labels_match_images(bundle.train, gen.train_labels, 10)
    assert_labels_match_images(bundle.test, gen.test_labels, 10)


def test_cifar10_known_pixel_keeps_channel_order_and_orientation(tmp_path):
    """Write raw bytes by hand: R plane, G plane, B plane, each row-major. Pixel (x=5, y=7) of image 1
    must come back as (R, G, B) = (11, 22, 33), not transposed and not BGR."""
    gen = make_cifar10(tmp_path, num_classes=2, train_per_class=3, test_per_class=1)
    folder = tmp_path / "cifar-10-batches-py"
    data = np.zeros((2, 3072), dtype=np.uint8)
    row, col = 7, 5
    for channel, value in enumerate((11, 22, 33)):
        data[1, channel * 1024 + row * 32 + col] = value
    data[1, 0] = 200  # R of the top-left pixel
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": data, "labels": [0, 1]}, handle)
    bundle = cifar10.load(folder)  # the batches folder itself is accepted as the root
    img = bundle.test.image(1)
    assert img.getpixel((col, row)) == (11, 22, 33)
    assert img.getpixel((row, col)) == (0, 0, 0)
    assert img.getpixel((0, 0)) == (200, 0, 0)
    assert bundle.test.targets.tolist() == [0, 1]
    # generated images: B[y, x] = (7y + 3x + i) % 256 survives too
    train_img = bundle.train.image(4)
    v = class_value(gen.train_labels[4], 2)
    assert train_img.getpixel((col, row)) == (v, 255 - v, (7 * row + 3 * col + 4) % 256)


def test_cifar10_fewer_classes_from_meta(make_dataset):
    gen = make_dataset("cifar10", num_classes=3, train_per_class=[5, 1, 4], test_per_class=1)
    bundle = load_dataset("cifar10", gen.root)
    assert bundle.classes == ["airplane", "automobile", "bird"]
    assert np.bincount(bundle.train.targets).tolist() == [5, 1, 4]
    assert_labels_match_images(bundle.train, gen.train_labels, 3)


def test_cifar10_missing_batch_is_named(cifar10_data):
    folder = cifar10_data.root / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing data_batch_3") as err:
        load_dataset("cifar10", cifar10_data.root)
    assert str(folder) in str(err.value)


def test_cifar10_corrupt_batch_is_named(cifar10_data):
    bad = cifar10_data.root / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(b"garbage, not a pickle")
    with pytest.raises(UserError, match="not a CIFAR-10 batch") as err:
        cifar10.load(cifar10_data.root)
    assert str(bad) in str(err.value)


def test_cifar10_root_without_layout(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py: missing data_batch_1"):
        cifar10.load(tmp_path)
    with pytest.raises(UserError, match="--data-root is required"):
        load_dataset("cifar10", None)


# ============================================================================ Intel Image

def test_intel_image_kaggle_layout(make_dataset):
    gen = make_dataset("intel-image", train_per_class=[3, 2, 4, 1, 2, 3], test_per_class=2, odd_every=2)
    bundle = load_dataset("intel-image", gen.root)
    assert bundle.name == "intel-image" and bundle.test is not None and not bundle.ordinal
    assert bundle.classes == INTEL_CLASSES
    assert np.bincount(bundle.train.targets).tolist() == [3, 2, 4, 1, 2, 3]
    assert np.bincount(bundle.test.targets).tolist() == [2] * 6
    assert bundle.train.files == gen.train_files and bundle.test.files == gen.test_files
    assert all(f.parent.parent == gen.root / "seg_train" / "seg_train" for f in bundle.train.files)
    assert all(f.parent.name == INTEL_CLASSES[t] for f, t in zip(bundle.train.files, bundle.train.targets))
    assert_labels_match_images(bundle.train, gen.train_labels, 6)
    assert_labels_match_images(bundle.test, gen.test_labels, 6)
    sizes = {bundle.train.image(i).size for i in range(len(bundle.train))}
    assert (150, 150) in sizes and len(sizes) > 1  # the odd ones keep their own size
    for i, path in enumerate(bundle.train.files):
        assert bundle.train.image(i).size == gen.sizes[str(path)]
    assert_colour(bundle.train.image(0), gen.train_labels[0], 6)


def test_intel_image_flattened_layout(make_dataset):
    gen = make_dataset("intel-image", classes=["forest", "sea"], train_per_class=2, test_per_class=1,
                       image_size=20, nested=False, with_pred=False)
    bundle = intel_image.load(gen.root)
    assert bundle.classes == ["forest", "sea"]
    assert bundle.train.targets.tolist() == [0, 0, 1, 1]


def test_intel_image_test_classes_must_match_train(intel_image_data):
    test_dir = intel_image_data.root / "seg_test" / "seg_test"
    (test_dir / "street").rename(test_dir / "streets")
    with pytest.raises(UserError, match="differ from the training classes") as err:
        load_dataset("intel-image", intel_image_data.root)
    assert str(test_dir) in str(err.value) and "streets" in str(err.value)


def test_intel_image_missing_test_folder_is_named(intel_image_data):
    import shutil

    shutil.rmtree(intel_image_data.root / "seg_test")
    with pytest.raises(UserError, match="seg_test folder not found") as err:
        intel_image.load(intel_image_data.root)
    assert str(intel_image_data.root / "seg_test") in str(err.value)


# ============================================================================ APTOS 2019

def test_aptos_loads_csv_and_images(make_dataset):
    gen = make_dataset("aptos2019", images_per_class=[4, 2, 3, 1, 2])
    bundle = load_dataset("aptos2019", gen.root)
    assert bundle.name == "aptos2019"
    assert bundle.test is None and bundle.ordinal is True
    assert bundle.classes == aptos.CLASSES and len(bundle.classes) == 5
    assert bundle.train.targets.tolist() == gen.train_labels  # CSV order (shuffled, not sorted)
    assert gen.train_labels != sorted(gen.train_labels)
    assert np.bincount(bundle.train.targets).tolist() == [4, 2, 3, 1, 2]
    assert bundle.train.files == gen.train_files
    assert_labels_match_images(bundle.train, gen.train_labels, 5)
    sizes = [bundle.train.image(i).size for i in range(len(bundle.train))]
    assert sizes == [gen.sizes[str(p)] for p in gen.train_files] and len(set(sizes)) > 1


def test_aptos_csv_with_bom(make_dataset):
    gen = make_dataset("aptos2019", images_per_class=1, bom=True)
    assert (gen.root / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert aptos.load(gen.root).train.targets.tolist() == gen.train_labels


def test_aptos_missing_column_is_named(aptos_data):
    csv_path = aptos_data.root / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("diagnosis", "level", 1))
    with pytest.raises(UserError, match=r"missing column\(s\) \['diagnosis'\]") as err:
        aptos.load(aptos_data.root)
    assert str(csv_path) in str(err.value)


def test_aptos_label_outside_range(aptos_data):
    csv_path = aptos_data.root / "train.csv"
    lines = csv_path.read_text().splitlines()
    code = lines[3].split(",")[0]
    lines[3] = f"{code},5"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train\.csv:4: diagnosis 5 outside 0-4") as err:
        aptos.load(aptos_data.root)
    assert str(csv_path) in str(err.value)
    lines[3] = f"{code},-1"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train\.csv:4: diagnosis -1 outside 0-4"):
        aptos.load(aptos_data.root)
    lines[3] = f"{code},two"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train\.csv:4: diagnosis 'two' is not an integer"):
        aptos.load(aptos_data.root)


def test_aptos_id_without_image_is_named(aptos_data):
    missing = aptos_data.train_files[2]
    missing.unlink()
    with pytest.raises(UserError, match="listed in train.csv but not found") as err:
        load_dataset("aptos2019", aptos_data.root)
    assert str(missing) in str(err.value)


def test_aptos_missing_csv_and_root(tmp_path):
    with pytest.raises(UserError, match="cannot read") as err:
        aptos.load(tmp_path)
    assert str(tmp_path / "train.csv") in str(err.value)
    with pytest.raises(UserError, match="--data-root is required"):
        load_dataset("aptos2019", None)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n")
    with pytest.raises(UserError, match="no rows"):
        aptos.load(tmp_path)


def test_aptos_binary_csv_is_a_user_error(aptos_data):
    (aptos_data.root / "train.csv").write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(UserError, match="train.csv"):
        aptos.load(aptos_data.root)


# ============================================================================ ImageFolder

def test_imagefolder_with_test(make_dataset):
    gen = make_dataset("imagefolder", num_classes=4, train_per_class=[7, 3, 5, 2], test_per_class=2,
                       image_size=12)
    bundle = load_dataset("imagefolder", gen.root)
    assert bundle.name == "imagefolder" and bundle.notes == []
    assert bundle.classes == ["Apple", "kiwi", "mango", "zebra"]  # sorted by name, case-sensitive
    assert gen.classes == bundle.classes
    assert np.bincount(bundle.train.targets).tolist() == [7, 3, 5, 2]
    assert np.bincount(bundle.test.targets).tolist() == [2, 2, 2, 2]
    assert bundle.train.files == gen.train_files  # README.txt and .DS_Store are not images
    assert all(p.suffix != ".txt" and not p.name.startswith(".") for p in bundle.train.files)
    assert_labels_match_images(bundle.train, gen.train_labels, 4)
    assert_labels_match_images(bundle.test, gen.test_labels, 4)
    for i, path in enumerate(bundle.train.files):
        assert bundle.train.image(i).size == gen.sizes[str(path)]


@pytest.mark.parametrize("mode,ext,grey", [("RGB", ".png", False), ("L", ".png", True), ("P", ".png", False),
                                           ("RGBA", ".png", False), ("LA", ".png", True), ("RGB", ".jpg", False),
                                           ("RGB", ".bmp", False), ("CMYK", ".jpg", False), ("P", ".gif", False)])
def test_imagefolder_every_mode_becomes_rgb(make_dataset, mode, ext, grey):
    gen = make_dataset("imagefolder", num_classes=2, train_per_class=2, test_per_class=None, formats=[(mode, ext)])
    with Image.open(gen.train_files[0]) as raw:
        assert raw.mode == mode  # the file really is grayscale / palette / RGBA / CMYK on disk
    bundle = imagefolder.load(gen.root)
    for i in range(len(bundle.train)):
        img = bundle.train.image(i)
        assert img.mode == "RGB"
        assert_colour(img, gen.train_labels[i], 2, grey=grey, tol=6 if ext == ".jpg" else 0)


def test_imagefolder_without_test_carves_later(imagefolder_no_test_data):
    bundle = load_dataset("imagefolder", imagefolder_no_test_data.root)
    assert bundle.test is None
    assert bundle.notes and "no test/ folder" in bundle.notes[0]
    assert bundle.train.targets.tolist() == imagefolder_no_test_data.train_labels


def test_imagefolder_test_classes_must_match_train(imagefolder_data):
    import shutil

    shutil.rmtree(imagefolder_data.root / "test" / "zebra")
    with pytest.raises(UserError, match="differ from the training classes") as err:
        imagefolder.load(imagefolder_data.root)
    assert str(imagefolder_data.root / "test") in str(err.value)


def test_imagefolder_missing_train_and_empty_trees(tmp_path):
    with pytest.raises(UserError, match="train folder not found") as err:
        imagefolder.load(tmp_path)
    assert str(tmp_path / "train") in str(err.value)
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no class folders in train"):
        imagefolder.load(tmp_path)
    (tmp_path / "train" / "cats").mkdir()
    (tmp_path / "train" / "cats" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images in train"):
        imagefolder.load(tmp_path)


def test_unreadable_image_is_named(imagefolder_no_test_data):
    bad = imagefolder_no_test_data.train_files[1]
    bad.write_bytes(b"not really a png")
    bundle = imagefolder.load(imagefolder_no_test_data.root)
    with pytest.raises(UserError, match="cannot read image") as err:
        bundle.train.image(1)
    assert str(bad) in str(err.value)


# ============================================================================ load_dataset, ImageSet

def test_load_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset; choose from") as err:
        load_dataset("mnist", tmp_path)
    assert all(name in str(err.value) for name in DATASETS)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="no such folder") as err:
        load_dataset("cifar10", missing)
    assert str(missing) in str(err.value)
    with pytest.raises(UserError, match="--data-root is required"):
        load_dataset("imagefolder", None)
    with pytest.raises(UserError, match="--data-root is required"):
        load_dataset("intel-image", None)


def test_load_dataset_accepts_str_root(cifar10_data):
    assert len(load_dataset("cifar10", str(cifar10_data.root)).train) == 30


def test_imageset_subset_and_length_check():
    pixels = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    images = ImageSet(targets=[0, 1, 2, 3], pixels=pixels)
    sub = images.subset(np.array([3, 1]))
    assert sub.targets.tolist() == [3, 1] and sub.targets.dtype == np.int64
    np.testing.assert_array_equal(sub.pixels, pixels[[3, 1]])
    files = ImageSet(targets=[0, 1], files=[Path("a.png"), Path("b.png")]).subset([1])
    assert files.files == [Path("b.png")] and files.targets.tolist() == [1]
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ImageSet(targets=[0, 1, 2], pixels=pixels)


# ============================================================================ splits

def uneven_targets(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(5), [40, 23, 11, 7, 2])
    rng.shuffle(targets)
    return targets


def assert_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())), "overlap"
    assert sorted(joined.tolist()) == list(range(n)), "not all covered"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_stratified_holdout_partition_and_proportions(fraction):
    targets = uneven_targets()
    kept, held = stratified_holdout(targets, fraction, seed=3)
    assert_partition([kept, held], len(targets))
    assert (np.diff(kept) > 0).all() and (np.diff(held) > 0).all()  # sorted
    counts = np.bincount(targets)
    held_counts = np.bincount(targets[held], minlength=5)
    for c, (n_c, h_c) in enumerate(zip(counts, held_counts)):
        assert 1 <= h_c <= n_c - 1, c  # every class with 2+ members on both sides
        assert abs(h_c - fraction * n_c) <= 1, (c, h_c, fraction * n_c)


def test_stratified_holdout_is_deterministic_per_seed():
    targets = uneven_targets()
    a = stratified_holdout(targets, 0.2, seed=7)
    b = stratified_holdout(targets.copy(), 0.2, seed=7)
    c = stratified_holdout(targets, 0.2, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_stratified_holdout_singleton_class_stays_kept():
    targets = np.array([0, 0, 0, 0, 1, 2, 2])
    kept, held = stratified_holdout(targets, 0.5, seed=0)
    assert 4 in kept and 4 not in held
    assert_partition([kept, held], 7)


@pytest.mark.parametrize("size", [1, 5, 9, 10, 17, 50, 82])
def test_stratified_subset_has_exact_size_and_proportions(size):
    targets = uneven_targets()  # 83 images in classes of 40, 23, 11, 7, 2
    subset = stratified_subset(targets, size, seed=1)
    assert len(subset) == size and len(set(subset.tolist())) == size
    assert subset.min() >= 0 and subset.max() < len(targets)
    got = np.bincount(targets[subset], minlength=5)
    want = size * np.bincount(targets) / len(targets)
    if size >= 5:
        assert (got >= 1).all()  # every class represented where the size allows
        assert np.abs(got - want).max() < 2
    else:
        assert np.abs(got - want).max() <= 1
    np.testing.assert_array_equal(subset, stratified_subset(targets, size, seed=1))


def test_stratified_subset_larger_than_set_is_everything():
    targets = uneven_targets()
    np.testing.assert_array_equal(stratified_subset(targets, 83, 0), np.arange(83))
    np.testing.assert_array_equal(stratified_subset(targets, 1000, 0), np.arange(83))


def test_make_splits_without_test_carves_a_disjoint_test():
    targets = uneven_targets()
    splits = make_splits(targets, has_test=False, val_fraction=0.1, test_fraction=0.2, limit_train=None, seed=0)
    assert set(splits) == {"train", "val", "test"}
    parts = [np.array(splits[k]) for k in ("train", "val", "test")]
    assert_partition(parts, len(targets))
    for part in parts:  # every class with 3+ images in every split (class 4 has only 2)
        assert set(targets[part].tolist()) >= {0, 1, 2, 3}
    assert 4 in targets[parts[0]]  # a class too small to split stays in train
    test_counts = np.bincount(targets[parts[2]], minlength=5)
    assert np.abs(test_counts - 0.2 * np.bincount(targets)).max() <= 1
    assert all(isinstance(i, int) for i in splits["train"])  # JSON-ready


def test_make_splits_with_test_uses_every_training_image():
    targets = uneven_targets()
    splits = make_splits(targets, has_test=True, val_fraction=0.25, test_fraction=0.2, limit_train=None, seed=0)
    assert set(splits) == {"train", "val"}
    assert_partition([np.array(splits["train"]), np.array(splits["val"])], len(targets))


@pytest.mark.parametrize("has_test", [True, False])
def test_make_splits_limit_train(has_test):
    targets = uneven_targets()
    full = make_splits(targets, has_test, 0.1, 0.2, None, seed=4)
    limited = make_splits(targets, has_test, 0.1, 0.2, 20, seed=4)
    assert len(limited["train"]) == 20
    assert set(limited["train"]) <= set(full["train"])
    assert limited["val"] == full["val"] and limited.get("test") == full.get("test")  # eval splits unchanged
    got = np.bincount(targets[limited["train"]], minlength=5)
    want = 20 * np.bincount(targets[full["train"]], minlength=5) / len(full["train"])
    assert np.abs(got - want).max() < 1 + 1e-9 and (got >= 1).all()
    assert len(make_splits(targets, has_test, 0.1, 0.2, 10_000, seed=4)["train"]) == len(full["train"])


def test_make_splits_depends_only_on_its_seed():
    targets = uneven_targets()
    a = make_splits(targets, False, 0.1, 0.2, 30, seed=5)
    b = make_splits(targets.copy(), False, 0.1, 0.2, 30, seed=5)
    c = make_splits(targets, False, 0.1, 0.2, 30, seed=6)
    assert a == b
    assert a["test"] != c["test"] and a["val"] != c["val"]


def test_make_splits_val_fraction_too_small_is_user_error():
    targets = np.arange(4)  # four singleton classes: nothing can be held out
    with pytest.raises(UserError, match="data.val_fraction=0.1: leaves no validation images"):
        make_splits(targets, True, 0.1, 0.2, None, seed=0)


def test_save_and_load_splits_round_trip(tmp_path):
    splits = make_splits(uneven_targets(), False, 0.1, 0.2, None, seed=0)
    path = tmp_path / "splits.json"
    save_splits(path, splits, {"dataset": "x", "split_seed": 0})
    assert load_splits(path) == splits
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a readable split file") as err:
        load_splits(path)
    assert str(path) in str(err.value)


def test_data_module_split_ignores_training_seed(make_dataset, tmp_path):
    """Through the data module: the split follows data.split_seed and not the training seed."""
    from fkt.config import build_config
    from fkt.data.module import FKTDataModule

    gen = make_dataset("imagefolder", num_classes=3, train_per_class=[12, 8, 6], test_per_class=None,
                       image_size=8, formats=[("RGB", ".png")])

    def split(seed: int, split_seed: int) -> dict[str, list[int]]:
        config = build_config({"seed": seed, "data": {"dataset": "imagefolder", "root": str(gen.root),
                                                      "split_seed": split_seed, "batch_size": 2,
                                                      "image_size": 8, "num_workers": 0}})
        path = tmp_path / f"split_{seed}_{split_seed}.json"
        module = FKTDataModule(config, split_file=path)
        module.setup()
        assert len(module.sets["train"]) + len(module.sets["val"]) + len(module.sets["test"]) == 26
        image, label = module.sets["val"][0]
        assert tuple(image.shape) == (3, 8, 8) and label_of(image.permute(1, 2, 0).numpy(), 3) == label
        return load_splits(path)

    assert split(0, 0) == split(1, 0) == split(2, 0)
    assert split(0, 0) != split(0, 1)


def test_fashion_mnist_missing_everywhere_without_internet_says_which_package(tmp_path, monkeypatch):
    """Neither the root nor the Debian folder has the files and the download fails: one clear error."""
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(fashion_mnist, "SYSTEM_ROOT", tmp_path / "no-system-copy")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(empty)
