"""Image-classification data sets held in memory, without torchvision.

Readers for the standard distribution formats (IDX for MNIST / Fashion-MNIST, the *binary
version* of CIFAR-10 / CIFAR-100), a :class:`Dataset` holding uint8 images (N x C x H x W) and
int64 labels, a seeded train/validation split, and a batch iterator that normalises to float32
and applies seeded, vectorised crop + flip augmentation.

Image folders (``imagefolder``: one subfolder of JPEG/PNG files per class) are scanned, not
held in memory: :mod:`hiddenite.data_folder` decodes them in DataLoader workers, and
:func:`iterate_batches` and :func:`train_val_split` accept them like a :class:`Dataset`.

Nothing is read at import time; every file access happens inside :func:`load_dataset` or
:func:`read_idx`. Pixel values are uint8 in 0..255 on disk and in :class:`Dataset`; means and
standard deviations are per channel in [0, 1] units (pixel / 255).
"""

from __future__ import annotations

import dataclasses
import numbers
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data_folder import FolderOptions, ImageFolder
from .errors import DatasetError
from .validate import open_regular

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "Dataset",
    "DatasetError",
    "augment_batch",
    "check_data_options",
    "dataset_info",
    "default_padding",
    "iterate_batches",
    "known_data_shape",
    "load_dataset",
    "normalize",
    "num_batches",
    "piece_bounds",
    "read_idx",
    "resolve_name",
    "settled_data_options",
    "train_val_split",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
"""Canonical data-set names accepted by :func:`load_dataset` (``imagefolder``: a folder of
class subfolders of JPEG/PNG images, :mod:`hiddenite.data_folder`)."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Default folder of Fashion-MNIST (Debian package ``dataset-fashion-mnist``)."""

SPLITS: tuple[str, ...] = ("train", "test")

_ALIASES: dict[str, str] = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "imagefolder": "imagefolder",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}


@dataclass(frozen=True)
class _Spec:
    title: str
    channels: int
    size: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Standard published normalisation constants, [0, 1] units.
