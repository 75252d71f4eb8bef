"""Tests for hiddenite.fileformat: the .hnn model file.

Round trips through the file with every codec; outputs bit-identical to the saved model's for
the zoo's model kinds; golden bytes; hostile and broken files (each named case, then a
hypothesis fuzz over byte mutations, truncations, extensions and re-signed header edits);
atomic writes, including a save killed halfway.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hiddenite
from hiddenite import SupermaskConfig, codecs, fileformat, models
from hiddenite.fileformat import UNEXPECTED, ModelFormatError, load, read_header, save
from hiddenite.masks import kept_count, top_fraction_mask
from hiddenite.methods import METHODS, method_config

GLOBAL = method_config("edge-popup", scope="global")
TINY_ARCH = ("mlp", {"in_channels": 1, "image_size": 4, "num_classes": 3, "hidden": (8,)})
ALL_CODECS = [None, *codecs.CODECS]


# --------------------------------------------------------------------------- helpers


def create(arch, config):
    name, kwargs = arch
    return models.create(name, config, **kwargs)


def tiny_model(density: float = 0.3, seed: int = 7):
    # every field the golden files depend on is explicit, so a changed default cannot move them
    config = SupermaskConfig(density=density, seed=seed, scale_by_density=False)
    return create(TINY_ARCH, config).eval()


def inputs(arch, batch: int = 6, seed: int = 0) -> torch.Tensor:
    shape = models.default_input_shape(arch[0], **arch[1])
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def masks_of(model) -> dict[str, torch.Tensor]:
    return {
        name: m.mask().bool()
        for name, m in model.named_modules()
        if hiddenite.is_supermask(m) and not m.trains_weights
    }


def codec_of(layer: dict) -> str:
    """The mask codec of a one-mask layer of a version 2 header."""
    return layer["parts"][0]["codec"]


def kept_of(layer: dict) -> int:
    """The kept count of an edge-popup layer of a version 2 header (its mask's ones)."""
    return layer["parts"][0]["counts"][1]


def mask_tensor(layer: dict) -> str:
    return layer["parts"][0]["tensor"]


def assert_same_model(original, loaded, x):
    assert not loaded.training
    original.eval()
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))
    a, b = masks_of(original), masks_of(loaded)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def split(blob: bytes) -> tuple[dict, bytes]:
    """(container header dict, data section) of a file's bytes."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def meta_text(header: dict) -> str:
    """The metadata JSON text of a header: a version 3 envelope's zlib field, inflated (older
    versions store it as it is)."""
    text = header["__metadata__"]["hiddenite"]
    envelope = json.loads(text)
    if envelope.get("format_version", 0) < 3:
        return text
    return zlib.decompress(base64.b64decode(envelope["zlib"])).decode()


def unpack(header: dict) -> dict:
    return json.loads(meta_text(header))


def meta_of(blob: bytes) -> dict:
    return unpack(split(blob)[0])


def envelope_of(text: str, version: int = 3) -> str:
    packed = base64.b64encode(zlib.compress(text.encode())).decode()
    return json.dumps({"format": "hiddenite-model", "format_version": version, "zlib": packed})


def signed_envelope(header: dict, envelope: str) -> dict:
    """``header`` with ``envelope`` as its ``hiddenite`` document, with a matching checksum."""
    out = dict(header)
    out["__metadata__"] = {
        "hiddenite": envelope,
        "hiddenite_sha256": hashlib.sha256(envelope.encode()).hexdigest(),
    }
    return out


def signed(header: dict, meta: dict | str) -> dict:
    """``header`` with ``meta`` (compressed in an envelope) as its metadata, checksum matching."""
    if isinstance(meta, dict) and meta.get("format_version") in (1, 2):
        return signed_envelope(header, json.dumps(meta, separators=(",", ":")))  # no envelope
    text = meta if isinstance(meta, str) else json.dumps(meta, separators=(",", ":"))
    return signed_envelope(header, envelope_of(text))


def resign(blob: bytes, edit) -> bytes:
    """Apply ``edit(meta)`` to the metadata and re-sign it (the data section is unchanged)."""
    header, data = split(blob)
    meta = unpack(header)
    edit(meta)
    return join(signed(header, meta), data)


def rebuild(blob: bytes, replace: dict[str, bytes], edit=None) -> bytes:
    """Swap tensors' bytes, fix the offsets, mask sizes and payload checksum, re-sign."""
    header, data = split(blob)
    meta = unpack(header)
    parts = []
    for key, entry in sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda kv: kv[1]["data_offsets"][0],
    ):
        b, e = entry["data_offsets"]
        parts.append((key, replace.get(key, data[b:e])))
    position = 0
    for key, part in parts:
        header[key]["data_offsets"] = [position, position + len(part)]
        if key in replace and header[key]["dtype"] == "U8":
            header[key]["shape"] = [len(part)]
        position += len(part)
    for layer in meta["layers"]:
        for part in layer["parts"]:
            if part["tensor"] in replace and part["alphabet"] is not None:
                part["bytes"] = len(replace[part["tensor"]])
    payload = b"".join(part for _, part in parts)
    meta["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    if edit is not None:
        edit(meta)
    return join(signed(header, meta), payload)


def expect_error(path: Path, pattern: str, **kwargs) -> str:
    with pytest.raises(ModelFormatError, match=pattern) as info:
        load(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert UNEXPECTED not in message
    assert "\n" not in message
    return message


@pytest.fixture
def tiny_file(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "tiny.hnn"
    save(tiny_model(), path, arch=TINY_ARCH)
    return path, path.read_bytes()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_every_codec_round_trips_through_the_file(tmp_path, codec, density):
    arch = ("conv4", {"width": 0.125, "image_size": 12})
    model = create(arch, SupermaskConfig(density=density, seed=3)).eval()
    info = save(model, tmp_path / "m.hnn", arch=arch, codec=codec)
    if codec is not None:
        assert {codec_of(layer) for layer in info.layers} == {codec}
    loaded = load(tmp_path / "m.hnn")
    assert_same_model(model, loaded, inputs(arch))


def test_auto_codec_picks_the_smallest_per_layer(tmp_path):
    arch = ("conv4", {"width": 0.25})
    model = create(arch, SupermaskConfig(density=0.1, seed=1, method=GLOBAL)).eval()
    best = save(model, tmp_path / "best.hnn", arch=arch)
    for codec in codecs.CODECS:
        fixed = save(model, tmp_path / f"{codec}.hnn", arch=arch, codec=codec)
        # entropy does not compete (entropy-grouped codes its model within one 32-bit word)
        slack = 0 if codec in codecs.AUTO_CODECS else 4
        for a, b in zip(best.layers, fixed.layers, strict=True):
            assert a["parts"][0]["bytes"] <= b["parts"][0]["bytes"] + slack
    assert len({codec_of(layer) for layer in best.layers}) > 1  # global: densities differ
    assert "entropy" not in {codec_of(layer) for layer in best.layers}


def test_reader_without_a_codec_rejects_its_files(tmp_path, monkeypatch):
    """A reader that predates a codec (here: entropy-grouped) fails clearly on the header."""
    path = tmp_path / "m.hnn"
    save(tiny_model(), path, arch=TINY_ARCH, codec="entropy-grouped")
    monkeypatch.setattr(codecs, "CODECS", ("packed", "rle", "entropy"))
    with pytest.raises(ModelFormatError, match="'entropy-grouped' is not a mask codec"):
        read_header(path)
    with pytest.raises(ModelFormatError, match="'entropy-grouped' is not a mask codec"):
        load(path)


def _trained_like(model, steps: int = 3, seed: int = 0):
    """Move BN statistics, perturb dense weights and affine terms, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("scores"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.train()


CASES = {
    "conv4": (("conv4", {"width": 0.125}), SupermaskConfig(density=0.3, seed=11)),
    "mlp": (("mlp", {"hidden": (40, 20)}), SupermaskConfig(density=0.1, seed=2)),
    "resnet20-bn": (
        ("resnet20", {"width": 0.25, "image_size": 8}),
        SupermaskConfig(density=0.5, seed=4),
    ),
    "resnet20-affine-dense-ends": (
        ("resnet20", {"width": 0.25, "image_size": 8, "bn_affine": True, "in_channels": 3}),
        SupermaskConfig(density=0.3, seed=5, keep_first_dense=True, keep_last_dense=True),
    ),
    "conv2-global": (
        ("conv2", {"width": 0.25, "image_size": 8}),
        SupermaskConfig(density=0.2, seed=6, method=GLOBAL),
    ),
    "mlp-kaiming-scaled": (
        ("mlp", {"hidden": (16,), "image_size": 6}),
        SupermaskConfig(density=0.4, init="kaiming-normal", scale_by_density=True, seed=2**63),
    ),
    "conv2-dense-mode": (
        ("conv2", {"width": 0.125, "image_size": 8}),
        SupermaskConfig(method="dense", init="kaiming-uniform"),
    ),
    "resnet18-imagenet": (
        ("resnet18-imagenet", {"width": 0.0625, "image_size": 32, "num_classes": 5}),
        SupermaskConfig(density=0.3, seed=9),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_are_bit_identical(tmp_path, case):
    arch, config = CASES[case]
    model = _trained_like(create(arch, config))
    for i in range(3):  # train-mode forwards move the batch-norm running statistics
        model(inputs(arch, batch=8, seed=100 + i))
    model.eval()
    info = save(model, tmp_path / "m.hnn", arch=arch, config=config)
    loaded = load(tmp_path / "m.hnn")
    assert_same_model(model, loaded, inputs(arch))
    original = fileformat._per_channel(model)
    rebuilt = fileformat._per_channel(loaded)
    assert original.keys() == rebuilt.keys()
    for key in original:
        assert torch.equal(original[key], rebuilt[key]), key
    assert info.file_bytes == (tmp_path / "m.hnn").stat().st_size


def test_config_is_read_from_the_model_when_not_given(tmp_path):
    arch, config = CASES["resnet20-affine-dense-ends"]
    model = create(arch, config).eval()
    info = save(model, tmp_path / "m.hnn", arch=arch)
    assert info.config == config
    arch, config = CASES["conv2-global"]
    model = create(arch, config).eval()
    assert save(model, tmp_path / "g.hnn", arch=arch).config == config


def test_loaded_model_is_on_the_device_in_eval_mode(tmp_path, tiny_file):
    path, _ = tiny_file
    model = load(path, device=torch.device("cpu"))
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_float16_params_are_smaller_and_close(tmp_path):
    arch, config = CASES["resnet20-affine-dense-ends"]
    model = _trained_like(create(arch, config))
    model(inputs(arch, batch=8))
    model.eval()
    f32 = save(model, tmp_path / "a.hnn", arch=arch, param_dtype="float32")
    f16 = save(model, tmp_path / "b.hnn", arch=arch, param_dtype="float16")
    assert f16.file_bytes < f32.file_bytes
    assert f16.meta["param_dtype"] == "float16"
    x = inputs(arch)
    with torch.no_grad():
        ref, out = model(x), load(tmp_path / "b.hnn")(x)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    assert masks_of(model).keys() == masks_of(load(tmp_path / "b.hnn")).keys()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 1000, 40_000, 70_001])
def test_zero_one_scores_reselect_every_kept_count(n):
    """The load mechanism: scores = mask as 0/1 re-selects exactly the mask at any density."""
    gen = np.random.default_rng(n)
    densities = [1e-9, 1 / n, 0.5 / n, 0.01, 0.1, 0.3, 0.5, 0.7, 0.99, 1.0, *gen.random(20)]
    for density in densities:
        kept = kept_count(n, density)
        bits = np.zeros(n, dtype=np.bool_)
        bits[gen.permutation(n)[:kept]] = True
        mask = top_fraction_mask(torch.from_numpy(bits).float(), float(density))
        assert torch.equal(mask, torch.from_numpy(bits)), (n, density, kept)


def test_all_pruned_layer_round_trips(tmp_path):
    arch = ("mlp", {"image_size": 4, "hidden": (1,), "num_classes": 3})
    model = create(arch, SupermaskConfig(density=0.1, seed=1)).eval()
    info = save(model, tmp_path / "m.hnn", arch=arch)
    assert [kept_of(layer) for layer in info.layers] == [2, 0]
    assert_same_model(model, load(tmp_path / "m.hnn"), inputs(arch))


def test_global_scope_with_ties_round_trips(tmp_path):
    arch, config = CASES["conv2-global"]
    model = create(arch, config).eval()
    with torch.no_grad():
        for m in model.modules():
            if hiddenite.is_supermask(m):
                m.scores.fill_(0.5)  # every score tied: ties go to the earliest weights
    info = save(model, tmp_path / "m.hnn", arch=arch, config=config)
    total = sum(layer["parts"][0]["n"] for layer in info.layers)
    assert sum(kept_of(layer) for layer in info.layers) == kept_count(total, config.density)
    assert_same_model(model, load(tmp_path / "m.hnn"), inputs(arch))


def test_file_is_a_valid_safetensors_container(tiny_file):
    path, blob = tiny_file
    tensors = safetensors.numpy.load_file(path)
    meta = meta_of(blob)
    for layer in meta["layers"]:
        (part,) = layer["parts"]
        data = tensors[part["tensor"]].tobytes()
        bits = codecs.decode(data, part["n"], part["codec"])
        assert int(bits.sum()) == kept_of(layer)
    header, data = split(blob)
    assert hashlib.sha256(data).hexdigest() == meta["payload_sha256"]
    text = header["__metadata__"]["hiddenite"]
    assert hashlib.sha256(text.encode()).hexdigest() == header["__metadata__"]["hiddenite_sha256"]
    # no activation quantizers or operators: written as version 3, what a v3 reader reads
    assert json.loads(text)["format_version"] == 3 < fileformat.FORMAT_VERSION


def test_saving_is_deterministic(tmp_path):
    a, b = tmp_path / "a.hnn", tmp_path / "b.hnn"
    save(tiny_model(), a, arch=TINY_ARCH)
    save(tiny_model(), b, arch=TINY_ARCH)
    assert a.read_bytes() == b.read_bytes()


def test_read_header_reads_only_the_header(monkeypatch, tmp_path):
    arch, config = CASES["conv2-dense-mode"]  # dense weights: the data section is large
    path = tmp_path / "m.hnn"
    save(create(arch, config), path, arch=arch)
    read = []
    real_open = fileformat._open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            out = self.fh.read(n)
            read.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(fileformat, "_open", lambda p: Spy(real_open(p)))
    info = read_header(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert sum(read) == 8 + header_len < path.stat().st_size / 4
    assert info.totals()["file_bytes"] == path.stat().st_size


# --------------------------------------------------------------------------- golden bytes

GOLDEN = {  # format version 3
    "mlp-entropy": "6390d944b8a017c70285ef690dd9ad0f78e93e9c6ea559d2431e4c367f796b13",
    "mlp-entropy-grouped": "471af8050b9e320bd502ed8bc709dbba752e19291fb5d0ea796e74db56ba971c",
    "mlp-packed": "b59e09f467b6deb92507d41d4130bb06beafe74ff08594c78a0c497fe97f38a8",
    "mlp-rle": "89d3f3c1390d20ca44856fd0bff1503025330535a657321d9a3f0334fa1742f4",
    "mlp-sparse-auto": "a62646d6ea26225ea7bfb1ab8d43603ce2980eda582010994108f8cd6597723e",
    "resnet20-float16": "1a9da3d5b07b9f4103622c6e3546e3bf0cb24e20a60ca15b78a435113ed17177",
}


def _golden_files(tmp_path) -> dict[str, bytes]:
    out = {}
    model = tiny_model(density=0.3, seed=7)
    for codec in codecs.CODECS:
        path = tmp_path / f"{codec}.hnn"
        save(model, path, arch=TINY_ARCH, codec=codec)
        out[f"mlp-{codec}"] = path.read_bytes()
    sparse = tiny_model(density=0.05, seed=7)  # sparse: auto mixes codecs
    info = save(sparse, tmp_path / "auto.hnn", arch=TINY_ARCH)
    assert len({codec_of(layer) for layer in info.layers}) == 2
    out["mlp-sparse-auto"] = (tmp_path / "auto.hnn").read_bytes()
    arch = ("resnet20", {"width": 0.0625, "image_size": 4, "num_classes": 2, "bn_affine": True})
    model = create(arch, SupermaskConfig(density=0.4, seed=12, scale_by_density=False)).eval()
    with torch.no_grad():
        for i, (_, value) in enumerate(sorted(fileformat._per_channel(model).items())):
            value.copy_(torch.linspace(-1.0, 1.0, value.numel()).reshape(value.shape) + i)
    save(model, tmp_path / "r.hnn", arch=arch, param_dtype="float16")
    out["resnet20-float16"] = (tmp_path / "r.hnn").read_bytes()
    return out


def test_golden_bytes(tmp_path, monkeypatch):
    """The format cannot drift unnoticed: these files must not change, byte for byte.

    If a change is intended, bump FORMAT_VERSION (or justify it) and update the digests.
    """
    monkeypatch.setattr(fileformat, "_hiddenite_version", lambda: "golden")
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in _golden_files(tmp_path).items()}
    assert digests == GOLDEN


def test_golden_packed_mask_layout(tmp_path):
    """A hand-checkable case: the packed mask tensor is numpy.packbits(bitorder='little')."""
    model = tiny_model()
    path = tmp_path / "m.hnn"
    save(model, path, arch=TINY_ARCH, codec="packed")
    tensors = safetensors.numpy.load_file(path)
    for name, mask in masks_of(model).items():
        expected = np.packbits(mask.reshape(-1).numpy(), bitorder="little")
        assert np.array_equal(tensors[f"part.{name}.mask"], expected)


# --------------------------------------------------------------------------- version 1 files

V1_DIR = Path(__file__).parent / "data" / "v1"
V1_FILES = {  # written by hiddenite 0.1.0 before the method seam (format version 1)
    "mlp-packed": "edge-popup",
    "mlp-rle-global": "edge-popup",
    "mlp-entropy-keepdense": "dense",
    "mlp-dense": "dense",
    "resnet20-float16": "edge-popup",
}


@pytest.mark.parametrize("name", sorted(V1_FILES))
def test_version_1_files_still_load_bit_identically(name):
    """Files of format version 1 load, and compute exactly what they computed when written."""
    recorded = safetensors.torch.load_file(V1_DIR / "outputs.safetensors")
    info = read_header(V1_DIR / f"{name}.hnn")
    assert info.format_version == 1
    assert V1_FILES[name] in {e.method for e in info.entries}
    model = load(V1_DIR / f"{name}.hnn")
    x = recorded[f"{name}.input"].clone()  # an aligned copy: GEMM results depend on alignment
    with torch.no_grad():
        assert torch.equal(model(x), recorded[f"{name}.output"])
    assert info.table()  # the header of an old file reads like a new one


def test_version_1_global_scope_is_checked_as_a_whole():
    info = read_header(V1_DIR / "mlp-rle-global.hnn")
    assert info.config.method == method_config("edge-popup", scope="global")
    kept = sum(e.parts[0].counts[1] for e in info.entries)
    assert kept == kept_count(sum(e.n for e in info.entries), info.config.density)


# --------------------------------------------------------------------------- version 2 files

V2_DIR = Path(__file__).parent / "data" / "v2"
V2_FILES = {  # written by hiddenite 0.1.0 with the method seam (format version 2)
    "mlp-entropy": "edge-popup",
    "mlp-sparse-auto": "edge-popup",
    "mlp-frozen": "frozen",
    "mlp-multicoat": "multicoat",
    "mlp-signed": "signed",
    "mlp-trichromatic": "trichromatic",
    "resnet20-float16": "edge-popup",
}


@pytest.mark.parametrize("name", sorted(V2_FILES))
def test_version_2_files_still_load_bit_identically(name, tmp_path):
    """Files of format version 2 (uncompressed metadata) load, compute what they computed when
    written, and re-save as version 3 with the same parts and a smaller header."""
    recorded = safetensors.torch.load_file(V2_DIR / "outputs.safetensors")
    info = read_header(V2_DIR / f"{name}.hnn")
    assert info.format_version == 2
    assert {e.method for e in info.entries} == {V2_FILES[name]}
    model = load(V2_DIR / f"{name}.hnn")
    x = recorded[f"{name}.input"].clone()  # an aligned copy: GEMM results depend on alignment
    with torch.no_grad():
        assert torch.equal(model(x), recorded[f"{name}.output"])
    used = {p.codec for e in info.entries for p in e.parts if p.alphabet is not None}
    codec = used.pop() if len(used) == 1 else None  # one codec: forced or chosen, keep it
    resaved = save(model, tmp_path / "v3.hnn", codec=codec, param_dtype=info.meta["param_dtype"])
    assert resaved.format_version == 3
    assert resaved.header_bytes < info.header_bytes
    assert [e.to_dict() for e in resaved.entries] == [e.to_dict() for e in info.entries]
    payload = (V2_DIR / f"{name}.hnn").read_bytes()[info.header_bytes :]
    assert (tmp_path / "v3.hnn").read_bytes()[resaved.header_bytes :] == payload


# --------------------------------------------------------------------------- any module


class _UserNet(nn.Module):
    """A module that is not in the zoo: two branches, one shared layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16, bias=True)
        self.shared = nn.Linear(16, 16, bias=False)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(16, 5, bias=False))
        self.norm = nn.BatchNorm1d(16)

    def forward(self, x):
        h = torch.relu(self.norm(self.embed(x)))
        return self.head(self.shared(self.shared(h)))


def _user_net(seed: int = 4, **config):
    torch.manual_seed(0)  # the plain layers' torch-random init is replaced anyway
    config = SupermaskConfig(**{"density": 0.4, "seed": seed, **config})
    model = hiddenite.supermask_(_UserNet(), config)
    with torch.no_grad():
        model(torch.randn(32, 12))  # train mode: batch-norm statistics move
    return model.eval(), config


def test_a_module_built_outside_the_zoo_round_trips(tmp_path):
    model, _ = _user_net()
    info = save(model, tmp_path / "u.hnn")
    assert info.arch is None and [e.name for e in info.entries] == ["embed", "shared", "head.1"]
    x = torch.randn(7, 12)
    for target in (_user_net()[0], _UserNet()):  # converted as when saved, or plain
        loaded = load(tmp_path / "u.hnn", model=target)
        assert loaded is target
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    with pytest.raises(ModelFormatError, match="'embed' has seed 99, the file's config says 4"):
        load(tmp_path / "u.hnn", model=_user_net(seed=99)[0])
    with pytest.raises(ModelFormatError, match=r"outside the zoo.*model="):
        load(tmp_path / "u.hnn")


def test_loading_into_a_module_names_the_first_layer_that_differs(tmp_path):
    model, _ = _user_net()
    save(model, tmp_path / "u.hnn")
    wider = _UserNet()
    wider.head[1] = nn.Linear(16, 6, bias=False)
    with pytest.raises(ModelFormatError, match=r"'head.1' has shape \[5, 16\] in the file"):
        load(tmp_path / "u.hnn", model=wider)
    other, _ = _user_net(method="dense")
    with pytest.raises(ModelFormatError, match="'embed' uses method edge-popup"):
        load(tmp_path / "u.hnn", model=other)


def test_a_ddp_style_wrapper_is_unwrapped(tmp_path):
    model, _ = _user_net()
    wrapped = nn.DataParallel(model)  # on the CPU it only wraps; DDP is unwrapped the same way
    info = save(wrapped, tmp_path / "u.hnn")
    assert [e.name for e in info.entries] == ["embed", "shared", "head.1"]


# --------------------------------------------------------------------------- save errors


def test_save_refuses_what_it_could_not_rebuild(tmp_path):
    path = tmp_path / "m.hnn"
    model = tiny_model()
    assert model.hiddenite_arch[0] == TINY_ARCH[0]  # models.create remembers the architecture
    with pytest.raises(TypeError, match="arch"):
        save(model, path, arch="mlp")
    with pytest.raises(ValueError, match="shape"):
        save(model, path, arch=("mlp", {**TINY_ARCH[1], "hidden": (9,)}))
    with pytest.raises(ValueError, match="unknown model"):
        save(model, path, arch=("nope", {}))
    with pytest.raises(ValueError, match="takes no argument"):
        save(model, path, arch=("mlp", {**TINY_ARCH[1], "depth": 3}))
    with pytest.raises(ValueError, match="seed"):
        save(model, path, arch=TINY_ARCH, config=SupermaskConfig(density=0.3, seed=8))
    with pytest.raises(ValueError, match="codec"):
        save(model, path, arch=TINY_ARCH, codec="zip")
    with pytest.raises(ValueError, match="param_dtype"):
        save(model, path, arch=TINY_ARCH, param_dtype="bfloat16")
    changed = tiny_model()
    changed.net[1].density = 0.5
    with pytest.raises(ValueError, match="density"):
        save(changed, path, arch=TINY_ARCH)
    plain = models.create("mlp", None, **TINY_ARCH[1])
    with pytest.raises(ValueError, match="no supermask layers"):
        save(plain, path, arch=TINY_ARCH)
    with pytest.raises(ValueError, match="no supermask layers"):
        save(plain, path, arch=TINY_ARCH, config=SupermaskConfig(density=0.3, seed=7))
    assert not path.exists()


# --------------------------------------------------------------------------- broken files


def test_missing_and_non_files(tmp_path):
    expect_error(tmp_path / "absent.hnn", "no such model file")
    with pytest.raises(ModelFormatError, match="directory"):
        load(tmp_path)
    for content, pattern in [
        (b"", "truncated"),
        (b"\x01\x02\x03", "truncated"),
        (b"hello world, not a model", "header length"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "start with"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "__metadata__"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00\xff\xfe{}", "UTF-8"),
    ]:
        path = tmp_path / "bad.hnn"
        path.write_bytes(content)
        expect_error(path, pattern)
        with pytest.raises(ModelFormatError, match=pattern):
            read_header(path)


def test_truncated_file(tmp_path, tiny_file):
    _, blob = tiny_file
    path = tmp_path / "cut.hnn"
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for cut in [0, 5, 8, 100, header_end - 1, header_end, len(blob) - 1]:
        path.write_bytes(blob[:cut])
        expect_error(path, "truncated|header length|cover")


def test_flipped_payload_byte(tmp_path, tiny_file):
    _, blob = tiny_file
    path = tmp_path / "flip.hnn"
    data = split(blob)[1]
    for position in [len(blob) - 1, len(blob) - len(data)]:
        bad = bytearray(blob)
        bad[position] ^= 0x10
        path.write_bytes(bytes(bad))
        expect_error(path, "payload checksum")


def test_flipped_metadata_byte(tmp_path, tiny_file):
    _, blob = tiny_file
    header = split(blob)[0]
    packed = json.loads(header["__metadata__"]["hiddenite"])["zlib"].encode()
    start = blob.index(packed)
    path = tmp_path / "seed.hnn"
    for offset in (0, len(packed) // 2, len(packed) - 3):
        bad = bytearray(blob)
        bad[start + offset] = ord("A") if bad[start + offset] != ord("A") else ord("B")
        path.write_bytes(bytes(bad))
        expect_error(path, "metadata checksum")
    assert '"seed":7' in meta_text(header)


def test_metadata_envelope_traps(tmp_path, tiny_file):
    """The version 3 envelope: bounded inflation, strict base64 and zlib, matching versions."""
    _, blob = tiny_file
    header, data = split(blob)
    text = meta_text(header)
    path = tmp_path / "e.hnn"
    bomb = base64.b64encode(zlib.compress(b" " * (fileformat.MAX_HEADER_BYTES + 1), 9)).decode()
    good = base64.b64encode(zlib.compress(text.encode())).decode()
    raw = zlib.compress(text.encode())

    def envelope(**fields) -> str:
        return json.dumps({"format": "hiddenite-model", "format_version": 3, **fields})

    for bad, pattern in [
        (envelope(zlib=bomb), "more than the .*-byte header limit"),
        (envelope(zlib=good[:-8]), "not base64|does not decompress|truncated"),
        (envelope(zlib="!!" + good), "not base64"),
        (envelope(zlib=base64.b64encode(raw[:-6]).decode()), "truncated"),
        (envelope(zlib=base64.b64encode(raw + b"junk").decode()), "extra bytes"),
        (envelope(zlib=base64.b64encode(b"not zlib at all").decode()), "does not decompress"),
        (envelope(zlib=good, extra=1), "unknown field"),
        (envelope(), "lacks field"),
        (envelope(zlib=17), "zlib field must be a string"),
        (envelope_of(text.replace('"format_version":3', '"format_version":2')), "version 2"),
        (envelope_of(text, version=2), "lacks field|unknown field"),
        (envelope_of(text, version=5), "format version 5 is not supported.*upgrade"),
        (envelope_of(text, version=4), "names format .* version 3, its envelope .* version 4"),
    ]:
        path.write_bytes(join(signed_envelope(header, bad), data))
        expect_error(path, pattern)


def test_wrong_format_version_and_name(tmp_path, tiny_file):
    _, blob = tiny_file
    header, data = split(blob)
    text = meta_text(header)
    path = tmp_path / "v.hnn"
    for version, pattern in [
        (5, "format version 5 is not supported.*upgrade"),
        (0, "version 0"),
        ("3", "format_version must be an integer"),
    ]:
        envelope = json.dumps(
            {"format": "hiddenite-model", "format_version": version, "zlib": "eJwDAAAAAAE="}
        )
        path.write_bytes(join(signed_envelope(header, envelope), data))
        expect_error(path, pattern)
    # a version 1 or 2 document inside a version 3 envelope, or the other way round
    path.write_bytes(
        join(
            signed_envelope(header, text.replace('"format_version":3', '"format_version":1')), data
        )
    )
    expect_error(path, "lacks field|unknown field")  # a version 3 header is no version 1 header
    path.write_bytes(resign(blob, lambda m: m.update(format_version="3")))
    expect_error(path, "version '3', its envelope")
    path.write_bytes(resign(blob, lambda m: m.update(format_version=2)))  # stored uncompressed
    assert read_header(path).format_version == 2  # the same document is a valid version 2 file
    path.write_bytes(resign(blob, lambda m: m.update(format="hiddenite-checkpoint")))
    expect_error(path, "names format 'hiddenite-checkpoint'")
    envelope = json.loads(header["__metadata__"]["hiddenite"])
    path.write_bytes(join(signed_envelope(header, json.dumps({**envelope, "format": "x"})), data))
    expect_error(path, "not a hiddenite model file")


def test_header_length_larger_than_file_and_oversized(tmp_path, tiny_file):
    _, blob = tiny_file
    path = tmp_path / "h.hnn"
    for length in [len(blob), len(blob) - 7, 2**63]:
        path.write_bytes(length.to_bytes(8, "little") + blob[8:])
        expect_error(path, "header length")
    big = fileformat.MAX_HEADER_BYTES + 8
    header, data = split(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (big - len(raw))
    path.write_bytes(big.to_bytes(8, "little") + raw + data)
    expect_error(path, "exceeds the .*limit")


def test_inconsistent_tensor_offsets(tmp_path):
    arch, config = CASES["resnet20-bn"]
    path = tmp_path / "o.hnn"
    save(create(arch, config).eval(), path, arch=arch)
    blob = path.read_bytes()
    header, data = split(blob)
    keys = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    cases = []
    overlap = copy.deepcopy(header)
    b, e = overlap[keys[1]]["data_offsets"]
    overlap[keys[1]]["data_offsets"] = [b - 4, e - 4]
    cases.append((overlap, "overlaps|gap|cover"))
    shape = copy.deepcopy(header)
    shape[keys[0]]["shape"] = [1, 2, 3]
    cases.append((shape, "do not hold shape"))
    past = copy.deepcopy(header)
    past[keys[-1]]["data_offsets"] = [len(data) - 1, len(data) + 7]
    cases.append((past, "out of range|do not hold"))
    swapped = copy.deepcopy(header)  # two same-size tensors trade places: caught by the order
    same = [k for k in keys if header[k]["shape"] == header[keys[0]]["shape"]][:2]
    a, c = same
    swapped[a]["data_offsets"], swapped[c]["data_offsets"] = (
        header[c]["data_offsets"],
        header[a]["data_offsets"],
    )
    cases.append((swapped, "not at its place"))
    dtype = copy.deepcopy(header)
    dtype[keys[0]]["dtype"] = "I32"
    cases.append((dtype, "dtype"))
    extra = copy.deepcopy(header)
    extra["mask.ghost"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    cases.append((extra, "do not match the metadata"))
    fields = copy.deepcopy(header)
    fields[keys[0]]["offsets"] = fields[keys[0]].pop("data_offsets")
    cases.append((fields, "lacks field"))
    for bad, pattern in cases:
        path.write_bytes(join(bad, data))
        expect_error(path, pattern)


def test_mask_decoding_to_the_wrong_length(tmp_path, tiny_file):
    _, blob = tiny_file
    meta = meta_of(blob)
    layer = meta["layers"][0]
    part = layer["parts"][0]
    n, key, kept = part["n"], part["tensor"], kept_of(layer)
    path = tmp_path / "m.hnn"
    longer = np.zeros(n + 8, dtype=np.bool_)
    longer[: kept - 8] = True
    longer[-8:] = True  # the bits past n matter: a decoder that stops at n leaves bytes over
    for codec in codecs.CODECS:

        def use(m, c=codec):
            m["layers"][0]["parts"][0]["codec"] = c

        path.write_bytes(rebuild(blob, {key: codecs.encode(longer, codec)}, use))
        expect_error(path, "does not decode|too many for 128 symbols")
    shorter = np.ones(n - 9, dtype=np.bool_)
    path.write_bytes(rebuild(blob, {key: codecs.encode(shorter, "packed")}, lambda m: None))
    expect_error(path, "does not decode")
    # right length, wrong number of kept weights: the header's counts disagree
    wrong = np.zeros(n, dtype=np.bool_)
    wrong[: kept + 1] = True
    path.write_bytes(rebuild(blob, {key: codecs.encode(wrong, "packed")}, lambda m: None))
    expect_error(path, "symbol counts .* the header says")


def test_kept_count_that_top_k_cannot_reselect(tmp_path, tiny_file):
    _, blob = tiny_file
    layer = meta_of(blob)["layers"][0]
    part = layer["parts"][0]
    kept = kept_of(layer) + 5
    bits = np.zeros(part["n"], dtype=np.bool_)
    bits[:kept] = True

    def edit(m):
        m["layers"][0]["parts"][0]["counts"] = [part["n"] - kept, kept]

    path = tmp_path / "k.hnn"
    path.write_bytes(rebuild(blob, {part["tensor"]: codecs.encode(bits, "packed")}, edit))
    expect_error(path, "keeps .* but density")


def _part(m) -> dict:
    return m["layers"][0]["parts"][0]


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda m: m.update(seed="7"), "seed must be an integer"),
        (lambda m: m.update(seed=-1), "seed"),
        (lambda m: m.update(seed=8), "differs from the supermask"),
        (lambda m: m.update(layers={}), "layers must be a list"),
        (lambda m: m.update(layers=[]), "no layers"),
        (lambda m: _part(m).update(n=str(_part(m)["n"])), "n must be an integer"),
        (lambda m: _part(m).update(n=True), "n must be an integer"),
        (lambda m: _part(m).update(n=127), "counts must be"),
        (lambda m: _part(m).update(alphabet=3), "are not what method|counts must be"),
        (lambda m: _part(m).update(alphabet=1), "alphabet .* out of range"),
        (lambda m: _part(m).update(codec="zip"), "not a mask codec"),
        (lambda m: _part(m).update(codec=None), "not a mask codec"),
        (lambda m: _part(m).update(counts=[1, 2]), "counts must be"),
        (lambda m: _part(m).update(counts=[-1, 129]), "out of range"),
        (lambda m: _part(m).update(name="signs"), "are not what method"),
        (lambda m: _part(m).update(tensor="mask.net.1"), "tensor of part"),
        (lambda m: _part(m).update(bytes=10**9), "too many"),
        (lambda m: m["layers"][0]["parts"].append(dict(_part(m))), "are not what method"),
        (lambda m: m["layers"][0].update(parts=[]), "are not what method"),
        (lambda m: m["layers"][0].update(method={"name": "frozenx"}), "unknown supermask method"),
        (lambda m: m["layers"][0].update(method="edge-popup"), "method must be a JSON object"),
        (lambda m: m["layers"][0]["method"].update(scope="galaxy"), "method config is invalid"),
        (lambda m: m["layers"][0]["method"].update(version=9), "method config is invalid"),
        (lambda m: m["layers"][0]["method"].update(name="dense"), "'dense' has no argument"),
        (lambda m: m["layers"][0].update(density=0.9), "density"),
        (lambda m: m["layers"][0].update(density=1.5), "not in \\(0, 1\\]"),
        (lambda m: m["layers"][0].update(index=3), "index"),
        (lambda m: m["layers"][0].update(shape=[8, 15]), "are not what method"),
        (lambda m: m["layers"][0].update(extra=1), "unknown field"),
        (lambda m: m["layers"][0].pop("parts"), "lacks field"),
        (lambda m: m["layers"].reverse(), "at its place"),
        (lambda m: m.update(arch=None), "outside the zoo"),
        (lambda m: m["arch"].update(name="alexnet"), "unknown architecture 'alexnet'"),
        (lambda m: m["arch"].update(name=7), "architecture name must be a string"),
        (lambda m: m["arch"]["kwargs"].update(image_size=10**9), "image_size .* out of range"),
        (lambda m: m["arch"]["kwargs"].update(image_size=4.0), "image_size must be an integer"),
        (lambda m: m["arch"]["kwargs"].update(hidden=[8] * 1000), "more than the limit"),
        (lambda m: m["arch"]["kwargs"].update(hidden=[[8]]), "hidden\\[0\\] must be an integer"),
        (lambda m: m["arch"]["kwargs"].update(hidden=[10**9]), "out of range"),
        (lambda m: m["arch"]["kwargs"].update(depth=3), "takes no argument"),
        (lambda m: m["arch"]["kwargs"].pop("num_classes"), "lack num_classes"),
        (lambda m: m["arch"]["kwargs"].update(num_classes=4), "shape .* in the module"),
        (lambda m: m["arch"].update(kwargs=[1]), "kwargs must be a JSON object"),
        (lambda m: m["supermask"].update(density=2.0), "supermask config is invalid"),
        (lambda m: m["supermask"].update(init="zeros"), "supermask config is invalid"),
        (lambda m: m["supermask"].update(colour="red"), "supermask config is invalid"),
        (lambda m: m.update(supermask=[]), "supermask must be a JSON object"),
        (lambda m: m.update(prng_version=2), "PRNG version 2"),
        (lambda m: m.update(param_dtype="float64"), "param_dtype"),
        (lambda m: m.update(payload_sha256="00"), "payload_sha256"),
        (lambda m: m.update(payload_sha256="0" * 64), "payload checksum"),
        (lambda m: m.update(comment="hi"), "unknown field"),
        (lambda m: m.pop("params"), "lacks field"),
        (lambda m: m.update(params=[{"name": "x", "tensor": "param.x", "shape": [1]}]), "match"),
        (lambda m: m.update(hiddenite_version=["0.1"]), "hiddenite_version must be a string"),
    ],
)
def test_metadata_field_errors(tmp_path, tiny_file, edit, pattern):
    _, blob = tiny_file
    path = tmp_path / "e.hnn"
    path.write_bytes(resign(blob, edit))
    expect_error(path, pattern)


def test_metadata_json_traps(tmp_path, tiny_file):
    _, blob = tiny_file
    header, data = split(blob)
    text = meta_text(header)
    path = tmp_path / "j.hnn"
    for bad, pattern in [
        (text.replace('"seed":7', '"seed":7,"seed":7'), "duplicate key"),
        (text.replace('"density":0.3', '"density":NaN', 1), "NaN"),
        (text.replace('"density":0.3', '"density":1e999', 1), "out-of-range number"),
        (text[:-1], "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "levels deep, more than the limit"),
        ('"just a string"', "not a JSON object"),
    ]:
        path.write_bytes(join(signed(header, bad), data))
        expect_error(path, pattern)
    missing = dict(header)
    missing["__metadata__"] = {"hiddenite": text}
    path.write_bytes(join(missing, data))
    expect_error(path, "lacks field")


def test_architecture_over_the_weight_cap(tmp_path, tiny_file):
    path, blob = tiny_file
    expect_error(path, "more than max_weights", max_weights=100)
    bad = tmp_path / "big.hnn"
    bad.write_bytes(resign(blob, lambda m: m["arch"].update(name="resnet50", kwargs={
        "in_channels": 3, "image_size": 224, "num_classes": 1000, "bn_affine": False,
        "width": 64.0})))  # fmt: skip
    expect_error(bad, "more than max_weights")


# --------------------------------------------------------------------------- fuzz

_FUZZ = settings(
    max_examples=400,
    deadline=10_000,  # ms per example: generous on a loaded machine, still catches a hang
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


class _Files(list):
    def __repr__(self) -> str:  # keeps hypothesis's failure reports short
        return f"<{len(self)} valid model files>"


@pytest.fixture(scope="module")
def fuzz_seed_files(tmp_path_factory) -> list[bytes]:
    """Valid small files: one per codec, one with BN parameters and dense layers, one per
    method, and a version 1 file."""
    folder = tmp_path_factory.mktemp("fuzz")
    out = []
    for codec in codecs.CODECS:
        save(tiny_model(), folder / f"{codec}.hnn", arch=TINY_ARCH, codec=codec)
        out.append((folder / f"{codec}.hnn").read_bytes())
    arch = ("resnet20", {"width": 0.0625, "image_size": 4, "num_classes": 2})
    config = SupermaskConfig(density=0.3, keep_first_dense=True)
    save(create(arch, config).eval(), folder / "r.hnn", arch=arch, param_dtype="float16")
    out.append((folder / "r.hnn").read_bytes())
    for method in sorted(METHODS):  # every method's parts: ternary, levels, floats, ...
        model = create(TINY_ARCH, SupermaskConfig(density=0.3, seed=7, method=method)).eval()
        save(model, folder / f"{method}.hnn", arch=TINY_ARCH)
        out.append((folder / f"{method}.hnn").read_bytes())
    out.append((V1_DIR / "mlp-entropy-keepdense.hnn").read_bytes())  # the version 1 reader
    return _Files(out)


def _only_format_errors(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    began = time.perf_counter()
    try:
        model = load(path, max_weights=1_000_000)
    except ModelFormatError as exc:
        assert UNEXPECTED not in str(exc), str(exc)
    else:
        assert isinstance(model, torch.nn.Module)
    assert time.perf_counter() - began < 20.0
    try:
        read_header(path)
    except ModelFormatError as exc:
        assert UNEXPECTED not in str(exc), str(exc)


@_FUZZ
@given(data=st.data())
def test_fuzz_byte_mutations(tmp_path, fuzz_seed_files, data):
    blob = bytearray(data.draw(st.sampled_from(fuzz_seed_files)))
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            blob[position] = data.draw(st.integers(0, 255))
    _only_format_errors(tmp_path / "f.hnn", bytes(blob))


@settings(_FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzz_truncate_and_extend(tmp_path, fuzz_seed_files, data):
    blob = data.draw(st.sampled_from(fuzz_seed_files))
    cut = data.draw(st.integers(0, len(blob)))
    tail = data.draw(st.binary(max_size=64)) if data.draw(st.booleans()) else b""
    _only_format_errors(tmp_path / "f.hnn", blob[:cut] + tail)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _mutate(value, path, action, new):
    """Replace, delete or add at ``path`` inside ``value`` (a JSON document)."""
    if not path:
        return new
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"{last}_extra"] = new
    elif isinstance(new, int) and not isinstance(new, bool) and isinstance(parent[last], int):
        parent[last] = parent[last] + new % 5 - 2  # nearby integers: the subtle case
    else:
        parent[last] = new
    return value


@settings(_FUZZ, max_examples=500)
@given(data=st.data())
def test_fuzz_resigned_metadata_edits(tmp_path, fuzz_seed_files, data):
    """Edits that keep the metadata checksum valid: every field check must hold on its own."""
    blob = data.draw(st.sampled_from(fuzz_seed_files))
    header, payload = split(blob)
    meta = unpack(header)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(meta))
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"])) if path else "replace"
        meta = _mutate(meta, path, action, data.draw(_JSON))
    _only_format_errors(tmp_path / "f.hnn", join(signed(header, meta), payload))


@settings(_FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzz_container_header_edits(tmp_path, fuzz_seed_files, data):
    blob = data.draw(st.sampled_from(fuzz_seed_files))
    header, payload = split(blob)
    paths = [p for p in _paths(header) if not (p and p[0] == "__metadata__" and len(p) > 1)]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"])) if path else "replace"
        with contextlib.suppress(KeyError, IndexError, TypeError):  # path gone after an edit
            header = _mutate(header, path, action, data.draw(_JSON))
        paths = list(_paths(header))
    _only_format_errors(tmp_path / "f.hnn", join(header, payload) if isinstance(header, dict)
                        else b"\x02\x00\x00\x00\x00\x00\x00\x00[]")  # fmt: skip


# --------------------------------------------------------------------------- atomic writes


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.hnn"
    save(tiny_model(seed=1), path, arch=TINY_ARCH)
    before = path.read_bytes()

    def half_then_fail(fh, data):
        fh.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(fileformat, "_write_all", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save(tiny_model(seed=2), path, arch=TINY_ARCH)
    assert path.read_bytes() == before
    assert _temps(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and pid checks are POSIX")
def test_save_killed_halfway_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.hnn"
    arch = ("mlp", {"hidden": (64,)})
    save(create(arch, SupermaskConfig(density=0.3, seed=1)), path, arch=arch, codec="packed")
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, time
        from hiddenite import SupermaskConfig, fileformat, models

        def half_then_hang(fh, data):
            fh.write(data[: len(data) // 2])
            fh.flush()
            print("HALF", flush=True)
            time.sleep(600)

        fileformat._write_all = half_then_hang
        model = models.create("mlp", SupermaskConfig(density=0.3, seed=2), hidden=(64,))
        fileformat.save(model, {str(path)!r}, arch=("mlp", {{"hidden": (64,)}}), codec="packed")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "HALF", proc.stderr.read()
        temps = _temps(tmp_path)
        assert len(temps) == 1 and 0 < temps[0].stat().st_size < len(before)
        assert path.read_bytes() == before  # mid-write: the previous file is untouched
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert path.read_bytes() == before
    load(path)
    assert len(_temps(tmp_path)) == 1  # a killed process cannot clean up ...
    model = create(arch, SupermaskConfig(density=0.3, seed=3)).eval()
    save(model, path, arch=arch)
    assert _temps(tmp_path) == []  # ... the next save to the same path does
    assert_same_model(model, load(path), inputs(arch))


def test_stale_temp_of_a_live_process_is_kept(tmp_path):
    path = tmp_path / "m.hnn"
    live = tmp_path / f".m.hnn.{os.getppid()}.abc.tmp"
    live.write_bytes(b"in progress")
    other = tmp_path / ".other.hnn.1.abc.tmp"
    other.write_bytes(b"another file's")
    save(tiny_model(), path, arch=TINY_ARCH)
    assert live.exists() and other.exists()


def test_too_few_lanes_are_refused_before_any_regeneration(tmp_path):
    """n_lanes = 1 would take one sequential PRNG step per weight (minutes for ResNet-50)."""
    model = create(("mlp", {}), SupermaskConfig(density=0.5, seed=3))
    good = tmp_path / "mlp.hnn"
    save(model, good)
    n = sum(e.n for e in read_header(good).entries)  # 784*300 + 300*100 + 100*10
    assert n == 266_200 > fileformat.MAX_PRNG_STEPS
    bad = tmp_path / "one-lane.hnn"
    bad.write_bytes(resign(good.read_bytes(), lambda m: m["supermask"].update(n_lanes=1)))
    message = expect_error(bad, "n_lanes = 1 makes regenerating the weights take 266,200")
    assert "more than the limit of 131,072" in message
    with pytest.raises(ValueError, match="n_lanes = 1"):
        save(create(("mlp", {}), SupermaskConfig(density=0.5, n_lanes=1)), tmp_path / "x.hnn")
    assert not (tmp_path / "x.hnn").exists()
    # few lanes on small layers is fine: the work is what is bounded
    small = create(("mlp", {"hidden": [8]}), SupermaskConfig(density=0.5, n_lanes=2))
    save(small, tmp_path / "small.hnn")
    load(tmp_path / "small.hnn")


def test_deeply_nested_container_header_is_a_clean_error(tmp_path, tiny_file):
    _, blob = tiny_file
    header, data = split(blob)
    text = json.dumps(header)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    raw = text.encode()
    path = tmp_path / "deep.hnn"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    expect_error(path, "container header nests 100001 levels deep")
    with pytest.raises(ModelFormatError, match="levels deep"):
        read_header(path)


def test_a_model_that_cannot_fit_in_memory_is_refused_before_building(tmp_path, monkeypatch):
    from hiddenite import resources

    model = create(("mlp", {"hidden": [8]}), SupermaskConfig(density=0.5))
    path = tmp_path / "m.hnn"
    save(model, path)
    weights = 784 * 8 + 8 * 10
    monkeypatch.setattr(resources, "available_memory", lambda: 32 * weights - 1)
    expect_error(path, f"needs about {resources.format_bytes(32 * weights)} of memory")
    monkeypatch.setattr(resources, "available_memory", lambda: 32 * weights)
    load(path)


@pytest.mark.parametrize(
    "method",
    [
        method_config("frozen", scope="global", pruned=0.3, locked=0.1),
        method_config("edge-popup", scope="global"),
        method_config("signed", scope="global"),
    ],
    ids=["frozen-global", "edge-popup-global", "signed-global"],
)
def test_inspect_shows_each_layers_own_kept_fraction_under_global_scope(tmp_path, method):
    """Under a global scope every layer keeps its own share: the header's rows (and the
    ``inspect`` table) give each layer's real kept fraction, counted here in the model."""
    cfg = SupermaskConfig(method=method, density=0.3, seed=3)
    model = models.create("mlp", cfg, in_channels=1, image_size=6, num_classes=4, hidden=(24, 12))
    path = tmp_path / "g.hnn"
    save(model, path)
    info = read_header(path)
    layers = [m for m in model.modules() if isinstance(m, hiddenite.layers.SupermaskLayer)]
    used = [int(torch.count_nonzero(m.method.weight(m).detach())) for m in layers]
    sizes = [m.weight.numel() for m in layers]
    rows = info.rows()
    assert [r["kept"] for r in rows] == used
    assert [r["density"] for r in rows] == [u / n for u, n in zip(used, sizes, strict=True)]
    assert {r["target_density"] for r in rows} == {0.3}
    assert len({round(r["density"], 4) for r in rows}) > 1  # the layers really differ
    assert sum(used) == kept_count(sum(sizes), 0.3)
    table = info.table()
    for u, n in zip(used, sizes, strict=True):
        assert f"{u / n:.4f}" in table


@pytest.fixture
def threads():
    """Set torch's thread count for one test (the load decodes layers on that many threads)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_layers_decoded_on_threads_load_the_same_model(tmp_path, threads, count):
    arch = ("resnet20", {"width": 0.25})
    model = create(arch, SupermaskConfig(density=0.3, seed=3)).eval()
    path = tmp_path / "r.hnn"
    save(model, path, arch=arch)
    threads(count)
    assert_same_model(model, load(path), inputs(arch))


@pytest.mark.parametrize("count", [1, 2])
def test_the_first_bad_layer_in_file_order_is_named_on_any_thread_count(tmp_path, threads, count):
    arch = ("mlp", {"in_channels": 1, "image_size": 4, "num_classes": 3, "hidden": (8, 8, 8)})
    good = tmp_path / "good.hnn"
    save(create(arch, SupermaskConfig(density=0.3, seed=5)), good, arch=arch)
    blob = good.read_bytes()
    meta = meta_of(blob)
    assert len(meta["layers"]) == 4
    bad = {}
    for layer in (meta["layers"][1], meta["layers"][-1]):  # two layers whose streams are cut
        part = layer["parts"][0]
        bad[part["tensor"]] = codecs.encode(np.ones(part["n"] - 9, dtype=np.bool_), "packed")
    names = [layer["name"] for layer in meta["layers"]]

    def as_packed(m):
        for layer in m["layers"]:
            if layer["parts"][0]["tensor"] in bad:
                layer["parts"][0]["codec"] = "packed"

    path = tmp_path / "two-bad.hnn"
    path.write_bytes(rebuild(blob, bad, as_packed))
    threads(count)
    message = expect_error(path, "does not decode")
    assert repr(names[1]) in message and repr(names[-1]) not in message
