"""Loaders read the real on-disk formats (written here in miniature); nothing is downloaded."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from gee_deploy.data import FMNIST_DIR, dataset_info, load_split
from gee_deploy.errors import DataError


def write_idx(path, array: np.ndarray, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), compress=False)
    return tmp_path


def test_fashion_mnist_idx(fmnist_dir):
    train = load_split("fashion-mnist", "train", fmnist_dir)
    test = load_split("fashion-mnist", "test", fmnist_dir, limit=3)
    assert len(train) == 12 and len(test) == 3
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    raw = np.frombuffer(gzip.open(fmnist_dir / "train-images-idx3-ubyte.gz").read()[16:16 + 784], np.uint8)
    torch.testing.assert_close(x.flatten(), torch.from_numpy(raw.astype(np.float32)) / 255)


def test_truncated_idx_is_a_data_error(fmnist_dir):
    path = fmnist_dir / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        load_split("fashion-mnist", "train", fmnist_dir)


def test_data_dir_from_environment(fmnist_dir, monkeypatch):
    monkeypatch.setenv("GEE_DATA_DIR", str(fmnist_dir))
    assert len(load_split("fashion-mnist", "test")) == 5


def test_missing_directory_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split("fashion-mnist", "train", tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("mnist-but-not", "train")
    with pytest.raises(DataError, match="needs a local copy: --data-dir DIR"):
        load_split("cifar10", "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path, name):
    rng = np.random.default_rng(1)
    if name == "cifar10":
        base = tmp_path / "cifar-10-batches-py"
        base.mkdir()
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        base = tmp_path / "cifar-100-python"
        base.mkdir()
        files, key = ["train", "test"], "fine_labels"
    for f in files:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: list(rng.integers(0, 10, 4))}
        with open(base / f, "wb") as fh:
            pickle.dump(entry, fh)
    train = load_split(name, "train", tmp_path, augment=True)
    test = load_split(name, "test", tmp_path)
    assert len(train) == (20 if name == "cifar10" else 4) and len(test) == 4
    x, _ = test[0]
    assert x.shape == (3, 32, 32)
    with open(base / files[-1], "rb") as fh:
        first = pickle.load(fh)["data"][0].reshape(3, 32, 32)
    torch.testing.assert_close(x, torch.from_numpy(first.astype(np.float32)) / 255)
    assert dataset_info(name).num_classes == (10 if name == "cifar10" else 100)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_batch_as_cifar_writes_it(tmp_path, protocol):
    """The real files' shape: byte-string keys, python-int labels, one uint8 array; any pickle protocol."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    data = np.random.default_rng(2).integers(0, 256, (3, 3072), dtype=np.uint8)
    entry = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4], b"data": data,
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
    (base / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
    test = load_split("cifar10", "test", tmp_path)
    assert [int(test[i][1]) for i in range(3)] == [3, 1, 4]
    torch.testing.assert_close(test[2][0], torch.from_numpy(data[2].reshape(3, 32, 32).astype(np.float32)) / 255)


class _Payload:
    """A pickle that, when loaded by plain pickle.load, creates a file (the side effect the test looks for)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload(_Payload):
    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_Payload, _OpenPayload])
def test_malicious_cifar_batch_is_refused_without_running(tmp_path, payload):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "ran"
    entry = {"data": payload(marker), "labels": [0]}
    (base / "test_batch").write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match=r"refused to unpickle it, it asks for (posix\.system|io\.open)") as e:
        load_split("cifar10", "test", tmp_path)
    assert "\n" not in str(e.value)
    assert not marker.exists()  # the payload never ran
    pickle.loads((base / "test_batch").read_bytes())  # whereas plain pickle runs it: the test can fail
    assert marker.exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_batches(tmp_path, name):
    rng = np.random.default_rng(3)
    folder, files, label_bytes = {"cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)]
                                              + ["test_batch.bin"], 1),
                                  "cifar100": ("cifar-100-binary", ["train.bin", "test.bin"], 2)}[name]
    (tmp_path / folder).mkdir()
    for f in files:
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, (4, label_bytes), dtype=np.uint8)  # cifar100: coarse, fine
        (tmp_path / folder / f).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    train = load_split(name, "train", tmp_path)
    test = load_split(name, "test", tmp_path)
    assert len(train) == (20 if name == "cifar10" else 4) and len(test) == 4
    assert int(test[3][1]) == int(labels[3, -1])  # cifar100's fine label is the second byte
    torch.testing.assert_close(test[3][0], torch.from_numpy(pixels[3].reshape(3, 32, 32).astype(np.float32)) / 255)
    (tmp_path / folder / files[-1]).write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="not a whole number of"):
        load_split(name, "test", tmp_path)


def test_corrupt_cifar_batch(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a cifar10 batch"):
        load_split("cifar10", "test", tmp_path)


def test_imagenet_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((300, 260, 3), 100, np.uint8)).save(tmp_path / split / cls / "a.JPEG")
    ds = load_split("imagenet", "test", tmp_path)
    x, y = ds[1]
    assert len(ds) == 2 and x.shape == (3, 224, 224) and y == 1


def test_embedded_subset_is_balanced_real_fashion_mnist():
    train = load_split("fashion-mnist-mini", "train")
    test = load_split("fashion-mnist-mini", "test")
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert test.images.float().mean() / 255 == pytest.approx(dataset_info("fashion-mnist").mean[0], abs=0.03)


def test_augmentation_keeps_shape_and_is_seeded():
    ds = load_split("fashion-mnist-mini", "train", augment=True)
    torch.manual_seed(3)
    a = ds[5][0]
    torch.manual_seed(3)
    b = ds[5][0]
    assert a.shape == (1, 28, 28) and torch.equal(a, b)


def test_crop_padding_zero_augments_by_flips_alone():
    """data.crop_padding = 0: every augmented image is the original or its mirror image, never shifted."""
    plain = load_split("fashion-mnist-mini", "train")
    flips = load_split("fashion-mnist-mini", "train", augment=True, crop_padding=0)
    cropped = load_split("fashion-mnist-mini", "train", augment=True)  # the dataset's own padding, 2
    assert (flips.crop_padding, flips.flip, cropped.crop_padding) == (0, True, 2)
    torch.manual_seed(0)
    seen = set()
    for i in range(40):
        x, original = flips[i][0], plain[i][0]
        mirrored = torch.equal(x, original.flip(-1)) and not torch.equal(x, original)
        assert torch.equal(x, original) or mirrored
        seen.add(mirrored)
    assert seen == {True, False}


def test_crop_padding_is_a_checked_recipe_key():
    from gee_deploy.errors import ConfigError
    from gee_deploy.recipe import load_recipe

    assert load_recipe(None, ["data.crop_padding=0"]).data.crop_padding == 0
    with pytest.raises(ConfigError, match="data.crop_padding"):
        load_recipe(None, ["data.crop_padding=-2"])


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist for the real set")
def test_real_fashion_mnist_sizes():
    assert len(load_split("fashion-mnist", "train")) == 60000
    assert len(load_split("fashion-mnist", "test")) == 10000