_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec("Fashion-MNIST", 1, 28, 10, (0.2860,), (0.3530,)),
    "mnist": _Spec("MNIST", 1, 28, 10, (0.1307,), (0.3081,)),
    "cifar10": _Spec("CIFAR-10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec("CIFAR-100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC_LABELS = 0x00000801
_IDX_MAGIC_IMAGES = 0x00000803
_GZIP_MAGIC = b"\x1f\x8b"

_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = ("test_batch.bin",)
_CIFAR_PIXELS = 3 * 32 * 32  # bytes of one image, CHW, R then G then B planes


# --------------------------------------------------------------------------- names


def resolve_name(name: str) -> str:
    """Return the canonical data-set name for ``name`` or an alias (case-insensitive).

    Raises:
        DatasetError: unknown name (the message lists the valid names).
    """
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise DatasetError(
            f"unknown data set {name!r}: use one of {', '.join(DATASETS)} "
            "(aliases: fashion_mnist, fmnist, cifar-10, cifar-100, image-folder)"
        )
    return _ALIASES[key]


def dataset_info(name: str, options: dict | None = None) -> tuple[int, int, int]:
    """Return ``(in_channels, image_size, num_classes)`` of a data set without reading files.

    ``image_size`` is the height (= width) in pixels. An image folder needs its settled
    ``options`` (:func:`settled_data_options`: the mode and class list read from the folder).
    """
    key = resolve_name(name)
    if key == "imagefolder":
        opts = FolderOptions.from_dict(options or {})
        if opts.classes is None or opts.mode == "auto":
            raise DatasetError(
                "imagefolder: the class list and image mode are read from the folder when "
                "training starts; give data_options classes=[...] and mode=RGB|L to build it"
            )
        return (3 if opts.mode == "RGB" else 1), opts.size, len(opts.classes)
    spec = _SPECS[key]
    return spec.channels, spec.size, spec.classes


def known_data_shape(name: str, options: dict | None = None) -> tuple[int, int, int] | None:
    """:func:`dataset_info` when it is known without reading files; None for an image folder
    whose class list and mode are not settled yet (they are read from the folder)."""
    key = resolve_name(name)
    if key == "imagefolder":
        opts = FolderOptions.from_dict(options or {})
        if opts.classes is None or opts.mode == "auto":
            return None
    return dataset_info(name, options)


def check_data_options(name: str, options: dict) -> None:
    """DatasetError unless ``options`` suit data set ``name`` (only image folders take any:
    :class:`~hiddenite.data_folder.FolderOptions`)."""
    if not isinstance(options, dict):
        raise DatasetError(f"data options must be an object, got {options!r}")
    if resolve_name(name) == "imagefolder":
        FolderOptions.from_dict(options)
    elif options:
        raise DatasetError(f"data set {name!r} takes no data options, got {sorted(options)}")


def settled_data_options(name: str, options: dict, dataset) -> dict:
    """``options`` completed from the loaded data: an image folder's mode and class names."""
    if resolve_name(name) != "imagefolder":
        return dict(options)
    return {**options, "mode": dataset.mode, "classes": list(dataset.classes)}


# --------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory labelled image set.

    Attributes:
        name: canonical data-set name (see :data:`DATASETS`).
        images: uint8 tensor, N x C x H x W, pixel values 0..255.
        labels: int64 tensor, N, class indices in ``0..num_classes-1``.
        num_classes: number of classes.
        mean: per-channel mean in [0, 1] units (pixel / 255), used by :func:`normalize`.
        std: per-channel standard deviation in [0, 1] units.
        split: where the samples came from: ``"train"``, ``"test"`` or ``"val"``.

    Equality is identity (tensors have no boolean ``==``).
    """

    name: str
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split: str = "train"

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("Dataset.images must be a uint8 tensor of shape N x C x H x W")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise ValueError("Dataset.labels must be an int64 tensor of shape N")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"Dataset has {images.shape[0]} images but {labels.shape[0]} labels")
        if isinstance(self.num_classes, bool) or int(self.num_classes) < 1:
            raise ValueError(f"Dataset.num_classes must be >= 1, got {self.num_classes!r}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"Dataset.mean/std need {channels} values (one per channel), "
                f"got {len(mean)}/{len(std)}"
            )
        if any(not s > 0 for s in std):
            raise ValueError(f"Dataset.std must be > 0, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"Dataset.labels must lie in 0..{self.num_classes - 1}, got "
                f"{int(labels.min())}..{int(labels.max())}"
            )

    @property
    def in_channels(self) -> int:
        """Number of image channels C."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height H in pixels."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> Dataset:
        """Return a new Dataset with the samples at ``indices`` (integer positions, in order)."""
        idx = _as_index(indices, len(self))
        return Dataset(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            split=self.split,
        )


def _as_index(indices: Sequence[int] | torch.Tensor | np.ndarray, n: int) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        idx = indices.detach().to("cpu")
    else:
        idx = torch.as_tensor(np.asarray(indices))
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {tuple(idx.shape)}")
    if idx.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.long()
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -n or hi >= n:
        raise ValueError(f"indices out of range for {n} samples: {lo}..{hi}")
    return idx


# --------------------------------------------------------------------------- readers


# Largest decompressed data file read (Fashion-MNIST's training images are 47 MB): a gzip
# file that inflates beyond it (a "zip bomb") is refused while inflating.
MAX_DECOMPRESSED_BYTES = 1 << 31


def _gunzip(raw: bytes, path: Path) -> bytes:
    """Inflate every gzip member of ``raw``, never beyond MAX_DECOMPRESSED_BYTES."""
    out = bytearray()
    data = raw
    while data:
        inflater = zlib.decompressobj(wbits=31)
        out += inflater.decompress(data, MAX_DECOMPRESSED_BYTES + 1 - len(out))
        if len(out) > MAX_DECOMPRESSED_BYTES or inflater.unconsumed_tail:
            raise DatasetError(
                f"{path} inflates to more than {MAX_DECOMPRESSED_BYTES:,} bytes: not a data file"
            )
        if not inflater.eof:
            raise EOFError("compressed file ended before the end-of-stream marker")
        data = inflater.unused_data
    return bytes(out)


def _read_bytes(path: Path, *, allow_gzip: bool) -> bytes:
    if not path.exists():
        raise DatasetError(f"cannot read {path}: no such file")
    with open_regular(path, "data file", DatasetError) as fh:
        try:
            raw = fh.read()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if allow_gzip and (path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC):
        try:
            return _gunzip(raw, path)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{path} is a corrupt or truncated gzip file ({exc}): download it again"
            ) from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain) holding uint8 data.

    Accepts magic ``0x00000803`` (images, N x H x W) and ``0x00000801`` (labels, N).

    Returns:
        A writable uint8 array with the shape given in the header.

    Raises:
        DatasetError: unreadable file, bad magic, bad header or a payload whose size does not
            match the header dimensions.
    """
    path = Path(path)
    data = _read_bytes(path, allow_gzip=True)
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file: only {len(data)} bytes; download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (_IDX_MAGIC_LABELS, _IDX_MAGIC_IMAGES):
        raise DatasetError(
            f"{path} has IDX magic 0x{magic:08x}, expected 0x{_IDX_MAGIC_IMAGES:08x} (uint8 "
            f"images) or 0x{_IDX_MAGIC_LABELS:08x} (uint8 labels): not an MNIST-style IDX file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header; "
            "download it again"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
        raise DatasetError(f"{path} has invalid IDX image dimensions {dims}")
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        problem = "truncated" if payload < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {problem}: header dims {dims} need {expected} payload bytes, "
            f"found {payload}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def _find_file(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _idx_hint() -> str:
    names = [n for pair in _IDX_FILES.values() for n in pair]
    listed = ", ".join(f"{n}.gz" for n in names)
    return f"holding {listed} (or the same names without .gz)"


def _load_idx_dataset(key: str, split: str, data_dir: Path | None) -> Dataset:
    spec = _SPECS[key]
    hint = _idx_hint()
    if data_dir is None:
        if key != "fashion-mnist":
            raise DatasetError(
                f"{spec.title} has no default folder: pass --data-dir DIR (data_dir=DIR) {hint}"
            )
        folder = FASHION_MNIST_DIR
        fix = (
            "install it with `apt-get install -y dataset-fashion-mnist` (after `apt-get update`),"
            f" or pass --data-dir DIR {hint}"
        )
    else:
        folder = data_dir
        fix = f"pass --data-dir DIR {hint}"
        if key == "fashion-mnist":
            fix += (
                ", or omit --data-dir after `apt-get install -y dataset-fashion-mnist` "
                f"(which installs to {FASHION_MNIST_DIR})"
            )
    # Also accept the layout torchvision leaves behind (<dir>/<Name>/raw/).
    sub = "FashionMNIST" if key == "fashion-mnist" else "MNIST"
    folders = [folder, folder / sub / "raw"]
    paths = []
    for stem in _IDX_FILES[split]:
        found = _find_file(folders, (f"{stem}.gz", stem))
        if found is None:
            if not folder.is_dir():
                where = f"{folder} (no such folder)"
            else:
                where = f"{folder} (missing {stem}[.gz])"
            raise DatasetError(f"{spec.title} not found in {where}: {fix}")
        paths.append(found)
    images_path, labels_path = paths
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (spec.size, spec.size):
        raise DatasetError(
            f"{images_path} holds data of shape {images.shape}, expected N x {spec.size} x "
            f"{spec.size} {spec.title} images: replace it with the original file"
        )
    if labels.ndim != 1:
        raise DatasetError(
            f"{labels_path} holds data of shape {labels.shape}, expected N labels: "
            "replace it with the original file"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels: replace them with matching original files"
        )
    _check_labels(labels, spec, labels_path)
    return Dataset(
        name=key,
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=spec.classes,
        mean=spec.mean,
        std=spec.std,
        split=split,
    )


def _check_labels(labels: np.ndarray, spec: _Spec, path: Path) -> None:
    if labels.size and int(labels.max()) >= spec.classes:
        raise DatasetError(
            f"{path} has label {int(labels.max())}, outside 0..{spec.classes - 1} for "
            f"{spec.title}: replace it with the original file"
        )


def _read_cifar_file(path: Path, spec: _Spec, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _CIFAR_PIXELS
    raw = _read_bytes(path, allow_gzip=False)
    if len(raw) == 0 or len(raw) % record:
        raise DatasetError(
            f"{path} is corrupt or truncated: {len(raw)} bytes is not a positive multiple of "
            f"the {record}-byte {spec.title} record; download the binary version again"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: fine label is the 2nd byte
    _check_labels(labels, spec, path)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def _load_cifar(key: str, split: str, data_dir: Path | None) -> Dataset:
    spec = _SPECS[key]
    if key == "cifar10":
        names = _CIFAR10_TRAIN if split == "train" else _CIFAR10_TEST
        sub, archive, label_bytes = "cifar-10-batches-bin", "cifar-10-binary.tar.gz", 1
        listed = "data_batch_1.bin .. data_batch_5.bin and test_batch.bin"
        python_marker = ("data_batch_1", "cifar-10-batches-py")
    else:
        names = ("train.bin",) if split == "train" else ("test.bin",)
        sub, archive, label_bytes = "cifar-100-binary", "cifar-100-binary.tar.gz", 2
        listed = "train.bin and test.bin"
        python_marker = ("meta", "cifar-100-python")
    fix = (
        f"pass --data-dir DIR holding {listed} (or their {sub}/ folder), "
        f"extracted from the binary version {archive}"
    )
    if data_dir is None:
        raise DatasetError(f"{spec.title} has no default folder: {fix}")
    folders = [data_dir, data_dir / sub]
    paths = []
    for name in names:
        found = _find_file(folders, (name,))
        if found is None:
            if not data_dir.is_dir():
                where = f"{data_dir} (no such folder)"
            else:
                where = f"{data_dir} (missing {name})"
            note = ""
            if any((data_dir / m).exists() for m in python_marker):
                note = " (the Python/pickle version found there is not supported)"
            raise DatasetError(f"{spec.title} not found in {where}{note}: {fix}")
        paths.append(found)
    parts = [_read_cifar_file(p, spec, label_bytes) for p in paths]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return Dataset(
        name=key,
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=spec.classes,
        mean=spec.mean,
        std=spec.std,
        split=split,
    )


def load_dataset(
    name: str, split: str, data_dir: str | Path | None = None, options: dict | None = None
) -> Dataset | ImageFolder:
    """Load a whole split of a data set into memory (an image folder: scan it).

    Args:
        name: one of :data:`DATASETS` (or an alias such as ``fmnist``).
        split: ``"train"`` or ``"test"``.
        data_dir: folder holding the files; ``None`` uses the default folder
            (only Fashion-MNIST has one: :data:`FASHION_MNIST_DIR`). An image folder reads
            ``data_dir`` itself, whatever the split.
        options: image folders only, :class:`~hiddenite.data_folder.FolderOptions` fields.

    Raises:
        DatasetError: unknown name, missing files or corrupt files.
        ValueError: bad ``split``.
    """
    key = resolve_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = None if data_dir is None else Path(data_dir).expanduser()
    if key == "imagefolder":
        if folder is None:
            raise DatasetError(
                "imagefolder has no default folder: pass --data-dir DIR holding one subfolder "
                "of .jpg/.jpeg/.png images per class"
            )
        return ImageFolder.open(folder, FolderOptions.from_dict(options or {}), split)
    if key in ("fashion-mnist", "mnist"):
        return _load_idx_dataset(key, split, folder)
    return _load_cifar(key, split, folder)


# --------------------------------------------------------------------------- split


def train_val_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into (train, val) with a seeded random permutation.

    ``round(val_fraction * len(dataset))`` samples go to validation; both parts keep the
    original sample order. ``val_fraction=0`` gives an empty validation set. The same
    ``seed`` always gives the same split.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), a non-integer seed, or a dataset whose
            ``split`` is not ``"train"`` (never take validation data from the test set).
    """
    if dataset.split != "train":
        raise ValueError(
            f"train_val_split needs the training set, got split {dataset.split!r}: "
            "load it with load_dataset(name, 'train')"
        )
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    n = len(dataset)
    n_val = round(float(val_fraction) * n)
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    val_idx = perm[:n_val].sort().values
    train_idx = perm[n_val:].sort().values
    return dataset.subset(train_idx), dataclasses.replace(dataset.subset(val_idx), split="val")


