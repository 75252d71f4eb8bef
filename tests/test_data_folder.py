"""Tests for hiddenite.data_folder: image folders on tiny PNG/JPEG files made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hiddenite.cli import main
from hiddenite.data import dataset_info, iterate_batches, load_dataset, train_val_split
from hiddenite.data_folder import (
    FolderOptions,
    ImageDecodeError,
    ImageFolder,
    center_crop,
    random_resized_crop,
    scan_folder,
)
from hiddenite.errors import ConfigError, DatasetError
from hiddenite.train import TrainConfig, load_trained, train


def write(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root, classes=("zebra", "ant", "Bee"), per_class=4, grey=False, side=12):
    """PNG and JPEG images of varied sizes; class c is brightest in channel c % 3."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for i in range(per_class):
            shape = (side + i, side + 2 * i) if grey else (side + i, side + 2 * i, 3)
            array = rng.integers(0, 60, size=shape, dtype=np.uint8)
            if not grey:
                array[..., c % 3] += 150
            write(root / name / f"img{i}.{'png' if i % 2 else 'jpg'}", array)
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "imgs")


def opts(**kwargs) -> FolderOptions:
    return FolderOptions(**{"size": 8, "workers": 0, **kwargs})


# --------------------------------------------------------------------------- scanning


def test_classes_sorted_and_indexing_stable(folder):
    (folder / "ant" / "notes.txt").write_text("not an image")
    (folder / ".cache").mkdir()
    write(folder / "ant" / ".hidden.png", np.zeros((4, 4, 3), np.uint8))
    classes, paths, labels, mode = scan_folder(folder)
    assert classes == ("Bee", "ant", "zebra")  # code-point order: upper case first
    assert mode == "RGB"
    assert [p.relative_to(folder).as_posix() for p in paths[:4]] == [
        f"Bee/img{i}.{'png' if i % 2 else 'jpg'}" for i in range(4)
    ]
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    data = ImageFolder.open(folder, opts())
    assert data.labels.tolist() == labels and data.num_classes == 3 and len(data) == 12
    assert ImageFolder.open(folder, opts()).paths == data.paths  # same again


def test_shapes_modes_and_statistics(tmp_path, folder):
    data = ImageFolder.open(folder, opts())
    x = data.load(5, None)
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
    assert data.load(5, 123).shape == (3, 8, 8)
    assert (data.in_channels, data.image_size, data.mean) == (3, 8, (0.485, 0.456, 0.406))
    grey = ImageFolder.open(folder, opts(mode="L"))
    assert grey.load(0, None).shape == (1, 8, 8) and grey.in_channels == 1
    only_grey = ImageFolder.open(make_folder(tmp_path / "g", grey=True), opts())
    assert only_grey.mode == "L" and only_grey.std == (0.226,)


def test_eval_transform_against_a_hand_computed_case(tmp_path):
    # 8 x 16 (h x w) image: shorter side 8 == resize, so no resampling; centre crop = cols 4..11
    array = np.arange(8 * 16 * 3, dtype=np.uint8).reshape(8, 16, 3)
    write(tmp_path / "f" / "a" / "x.png", array)
    data = ImageFolder.open(tmp_path / "f", opts(resize=8))
    expected = torch.from_numpy(array[:, 4:12].transpose(2, 0, 1).copy())
    assert torch.equal(data.load(0, None), expected)
    assert center_crop(16, 8, 8) == (4, 0, 8, 8)
    assert FolderOptions(size=224).eval_resize == 256


def test_augmentation_is_crop_or_mirror_and_seeded(tmp_path):
    # square image of side == size and scale 1: the crop is the whole image (after ten
    # rejected tries or one exact draw), so the output is the image or its mirror image
    array = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write(tmp_path / "f" / "a" / "x.png", array)
    data = ImageFolder.open(tmp_path / "f", opts(scale=1.0))
    image = torch.from_numpy(array.transpose(2, 0, 1).copy())
    outs = [data.load(0, seed) for seed in range(40)]
    flips = [torch.equal(o, image.flip(-1)) for o in outs]
    assert all(torch.equal(o, image) or f for o, f in zip(outs, flips, strict=True))
    assert 8 <= sum(flips) <= 32  # p = 1/2
    assert torch.equal(data.load(0, 7), data.load(0, 7))


def test_random_resized_crop_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop(40, 30, 0.08, g)
        assert left >= 0 and left + w <= 40 and top >= 0 and top + h <= 30
        assert 0.08 * 1200 * 0.9 <= w * h <= 1200
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a 100 x 10 strip: no try fits, the fallback is the centre crop of ratio 4/3
    assert random_resized_crop(100, 10, 0.5, g) == (43, 0, 13, 10)


def test_batches_deterministic_across_workers_and_shards(folder):
    one = ImageFolder.open(folder, opts())
    two = ImageFolder.open(folder, opts(workers=2))

    def batches(data, seed, shard=None):
        g = torch.Generator().manual_seed(seed)
        return list(iterate_batches(data, 5, shuffle=True, generator=g, augment=True, shard=shard))

    a, b = batches(one, 3), batches(two, 3)
    assert len(a) == 3 and [len(y) for _, y in a] == [5, 5, 2]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == torch.float32 and xa.shape[1:] == (3, 8, 8)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    pieces = [batches(one, 3, (r, 2)) for r in (0, 1)]
    for i, (x, y) in enumerate(a):
        assert torch.equal(torch.cat([pieces[0][i][0], pieces[1][i][0]]), x)
        assert torch.equal(torch.cat([pieces[0][i][1], pieces[1][i][1]]), y)
    assert not torch.equal(batches(one, 4)[0][0], a[0][0])


def test_split_and_subset_keep_labels(folder):
    data = load_dataset("imagefolder", "train", folder, {"size": 8, "workers": 0})
    train_set, val_set = train_val_split(data, 0.25, seed=0)
    assert (len(train_set), len(val_set), val_set.split) == (9, 3, "val")
    paths = dict(zip(data.paths, data.labels.tolist(), strict=True))
    for part in (train_set, val_set):
        assert [paths[p] for p in part.paths] == part.labels.tolist()


# --------------------------------------------------------------------------- errors


def error(match, *args, **kwargs):
    with pytest.raises(DatasetError, match=match) as info:
        ImageFolder.open(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_folder_errors(tmp_path):
    error("no such folder", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    error("is empty", tmp_path / "empty")
    write(tmp_path / "flat" / "a.png", np.zeros((4, 4), np.uint8))
    error(r"has no class subfolders \(1 files", tmp_path / "flat")
    make_folder(tmp_path / "noimg", per_class=1)
    (tmp_path / "noimg" / "yak").mkdir()
    (tmp_path / "noimg" / "yak" / "readme.txt").write_text("x")
    error("yak holds no .jpg/.jpeg/.png images", tmp_path / "noimg")


def test_undecodable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "bad", per_class=1)
    (root / "ant" / "broken.jpg").write_bytes(b"this is not a jpeg")
    message = error("broken.jpg: not a readable JPEG/PNG image", root)
    assert str(root / "ant" / "broken.jpg") in message


def test_truncated_image_fails_in_a_worker_with_one_line(tmp_path):
    root = make_folder(tmp_path / "trunc", per_class=1)
    write(
        root / "ant" / "big.png", np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    )
    good = (root / "ant" / "big.png").read_bytes()
    (root / "ant" / "big.png").write_bytes(good[: len(good) // 2])  # header intact
    data = ImageFolder.open(root, opts(workers=1))
    with pytest.raises(ImageDecodeError) as info:
        list(iterate_batches(data, 3, shuffle=False, generator=None, augment=False))
    message = str(info.value)
    assert message.startswith(str(root / "ant" / "big.png")) and "cannot decode" in message
    assert "Traceback" not in message and "\n" not in message


def test_mixed_modes(tmp_path):
    root = make_folder(tmp_path / "mixed", per_class=2)
    write(root / "ant" / "grey.png", np.zeros((9, 9), np.uint8))
    error(r"mixes grey and colour images: RGB \(6 files.*L \(1 files.*mode=RGB", root)
    assert ImageFolder.open(root, opts(mode="RGB")).load(2, None).shape == (3, 8, 8)


def test_classes_must_match_the_run(folder):
    error("missing: cat; unexpected: ant", folder, opts(classes=["Bee", "cat", "zebra"]))
    assert ImageFolder.open(folder, opts(classes=["Bee", "ant", "zebra"])).num_classes == 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"size": 0}, "size: must be an integer >= 1"),
        ({"size": 8, "resize": 4}, "resize: 4 is smaller than size 8"),
        ({"scale": 0}, r"scale: must be a number in \(0, 1\]"),
        ({"mode": "CMYK"}, "mode: unknown 'CMYK'"),
        ({"classes": ["a", "a"]}, "names must be unique"),
        ({"colour": 1}, "unknown image-folder option"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(DatasetError, match=match):
        FolderOptions.from_dict(options)


def test_dataset_info_needs_settled_options():
    with pytest.raises(DatasetError, match="class list and image mode are read from the folder"):
        dataset_info("imagefolder", {"size": 32})
    assert dataset_info("imagefolder", {"size": 32, "mode": "L", "classes": ["a", "b"]}) == (
        1,
        32,
        2,
    )
    with pytest.raises(ConfigError, match="data_options: data set 'fashion-mnist' takes no"):
        TrainConfig(dataset="fashion-mnist", data_options={"size": 8})


# --------------------------------------------------------------------------- training


def test_train_a_resnet_on_a_folder_and_evaluate(tmp_path, folder, capsys):
    config = TrainConfig(
        model="resnet20",
        model_kwargs={"width": 0.25},
        dataset="imagefolder",
        data_options={"size": 8, "workers": 0},
        epochs=1,
        batch_size=4,
        augment=True,
        val_fraction=0.25,
    )
    result = train(config, tmp_path / "run", data_dir=folder, log=None, progress=False)
    settled = result.config.data_options
    assert settled["classes"] == ["Bee", "ant", "zebra"] and settled["mode"] == "RGB"
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["data_options"]["classes"] == ["Bee", "ant", "zebra"]
    model, _ = load_trained(tmp_path / "run")
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "imagefolder" and report["examples"] == 12
    # a folder with other classes is refused in one line
    other = make_folder(tmp_path / "other", classes=("x", "y", "z"), per_class=1)
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(other)]) == 2
    assert "differ from the run's 3" in capsys.readouterr().err


def test_cli_train_imagefolder_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["train", "--dataset", "imagefolder", "--out", str(tmp_path / "r")]
    assert main([*argv, "--data-dir", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(argv) == 2
    assert "imagefolder has no default folder" in capsys.readouterr().err
    assert main([*argv, "--data-dir", str(tmp_path), "--data-option", "size=0"]) == 2
    assert "size: must be an integer >= 1" in capsys.readouterr().err
