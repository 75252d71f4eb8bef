"""Image folders: one subfolder per class of JPEG/PNG files, decoded with Pillow on demand.

The layout is the one ImageNet and most user collections use::

    DIR/<class name>/<image>.jpg|.jpeg|.png

Classes are the subfolder names in sorted (code-point) order, index 0, 1, ...; the images of a
class are taken in sorted file-name order, so the indexing is stable. Hidden entries (names
starting with ``.``) and files with other suffixes are ignored. The scan opens every image's
header (Pillow reads only the first bytes) so that an unreadable file or a mix of grey and
colour images is reported up front, by name, in one line.

Transforms use Pillow and torch only (no torchvision):

- training (``augment``): random resized crop (area fraction uniform in ``[scale, 1]``,
  aspect ratio log-uniform in ``[3/4, 4/3]``, ten tries then a centre crop, the Inception /
  torchvision recipe) resized bilinearly to ``size`` x ``size``, then a horizontal flip with
  probability 1/2;
- evaluation: the shorter side resized to ``resize`` (default ``size * 256 / 224``), then
  the centre ``size`` x ``size`` crop.

Each image's random draws come from a generator seeded by (epoch seed, image index), so the
same epoch gives the same pixels whatever the number of worker processes, the batch order or
the number of data-parallel ranks. Batches are decoded by a ``torch.utils.data.DataLoader``
with ``workers`` processes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError

__all__ = [
    "EXTENSIONS",
    "FolderOptions",
    "ImageDecodeError",
    "ImageFolder",
    "center_crop",
    "random_resized_crop",
    "scan_folder",
]

EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
"""File suffixes read as images (case-insensitive)."""

MODES: tuple[str, ...] = ("auto", "RGB", "L")

# ImageNet statistics in [0, 1] units; the grey values are the means of the colour ones.
_MEAN = {"RGB": (0.485, 0.456, 0.406), "L": (0.449,)}
_STD = {"RGB": (0.229, 0.224, 0.225), "L": (0.226,)}
# Pillow modes with one grey channel (with or without alpha); every other mode is colour.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


class ImageDecodeError(DatasetError):
    """An image file could not be decoded (the message names it).

    A DataLoader worker's exception comes back to the main process rebuilt from a message
    that embeds the worker's traceback; this keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        text = str(message)
        if "Traceback" in text:
            tail = [line for line in text.splitlines() if f"{type(self).__name__}:" in line]
            if tail:
                text = tail[-1].split(f"{type(self).__name__}:", 1)[1]
        super().__init__(text)


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder is read (stored in ``TrainConfig.data_options``).

    size: side of the square network input; resize: shorter side before the evaluation
    centre crop (0: ``round(size * 256 / 224)``); scale: smallest area fraction of the
    random resized crop; mode: ``"auto"`` (every image must be grey, or every image colour),
    ``"RGB"`` or ``"L"`` (convert every image); classes: the class names in index order
    (filled in from the folder by training, then checked against any folder read later);
    workers: DataLoader worker processes (0: decode in the main process).
    """

    size: int = 224
    resize: int = 0
    scale: float = 0.08
    mode: str = "auto"
    classes: tuple[str, ...] | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        def fail(name: str, problem: str) -> None:
            raise DatasetError(f"image-folder option {name}: {problem}")

        for name, low in (("size", 1), ("resize", 0), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"must be an integer >= {low}, got {value!r}")
        if self.resize and self.resize < self.size:
            fail("resize", f"{self.resize} is smaller than size {self.size}")
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
            fail("scale", f"must be a number in (0, 1], got {scale!r}")
        if self.mode not in MODES:
            fail("mode", f"unknown {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.classes is not None:
            names = self.classes
            if isinstance(names, str) or not isinstance(names, Sequence):
                fail("classes", f"must be a list of class names, got {names!r}")
            if not names or not all(isinstance(n, str) and n for n in names):
                fail("classes", "must be a non-empty list of non-empty names")
            if len(set(names)) != len(names):
                fail("classes", "names must be unique")
            object.__setattr__(self, "classes", tuple(names))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FolderOptions:
        if not isinstance(data, Mapping):
            raise DatasetError(f"image-folder options must be an object, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(
                f"unknown image-folder option(s) {', '.join(unknown)}; "
                f"use {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = None if self.classes is None else list(self.classes)
        return data

    @property
    def eval_resize(self) -> int:
        return self.resize or round(self.size * 256 / 224)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _family(mode: str) -> str:
    return "L" if mode in _GREY_MODES else "RGB"


def scan_folder(
    root: str | Path, mode: str = "auto"
) -> tuple[tuple[str, ...], list[Path], list[int], str]:
    """Classes (sorted), image paths (class by class, sorted), their class indices and the
    channel mode (``"RGB"`` or ``"L"``) of a folder.

    Raises:
        DatasetError: no such folder, an empty folder, no class subfolders, a class without
            images, a file Pillow cannot identify (named), or grey and colour images mixed
            under ``mode="auto"``.
    """
    root = Path(root).expanduser()
    hint = "one subfolder per class holding .jpg/.jpeg/.png images"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder: pass --data-dir DIR with {hint}")
    entries = sorted(p for p in root.iterdir() if not _is_hidden(p))
    if not entries:
        raise DatasetError(f"{root} is empty: it needs {hint}")
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        raise DatasetError(
            f"{root} has no class subfolders ({len(entries)} files directly in it): it needs {hint}"
        )
    classes = tuple(p.name for p in class_dirs)
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        images = sorted(
            p
            for p in folder.iterdir()
            if not _is_hidden(p) and p.suffix.lower() in EXTENSIONS and p.is_file()
        )
        if not images:
            raise DatasetError(
                f"class folder {folder} holds no .jpg/.jpeg/.png images: add some or remove it"
            )
        paths.extend(images)
        labels.extend([index] * len(images))
    families: dict[str, list[Path]] = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                families.setdefault(_family(image.mode), []).append(path)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DatasetError(
                f"{path}: not a readable JPEG/PNG image ({exc}): replace or remove it"
            ) from None
    if mode == "auto":
        if len(families) > 1:
            seen = ", ".join(
                f"{fam} ({len(files)} files, e.g. {files[0]})" for fam, files in families.items()
            )
            raise DatasetError(
                f"{root} mixes grey and colour images: {seen}: pass --data-option mode=RGB "
                "(or mode=L) to convert every image"
            )
        mode = next(iter(families))
    return classes, paths, labels, mode


# --------------------------------------------------------------------------- transforms


def random_resized_crop(
    width: int, height: int, scale: float, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop with area fraction in ``[scale, 1]`` and aspect
    ratio log-uniform in ``[3/4, 4/3]`` (ten tries, then the centre crop of clamped ratio)."""
    area = width * height
    low, high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale + (1.0 - scale) * u[0])
        ratio = math.exp(low + (high - low) * u[1])
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = min(int(u[2] * (width - w + 1)), width - w)
            top = min(int(u[3] * (height - h + 1)), height - h)
            return left, top, w, h
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    w, h = min(w, width), min(h, height)
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of the centred ``size`` x ``size`` crop (the image may be smaller:
    then the crop is clipped to it)."""
    w, h = min(size, width), min(size, height)
    return (width - w) // 2, (height - h) // 2, w, h


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """An image folder as a data set (images decoded when a batch needs them).

    Use :meth:`open` to scan a folder. ``labels`` is int64, one per path. Shares with
    :class:`hiddenite.data.Dataset` what training needs: ``len``, ``subset``, ``split``,
    ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``, ``labels`` and
    :meth:`batches` (what :func:`hiddenite.data.iterate_batches` calls).
    """

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...] = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    mode: str
    options: FolderOptions
    split: str = "train"
    name: str = "imagefolder"

    @classmethod
    def open(
        cls, root: str | Path, options: FolderOptions | None = None, split: str = "train"
    ) -> ImageFolder:
        """Scan ``root``; with ``options.classes`` set, the folder must hold exactly them."""
        options = options or FolderOptions()
        classes, paths, labels, mode = scan_folder(root, options.mode)
        if options.classes is not None and tuple(options.classes) != classes:
            missing = sorted(set(options.classes) - set(classes))
            extra = sorted(set(classes) - set(options.classes))
            raise DatasetError(
                f"{root} has classes that differ from the run's {len(options.classes)} "
                f"(missing: {', '.join(missing) or 'none'}; unexpected: "
                f"{', '.join(extra) or 'none'}; or another order): use a folder with the same "
                "class subfolders"
            )
        return cls(
            root=Path(root),
            classes=classes,
            paths=tuple(paths),
            labels=torch.tensor(labels, dtype=torch.int64),
            mode=mode,
            options=options,
            split=split,
        )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(_MEAN[self.mode])

    @property
    def image_size(self) -> int:
        return self.options.size

    @property
    def mean(self) -> tuple[float, ...]:
        return _MEAN[self.mode]

    @property
    def std(self) -> tuple[float, ...]:
        return _STD[self.mode]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageFolder:
        """The images at ``indices`` (integer positions, in order)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return dataclasses.replace(
            self, paths=tuple(self.paths[int(i)] for i in idx), labels=self.labels[idx]
        )

    def load(self, index: int, seed: int | None) -> torch.Tensor:
        """Image ``index`` as uint8 C x size x size; ``seed`` None: the evaluation transform,
        else the training augmentation drawn from a generator seeded with ``seed``."""
        path = self.paths[index]
        size = self.options.size
        try:
            with Image.open(path) as raw:
                image = raw.convert(self.mode)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ImageDecodeError(f"{path}: cannot decode this image ({exc})") from None
        if seed is None:
            short = self.options.eval_resize
            w, h = image.size
            scale = short / min(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = image.resize(new, Image.Resampling.BILINEAR)
            left, top, cw, ch = center_crop(*image.size, size)
            image = image.crop((left, top, left + cw, top + ch))
            if image.size != (size, size):  # an extreme aspect ratio: stretch the rest
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return _to_tensor(image)
        generator = torch.Generator().manual_seed(seed)
        left, top, w, h = random_resized_crop(*image.size, self.options.scale, generator)
        image = image.resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        if torch.rand(1, generator=generator).item() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(image)

    def batches(
        self,
        batch_indices: Sequence[Sequence[int]],
        epoch_seed: int | None,
        *,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 B x C x size x size images and int64 labels of each index list, decoded by
        ``options.workers`` processes; ``epoch_seed`` None: no augmentation."""
        items = _Items(self, epoch_seed)
        loader = torch.utils.data.DataLoader(
            items,
            batch_sampler=[list(map(int, b)) for b in batch_indices if len(b)],
            num_workers=self.options.workers,
            pin_memory=pin_memory,
        )
        return iter(loader)


def item_seed(epoch_seed: int, index: int) -> int:
    """The augmentation seed of image ``index`` in the epoch whose seed is ``epoch_seed``."""
    return (epoch_seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % (2**63)


class _Items(torch.utils.data.Dataset):
    """(image, label) by index for the DataLoader (picklable: a folder and an int)."""

    def __init__(self, folder: ImageFolder, epoch_seed: int | None) -> None:
        self.folder = folder
        self.epoch_seed = epoch_seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = None if self.epoch_seed is None else item_seed(self.epoch_seed, index)
        return self.folder.load(index, seed), self.folder.labels[index]
