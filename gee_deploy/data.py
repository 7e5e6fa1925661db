"""Datasets: Fashion-MNIST (IDX), its embedded subset, CIFAR-10/100 (the python batches, read by a
restricted unpickler, or the binary batches),
ImageNet (ImageFolder) and a synthetic set for tests. Nothing is downloaded.

Every dataset yields (image float32 [C, H, W] in [0, 1], label int64); normalisation lives in the model,
so the ONNX graph takes raw [0, 1] pixels. Augmentation (training split only): random crop with zero
padding and horizontal flip for the small-image sets, random resized crop + flip for ImageNet.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import DataError, reason

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = [
    "DatasetInfo",
    "ImageDataset",
    "dataset_info",
    "list_datasets",
    "load_split",
    "load_test_arrays",
    "make_loader",
    "FMNIST_DIR",
    "MINI_PATH",
    "build_mini",
]

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MINI_PATH = Path(__file__).parent / "assets" / "fashion_mnist_mini.npz"

FMNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # random-crop padding for augmentation; 0 = no crop
    flip: bool = True
    classes: list[str] = field(default_factory=list, compare=False)


_INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), 2, True, FMNIST_CLASSES),
    "fashion-mnist-mini": DatasetInfo("fashion-mnist-mini", 10, 1, 28, (0.2860,), (0.3530,), 2, True, FMNIST_CLASSES),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, CIFAR10_CLASSES
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        4,
        True,
        [str(i) for i in range(100)],
    ),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True, []),
    "synthetic": DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.5,), 0, False, [f"class{i}" for i in range(10)]),
}


def list_datasets() -> list[str]:
    return sorted(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _INFO:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _INFO[name]


class InMemoryImages(Dataset):
    """uint8 images [N, C, H, W] + int64 labels held in memory, with optional crop/flip augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, crop_padding: int = 0, flip: bool = False):
        if images.dim() != 4 or images.dtype != torch.uint8 or len(images) != len(labels):
            raise DataError(f"malformed image array {tuple(images.shape)} {images.dtype} / {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.crop_padding = crop_padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255.0)  # [C, H, W]
        p = self.crop_padding
        if p:
            h, w = x.shape[1:]
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = torch.nn.functional.pad(x, (p, p, p, p))[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


# What load_split returns: a map-style dataset with a length, as its three kinds are (torch's Dataset type
# declares no __len__, so len() of a plain Dataset does not type-check).
ImageDataset: TypeAlias = "InMemoryImages | ImageFolder | Subset[tuple[torch.Tensor, int]]"


# ---- Fashion-MNIST (IDX) --------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {dims}")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{stem}[.gz] not found in {directory}")


def _fmnist_arrays(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return images, labels


def build_mini(
    source: Path = FMNIST_DIR, out: Path = MINI_PATH, train: int = 4000, test: int = 1000, seed: int = 0
) -> Path:
    """Write the embedded subset: class-balanced random picks from the real Fashion-MNIST files."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        images, labels = _fmnist_arrays(Path(source), split)
        picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), n // 10, replace=False) for c in range(10)])
        picks.sort()
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[picks], labels[picks]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


# ---- CIFAR: the python batches (a restricted unpickler) or the binary batches ----------------------------


def _reducer(reduced: str | tuple[object, ...]) -> Callable[..., object]:
    """The callable that rebuilds an object, from its ``__reduce__`` value (numpy's arrays and scalars give a
    tuple, whose first item it is, never the name of a global)."""
    assert isinstance(reduced, tuple), f"not a numpy reduction: {reduced!r}"
    rebuild = reduced[0]
    assert callable(rebuild), f"not a numpy reduction: {reduced!r}"
    return rebuild


_RECORD_ARRAY = np.zeros(1, np.uint8)
# The only callables a CIFAR python batch (a dict of lists, strings and one uint8 array) references, as numpy
# and pickle write them: the array's constructor under protocols 0-4 and 5, its dtype, a numpy scalar
# (labels written as numpy integers) and _codecs.encode (bytes under protocol 2). Resolved from the objects
# themselves, so numpy 1's numpy.core and numpy 2's numpy._core both map to them.
_CIFAR_GLOBALS = {
    (f.__module__.replace("numpy._core", "numpy.core"), f.__name__): f
    for f in map(_reducer, (_RECORD_ARRAY.__reduce__(), _RECORD_ARRAY.__reduce_ex__(5), np.uint8(0).__reduce__()))
}
_CIFAR_GLOBALS.update(
    {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR python batch holds; any other global is refused before it is looked up, so
    a file whose ``__reduce__`` would run code is never run (Python's pickle docs, "Restricting Globals")."""

    def find_class(self, module: str, name: str):
        found = _CIFAR_GLOBALS.get((module.replace("numpy._core", "numpy.core"), name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it asks for {module}.{name}, which a CIFAR batch never holds (a file made to run code?)"
            )
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent reference, which a CIFAR batch never does")


# (python folder, its batch files, label key), (binary folder, its files, label bytes before the pixels,
# the label's index among them): the layouts of https://www.cs.toronto.edu/~kriz/cifar.html
_CIFAR_LAYOUTS = {
    "cifar10": (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0),
    ),
    "cifar100": (
        ("cifar-100-python", ["train"], ["test"], "fine_labels"),
        ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1),
    ),
}
_CIFAR_PIXELS = 3 * 32 * 32


def _cifar_python(path: Path, name: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
        if isinstance(entry, dict):
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        return (
            np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
            np.asarray(entry[key], dtype=np.int64),
        )
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path} is not a {name} batch: refused to unpickle it, {e}; the binary CIFAR batches need no unpickling"
        ) from None
    except (EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a {name} batch: {reason(e)}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _cifar_binary(path: Path, name: str, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes then 3072 pixel bytes (R, G, B planes of 32 x 32)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    record = label_bytes + _CIFAR_PIXELS
    if data.size == 0 or data.size % record:
        raise DataError(
            f"{path} is not a {name} binary batch: {data.size} bytes is not a whole number of {record}-byte records"
        )
    rows = data.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_index].astype(np.int64)


def _cifar_arrays(directory: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split from ``directory``'s python batches when they are there, else from its binary batches."""
    (py_dir, py_train, py_test, key), (bin_dir, bin_train, bin_test, label_bytes, label_index) = _CIFAR_LAYOUTS[name]
    if (directory / py_dir).is_dir():
        python = True
        paths = [directory / py_dir / f for f in (py_train if split == "train" else py_test)]
    elif (directory / bin_dir).is_dir():
        python = False
        paths = [directory / bin_dir / f for f in (bin_train if split == "train" else bin_test)]
    else:
        raise DataError(f"neither {py_dir}/ nor {bin_dir}/ found in {directory} (the python or binary {name} batches)")
    missing = next((p for p in paths if not p.exists()), None)
    if missing is not None:
        raise DataError(f"{missing} not found (expected {name}'s {missing.parent.name} layout under {directory})")
    images, labels = zip(
        *(_cifar_python(p, name, key) if python else _cifar_binary(p, name, label_bytes, label_index) for p in paths)
    )
    return np.concatenate(images), np.concatenate(labels)


# ---- synthetic ------------------------------------------------------------------------------------------


def _synthetic_arrays(split: str, n: int = 512, size: int = 28, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright bar at row band k plus noise: learnable in a few steps, deterministic per split."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, channels, size, size)).astype(np.uint8)
    band = size // 10
    for i, k in enumerate(labels):
        images[i, :, k * band : (k + 1) * band, :] = 220
    return images, labels


# ---- public ---------------------------------------------------------------------------------------------


def _data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        d = Path(data_dir)
    elif os.environ.get("GEE_DATA_DIR"):
        d = Path(os.environ["GEE_DATA_DIR"])
    elif name == "fashion-mnist":
        d = FMNIST_DIR
    else:
        raise DataError(
            f"dataset {name!r} needs a local copy: --data-dir DIR (export, bench, robustness), "
            f"data.data_dir in the recipe (train: --set data.data_dir=DIR), or $GEE_DATA_DIR"
        )
    if not d.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise DataError(f"data directory {d} does not exist{hint}")
    return d


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    augment: bool = False,
    limit: int | None = None,
    crop_padding: int = -1,
) -> ImageDataset:
    """The ``split`` ('train' or 'test') of dataset ``name``; ``limit`` keeps the first N samples.

    ``augment`` draws a random crop (zero padding ``crop_padding``, -1 = the dataset's own, 0 = no crop) and a horizontal flip per image and epoch.
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if name == "imagenet":
        return _imagenet(_data_dir(name, data_dir), split, augment, limit)
    if name == "fashion-mnist":
        images, labels = _fmnist_arrays(_data_dir(name, data_dir), split)
    elif name == "fashion-mnist-mini":
        if not MINI_PATH.exists():
            raise DataError(f"embedded subset {MINI_PATH} is missing from this installation")
        with np.load(MINI_PATH) as z:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    elif name in ("cifar10", "cifar100"):
        images, labels = _cifar_arrays(_data_dir(name, data_dir), name, split)
    else:
        images, labels = _synthetic_arrays(split)
    if images.ndim == 3:
        images = images[:, None]  # [N, 1, H, W]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return InMemoryImages(
        torch.from_numpy(np.array(images, order="C")),
        torch.from_numpy(labels.astype(np.int64)),
        (info.crop_padding if crop_padding < 0 else crop_padding) if augment else 0,
        info.flip and augment,
    )


def load_test_arrays(
    name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The test split of ``name`` as (images float32 [N, C, H, W] in [0, 1], labels int64 [N])."""
    ds = load_split(name, "test", data_dir=data_dir, limit=limit)
    if len(ds) == 0:
        raise DataError(f"the test split of {name} is empty")
    xs, ys = zip(*DataLoader(ds, batch_size=512, shuffle=False))
    return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()


def _imagenet(directory: Path, split: str, augment: bool, limit: int | None) -> ImageFolder | Subset:
    from torchvision import datasets, transforms

    sub = directory / ("train" if split == "train" else "val")
    if not sub.is_dir():
        raise DataError(f"{sub} not found (expected ImageFolder layout: {directory}/train/<class>/*.JPEG)")
    if augment:
        tf = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    ds = datasets.ImageFolder(str(sub), transform=tf)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return ds


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    sampler=None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (the trainer passes seed + epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )
