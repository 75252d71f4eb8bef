"""Tests for hiddenite.data: file readers, Dataset, split and batch iterator."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hiddenite import data
from hiddenite.data import (
    DATASETS,
    Dataset,
    DatasetError,
    augment_batch,
    dataset_info,
    iterate_batches,
    load_dataset,
    normalize,
    num_batches,
    read_idx,
    train_val_split,
)

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    raw = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx_split(folder: Path, split: str, n: int, seed: int, *, compress: bool):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    img_stem, lab_stem = IDX_STEMS[split]
    write_idx(folder / img_stem, images, compress=compress)
    write_idx(folder / lab_stem, labels, compress=compress)
    return images, labels


def make_cifar_file(path: Path, n: int, seed: int, *, coarse: bool):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    classes = 100 if coarse else 10
    fine = rng.integers(0, classes, size=n, dtype=np.uint8)
    records = []
    for i in range(n):
        head = bytes([(int(fine[i]) + 7) % 20, fine[i]]) if coarse else bytes([fine[i]])
        # Record layout: label byte(s), then R plane, G plane, B plane (row-major 32x32 each).
        records.append(
            head + images[i, 0].tobytes() + images[i, 1].tobytes() + images[i, 2].tobytes()
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(records))
    return images, fine


def tiny_dataset(n: int = 10, channels: int = 1, size: int = 28, classes: int = 10) -> Dataset:
    images = torch.arange(n * channels * size * size, dtype=torch.int64) % 251
    images = images.to(torch.uint8).reshape(n, channels, size, size)
    return Dataset(
        name="fashion-mnist" if channels == 1 else "cifar10",
        images=images,
        labels=torch.arange(n, dtype=torch.int64) % classes,
        num_classes=classes,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


# --------------------------------------------------------------------------- names / info


def test_names_and_info():
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
    assert dataset_info("fashion-mnist") == (1, 28, 10)
    assert dataset_info("fmnist") == (1, 28, 10)
    assert dataset_info("fashion_mnist") == (1, 28, 10)
    assert dataset_info("mnist") == (1, 28, 10)
    assert dataset_info("cifar10") == (3, 32, 10)
    assert dataset_info("cifar100") == (3, 32, 100)
    with pytest.raises(DatasetError, match="fashion-mnist, mnist, cifar10, cifar100"):
        dataset_info("imagenet")
    with pytest.raises(DatasetError, match="fashion-mnist, mnist, cifar10, cifar100"):
        load_dataset("svhn", "train", "/nonexistent")


def test_bad_split_is_value_error(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", tmp_path)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    pi = write_idx(tmp_path / "img", images, compress=compress)
    pl = write_idx(tmp_path / "lab", labels, compress=compress)
    got_i, got_l = read_idx(pi), read_idx(pl)
    assert got_i.dtype == np.uint8 and got_i.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    got_i[0, 0, 0] = 1  # writable


def test_read_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    cases = {
        "truncated": good[:-5],
        "longer": good + b"\x00",
        "header": good[:9],
        "tiny": b"\x00\x00",
        "magic": struct.pack(">I", 0x00000D03) + good[4:],  # float32 type code
        "magic2": struct.pack(">I", 0x00000802) + good[4:],
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(DatasetError) as info:
            read_idx(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg, msg
    # truncated gzip stream and a .gz that is not gzip at all
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-20])
    (tmp_path / "fake.gz").write_bytes(good)
    for name in ("bad.gz", "fake.gz"):
        with pytest.raises(DatasetError, match="gzip"):
            read_idx(tmp_path / name)
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "missing")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "fmnist"])
def test_load_idx_dataset(tmp_path, compress, name):
    tr_i, tr_l = make_idx_split(tmp_path, "train", 7, 1, compress=compress)
    te_i, te_l = make_idx_split(tmp_path, "test", 3, 2, compress=compress)
    train = load_dataset(name, "train", tmp_path)
    test = load_dataset(name, "test", str(tmp_path))
    for ds, imgs, labs, split in ((train, tr_i, tr_l, "train"), (test, te_i, te_l, "test")):
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(imgs), 1, 28, 28)
        assert ds.labels.dtype == torch.int64
        assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
        assert torch.equal(ds.labels, torch.from_numpy(labs.astype(np.int64)))
        assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == 28
        assert len(ds) == len(imgs) and ds.split == split
    assert train.name == ("mnist" if name == "mnist" else "fashion-mnist")
    expected = (0.1307,) if name == "mnist" else (0.2860,)
    assert train.mean == expected


def test_idx_dataset_mismatch_and_bad_labels(tmp_path):
    make_idx_split(tmp_path, "train", 4, 0, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), compress=True)
    with pytest.raises(DatasetError, match=r"4 images but .* 5 labels"):
        load_dataset("mnist", "train", tmp_path)
    write_idx(
        tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 10, 2], np.uint8), compress=True
    )
    with pytest.raises(DatasetError, match="label 10"):
        load_dataset("mnist", "train", tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 32, 32), np.uint8), compress=True)
    with pytest.raises(DatasetError, match="28 x 28"):
        load_dataset("mnist", "train", tmp_path)


def test_missing_fashion_mnist_default(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "train")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"Fashion-MNIST not found in {tmp_path / 'nowhere'}")
    assert "apt-get install -y dataset-fashion-mnist" in msg and "apt-get update" in msg
    assert "--data-dir" in msg and "train-images-idx3-ubyte.gz" in msg


def test_missing_files_in_given_dir(tmp_path):
    make_idx_split(tmp_path, "train", 2, 0, compress=False)
    # train present, test missing
    load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "test", tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "t10k-images-idx3-ubyte" in msg and "--data-dir" in msg
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train")
    msg = str(info.value)
    assert "\n" not in msg and "no default folder" in msg and "--data-dir" in msg
    for name in ("cifar10", "cifar100"):
        with pytest.raises(DatasetError, match=r"no default folder.*--data-dir"):
            load_dataset(name, "train")
        with pytest.raises(DatasetError, match=r"not found.*binary version"):
            load_dataset(name, "test", tmp_path / "nope")


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("subfolder", [None, "cifar-10-batches-bin"])
def test_load_cifar10(tmp_path, subfolder):
    folder = tmp_path / subfolder if subfolder else tmp_path
    parts = [
        make_cifar_file(folder / f"data_batch_{i}.bin", 2 + i, seed=i, coarse=False)
        for i in range(1, 6)
    ]
    te_i, te_l = make_cifar_file(folder / "test_batch.bin", 3, seed=9, coarse=False)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar-10", "test", tmp_path)
    exp_i = np.concatenate([p[0] for p in parts])
    exp_l = np.concatenate([p[1] for p in parts]).astype(np.int64)
    assert train.images.shape == (len(exp_i), 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(exp_i))
    assert torch.equal(train.labels, torch.from_numpy(exp_l))
    assert torch.equal(test.images, torch.from_numpy(te_i))
    assert test.labels.tolist() == te_l.tolist()
    assert train.num_classes == 10 and train.in_channels == 3 and train.image_size == 32
    assert train.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_channel_order(tmp_path):
    # One record with constant planes R=10, G=20, B=30 and a marker pixel in the R plane.
    planes = np.stack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30)])
    planes[0, 1, 2] = 200  # row 1, column 2 of the red plane
    (tmp_path / "test_batch.bin").write_bytes(bytes([7]) + planes.tobytes())
    ds = load_dataset("cifar10", "test", tmp_path)
    assert ds.labels.tolist() == [7]
    img = ds.images[0]
    assert img[0, 1, 2] == 200 and img[0, 0, 0] == 10
    assert torch.all(img[1] == 20) and torch.all(img[2] == 30)


@pytest.mark.parametrize("subfolder", [None, "cifar-100-binary"])
def test_load_cifar100_uses_fine_label(tmp_path, subfolder):
    folder = tmp_path / subfolder if subfolder else tmp_path
    tr_i, tr_l = make_cifar_file(folder / "train.bin", 6, seed=3, coarse=True)
    _, te_l = make_cifar_file(folder / "test.bin", 2, seed=4, coarse=True)
    train = load_dataset("cifar100", "train", tmp_path)
    test = load_dataset("cifar100", "test", tmp_path)
    assert torch.equal(train.images, torch.from_numpy(tr_i))
    assert train.labels.tolist() == tr_l.tolist()
    assert test.labels.tolist() == te_l.tolist()
    assert train.num_classes == 100 and test.images.shape == (2, 3, 32, 32)


def test_cifar_corrupt(tmp_path):
    make_cifar_file(tmp_path / "test_batch.bin", 2, seed=0, coarse=False)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", "test", tmp_path)
    msg = str(info.value)
    assert str(path) in msg and "3073" in msg and "\n" not in msg
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="3073"):
        load_dataset("cifar10", "test", tmp_path)
    # a CIFAR-10 label byte of 10 is out of range
    path.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(DatasetError, match="label 10"):
        load_dataset("cifar10", "test", tmp_path)
    # CIFAR-100 record is 3074 bytes: a CIFAR-10 sized file of 2 records is not a multiple
    (tmp_path / "test.bin").write_bytes(bytes(2 * 3073))
    with pytest.raises(DatasetError, match="3074"):
        load_dataset("cifar100", "test", tmp_path)


def test_cifar_python_version_hint(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetError, match=r"pickle version .* not supported"):
        load_dataset("cifar10", "train", tmp_path)


# --------------------------------------------------------------------------- Dataset


def test_dataset_validation_and_subset():
    ds = tiny_dataset(10)
    sub = ds.subset([3, 1, 1])
    assert len(sub) == 3 and sub.labels.tolist() == [3, 1, 1]
    assert torch.equal(sub.images[0], ds.images[3])
    assert len(ds.subset(torch.tensor([], dtype=torch.long))) == 0
    assert len(ds.subset([])) == 0
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([10])
    with pytest.raises(ValueError, match="integers"):
        ds.subset(torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="uint8"):
        Dataset("x", ds.images.float(), ds.labels, 10, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="labels"):
        Dataset("x", ds.images, ds.labels[:3], 10, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="per channel"):
        Dataset("x", ds.images, ds.labels, 10, (0.5, 0.5), (0.25, 0.25))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        Dataset("x", ds.images, ds.labels, 5, (0.5,), (0.25,))
    with pytest.raises(AttributeError):
        ds.name = "y"  # frozen
    assert "images" not in repr(ds)


# --------------------------------------------------------------------------- split


def test_train_val_split():
    ds = tiny_dataset(100)
    tr1, va1 = train_val_split(ds, 0.2, seed=5)
    tr2, va2 = train_val_split(ds, 0.2, seed=5)
    _, va3 = train_val_split(ds, 0.2, seed=6)
    assert len(tr1) == 80 and len(va1) == 20
    assert torch.equal(va1.labels, va2.labels) and torch.equal(tr1.images, tr2.images)
    # labels are arange % 10 -> use image identity: first pixel encodes the index
    key = ds.images.reshape(100, -1)[:, :4].long() @ torch.tensor([1, 256, 65536, 2**24])
    lookup = {int(k): i for i, k in enumerate(key)}
    assert len(lookup) == 100

    def ids(part):
        k = part.images.reshape(len(part), -1)[:, :4].long() @ torch.tensor([1, 256, 65536, 2**24])
        return [lookup[int(v)] for v in k]

    t1, v1, v3 = ids(tr1), ids(va1), ids(va3)
    assert set(t1).isdisjoint(v1) and sorted(t1 + v1) == list(range(100))
    assert t1 == sorted(t1) and v1 == sorted(v1)
    assert v1 != v3
    assert tr1.split == "train" and va1.split == "val"
    tr0, va0 = train_val_split(ds, 0.0, seed=0)
    assert len(tr0) == 100 and len(va0) == 0 and va0.images.shape == (0, 1, 28, 28)


def test_train_val_split_validation():
    ds = tiny_dataset(10)
    for bad in (-0.1, 1.0, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(ds, bad, seed=0)
    with pytest.raises(ValueError, match="seed"):
        train_val_split(ds, 0.1, seed=1.5)
    test = Dataset("mnist", ds.images, ds.labels, 10, (0.5,), (0.25,), split="test")
    with pytest.raises(ValueError, match="training set"):
        train_val_split(test, 0.1, seed=0)


# --------------------------------------------------------------------------- batches


def test_normalize_matches_hand_computation():
    imgs = torch.tensor([[[[0, 255], [51, 128]]], [[[10, 20], [30, 40]]]], dtype=torch.uint8)
    x = normalize(imgs, (0.2,), (0.5,))
    assert x.dtype == torch.float32 and x.shape == (2, 1, 2, 2)
    expected = [[-0.4, 1.6], [0.0, (128 / 255 - 0.2) / 0.5]]
    assert torch.allclose(x[0, 0], torch.tensor(expected), atol=1e-6)
    rgb = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    rgb[0, :, 0, 0] = torch.tensor([255, 0, 102], dtype=torch.uint8)
    y = normalize(rgb, (0.5, 0.1, 0.4), (0.5, 0.2, 0.1))
    assert torch.allclose(y.flatten(), torch.tensor([1.0, -0.5, 0.0]), atol=1e-6)
    with pytest.raises(ValueError):
        normalize(imgs.float(), (0.2,), (0.5,))
    with pytest.raises(ValueError):
        normalize(imgs, (0.2, 0.1), (0.5, 0.5))


def test_iterate_batches_plain():
    ds = tiny_dataset(10)
    batches = list(
        iterate_batches(ds, 4, shuffle=False, generator=None, augment=False, drop_last=False)
    )
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert num_batches(ds, 4) == 3 and num_batches(ds, 4, drop_last=True) == 2
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (10, 1, 28, 28)
    assert torch.allclose(x, (ds.images.float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    dropped = list(
        iterate_batches(ds, 4, shuffle=False, generator=None, augment=False, drop_last=True)
    )
    assert [len(y) for _, y in dropped] == [4, 4]
    assert ds.images.dtype == torch.uint8  # dataset untouched


def test_iterate_batches_validation():
    ds = tiny_dataset(4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            iterate_batches(ds, bad, shuffle=False, generator=None, augment=False)
    with pytest.raises(ValueError, match="Generator"):
        iterate_batches(ds, 2, shuffle=True, generator=None, augment=False)
    with pytest.raises(ValueError, match="Generator"):
        iterate_batches(ds, 2, shuffle=False, generator=None, augment=True)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_iterate_batches_deterministic(channels, size):
    ds = tiny_dataset(37, channels=channels, size=size)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # global RNG must not matter
        g = torch.Generator().manual_seed(seed)
        return list(iterate_batches(ds, 8, shuffle=True, generator=g, augment=True))

    a, b, c = run(0, 1), run(0, 2), run(1, 1)
    assert len(a) == 5
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape[1:] == (channels, size, size)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    # shuffle covers each label once
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(ds.labels.tolist())


def test_augment_flip_only_matches_reference_flip():
    imgs = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator())
    out = augment_batch(imgs, torch.Generator().manual_seed(3), padding=0, flip=True)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    flipped = torch.flip(imgs, dims=[-1])
    same = (out == imgs).flatten(1).all(1)
    mirrored = (out == flipped).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64
    unchanged = augment_batch(imgs, torch.Generator().manual_seed(3), padding=0, flip=False)
    assert torch.equal(unchanged, imgs)


@pytest.mark.parametrize("padding", [2, 4])
def test_augment_crop_is_shifted_window(padding):
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(1, 256, (16, 2, 6, 6), dtype=torch.uint8, generator=gen)
    out = augment_batch(imgs, torch.Generator().manual_seed(7), padding=padding, flip=True)
    assert out.shape == imgs.shape
    p = padding
    padded = torch.nn.functional.pad(imgs, (p, p, p, p))
    offsets = set()
    for i in range(len(imgs)):
        matches = [
            (dy, dx, f)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for f in (False, True)
            if torch.equal(
                out[i],
                torch.flip(padded[i, :, dy : dy + 6, dx : dx + 6], dims=[-1])
                if f
                else padded[i, :, dy : dy + 6, dx : dx + 6],
            )
        ]
        assert matches, f"image {i} is not a (flipped) crop of its padded original"
        offsets.add(matches[0][:2])
    assert len(offsets) > 1  # offsets really vary


def test_default_padding_in_iterator():
    # 28x28 uses 2-pixel padding: an all-255 image never gets more than 2 zero columns.
    ds = Dataset(
        "mnist",
        torch.full((64, 1, 28, 28), 255, dtype=torch.uint8),
        torch.zeros(64, dtype=torch.int64),
        10,
        (0.0,),
        (1.0,),
    )
    g = torch.Generator().manual_seed(0)
    ((x, _),) = list(iterate_batches(ds, 64, shuffle=False, generator=g, augment=True))
    zero_cols = (x == 0).all(dim=2).sum(dim=-1).flatten()
    zero_rows = (x == 0).all(dim=3).sum(dim=-1).flatten()
    assert int(zero_cols.max()) == 2 and int(zero_rows.max()) == 2
    assert data.default_padding(32) == 4 and data.default_padding(28) == 2


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fmnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.num_classes == 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    pixels = train.images.float().div_(255)
    assert abs(float(pixels.mean()) - train.mean[0]) < 1e-3
    assert abs(float(pixels.std()) - train.std[0]) < 1e-3


def test_gzip_bombs_are_refused_while_inflating(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb.write_bytes(co.compress(b"\0" * 1_000_000) + co.flush())
    assert bomb.stat().st_size < 2_000
    monkeypatch.setattr(data, "MAX_DECOMPRESSED_BYTES", 999_999)
    with pytest.raises(DatasetError, match="inflates to more than 999,999 bytes"):
        read_idx(bomb)
    monkeypatch.setattr(data, "MAX_DECOMPRESSED_BYTES", 1_000_000)
    with pytest.raises(DatasetError, match="magic"):  # inflated fully: now read as IDX
        read_idx(bomb)


def test_a_fifo_data_file_does_not_block(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte.gz"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="is a FIFO"):
        read_idx(fifo)