# --------------------------------------------------------------------------- batches


def normalize(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return float32 ``(images_u8 / 255 - mean) / std`` per channel.

    Args:
        images_u8: uint8 tensor, ... x C x H x W (pixel values 0..255).
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
    """
    if images_u8.dtype != torch.uint8 or images_u8.ndim < 3:
        raise ValueError(
            f"normalize needs a uint8 tensor ... x C x H x W, got {images_u8.dtype} "
            f"of shape {tuple(images_u8.shape)}"
        )
    channels = images_u8.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalize needs {channels} mean/std values, got {len(mean)}/{len(std)}")
    dev = images_u8.device
    m = torch.tensor(tuple(mean), dtype=torch.float32, device=dev).view(-1, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32, device=dev).view(-1, 1, 1)
    return images_u8.to(torch.float32).div_(255.0).sub_(m).div_(s)


def default_padding(image_size: int) -> int:
    """Zero padding in pixels for random-crop augmentation: 4 for 32x32 images, 2 for 28x28."""
    return 4 if image_size >= 32 else 2


def augment_batch(
    images_u8: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, vectorised over the batch.

    Each image is zero-padded by ``padding`` pixels on every side and cropped back to H x W at
    an offset drawn uniformly from ``0..2*padding`` (rows and columns independently); with
    ``flip`` it is then mirrored left-right with probability 1/2. All randomness comes from
    ``generator`` (drawn in the order: row offsets, column offsets, flips), so the same
    generator state gives the same output.

    Args:
        images_u8: B x C x H x W tensor (any dtype; CPU).
        generator: CPU ``torch.Generator``.
        padding: zero padding in pixels (>= 0).
        flip: also apply the random horizontal flip.

    Returns:
        A new tensor of the same shape and dtype.
    """
    if images_u8.ndim != 4:
        raise ValueError(f"augment_batch needs B x C x H x W, got {tuple(images_u8.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    b, c, h, w = images_u8.shape
    if b == 0:
        return images_u8.clone()
    p = padding
    padded = images_u8.new_zeros((b, c, h + 2 * p, w + 2 * p))
    padded[:, :, p : p + h, p : p + w] = images_u8
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None, :]  # B x H
    cols_fwd = torch.arange(w)[None, :]
    if flip:
        flips = torch.randint(0, 2, (b,), generator=generator).bool()
        cols_fwd = torch.where(flips[:, None], torch.arange(w - 1, -1, -1)[None, :], cols_fwd)
    cols = dx[:, None] + cols_fwd  # B x W
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def piece_bounds(count: int, index: int, parts: int) -> tuple[int, int]:
    """``[start, stop)`` of the ``index``-th of ``parts`` contiguous pieces of ``count`` items
    (sizes differ by at most one; the first ``count % parts`` pieces are one larger)."""
    base, extra = divmod(count, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def num_batches(dataset: Dataset, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for these arguments."""
    _check_batch_size(batch_size)
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: bool,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches: x float32 B x C x H x W normalised, y int64 B.

    ``x = (uint8 / 255 - dataset.mean) / dataset.std`` per channel. With ``shuffle`` the order
    is a permutation drawn from ``generator`` once per call; with ``augment`` each batch gets
    :func:`augment_batch` (padding from :func:`default_padding`) drawn from ``generator``.
    Both need a CPU generator and use no global random state, so the same generator state
    gives identical batches. Augmentation runs on CPU uint8; the batch is moved to ``device``
    before conversion to float. ``shard=(r, n)`` yields only the r-th of n contiguous pieces
    of every batch (sizes differ by at most one), cut after augmentation, so the pieces of
    all ``r`` together are exactly the unsharded batch (data-parallel training).

    An :class:`~hiddenite.data_folder.ImageFolder` yields the same kind of batches, decoded
    by its DataLoader workers (its own augmentation: random resized crop and flip).

    Raises:
        ValueError: ``batch_size < 1``, or ``shuffle``/``augment`` without a CPU generator.
    """
    _check_batch_size(batch_size)
    if (shuffle or augment) and generator is None:
        raise ValueError(
            "shuffle=True or augment=True needs a torch.Generator (e.g. "
            "torch.Generator().manual_seed(seed)) so that batches are reproducible"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator.device}")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    device = torch.device(device)
    if isinstance(dataset, ImageFolder):
        return _folder_batches(
            dataset, batch_size, shuffle, generator, augment, drop_last, device, shard
        )
    return _batches(dataset, batch_size, shuffle, generator, augment, drop_last, device, shard)


def _batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: bool,
    drop_last: bool,
    device: torch.device,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else None
    padding = default_padding(dataset.image_size)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            images = dataset.images[start:end]
            labels = dataset.labels[start:end]
        else:
            idx = order[start:end]
            images = dataset.images[idx]
            labels = dataset.labels[idx]
        if augment:
            assert generator is not None
            images = augment_batch(images, generator, padding=padding)
        if shard is not None:
            lo, hi = piece_bounds(end - start, *shard)
            images, labels = images[lo:hi], labels[lo:hi]
        x = normalize(images.to(device), dataset.mean, dataset.std)
        yield x, labels.to(device)


def _folder_batches(
    folder: ImageFolder,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: bool,
    drop_last: bool,
    device: torch.device,
    shard: tuple[int, int] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`iterate_batches` of an image folder: the order, the epoch's augmentation seed
    (one draw after the permutation) and the shard are decided here; decoding happens in the
    folder's DataLoader workers, only for this shard's images."""
    n = len(folder)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment else None
    stop = n - n % batch_size if drop_last else n
    lists = []
    for start in range(0, stop, batch_size):
        idx = order[start : min(start + batch_size, n)]
        if shard is not None:
            lo, hi = piece_bounds(len(idx), *shard)
            idx = idx[lo:hi]
        lists.append(idx.tolist())
    pin = device.type == "cuda"
    for images, labels in folder.batches(lists, seed, pin_memory=pin):
        x = normalize(images.to(device, non_blocking=pin), folder.mean, folder.std)
        yield x, labels.to(device)
