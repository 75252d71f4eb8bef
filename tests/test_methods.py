"""Conformance: every registered supermask method through the same checks.

Each method, with its default arguments, on a small MLP and a small conv net: the config
round-trips through JSON; the declared parts are what the method exports; a training step
reaches the learned state; checkpoint state and the model file rebuild bit-identical outputs;
the summary's coded part bytes equal the file's; ``to_dense`` and ONNX-free dense copies give
identical outputs; a corrupted part raises only ModelFormatError.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save, summary, to_dense
from hiddenite.errors import ConfigError
from hiddenite.fileformat import ModelFormatError, read_header
from hiddenite.layers import SupermaskLayer
from hiddenite.methods import METHODS, get_method, method_config

# every registered method with its defaults, plus non-default configurations that take another
# code path ("name:key=value;...", a value is JSON where it parses, else a string); frozen
# composed with every freezable method (locked positions included)
METHOD_NAMES = [
    *sorted(METHODS),
    "frozen:scope=global",
    "frozen:inner=trichromatic;locked=0.1",
    'frozen:inner=trichromatic;locked=0.05;inner_args={"magnitude_coats":[0.12,0.04]}',
    "frozen:inner=signed;locked=0.1",
    "frozen:inner=multicoat;locked=0.05",
    "progressive:bits=4;train_bits=[1,2,4];affine=true",
]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def example(name: str):
    """The method config an example name stands for."""
    method, _, args = name.partition(":")
    pairs = (arg.split("=", 1) for arg in args.split(";") if arg)
    return method_config(method, **{key: _value(value) for key, value in pairs})


ARCHS = {
    "mlp": ("mlp", {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}),
    "conv": ("conv2", {"in_channels": 1, "image_size": 8, "num_classes": 3, "width": 0.125}),
}


def build(method: str, arch: str = "mlp", seed: int = 3, **config):
    name, kwargs = ARCHS[arch]
    cfg = SupermaskConfig(method=example(method), seed=seed, **{"density": 0.3, **config})
    return models.create(name, cfg, **kwargs)


def inputs(arch: str = "mlp", batch: int = 5) -> torch.Tensor:
    name, kwargs = ARCHS[arch]
    shape = models.default_input_shape(name, **kwargs)
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(11))


def layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SupermaskLayer)]


def train_steps(model, arch: str, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = inputs(arch, 16)
    y = torch.arange(16) % ARCHS[arch][1]["num_classes"]
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_config_round_trips_and_rejects_unknown_arguments(name):
    cfg = example(name)
    assert method_config(cfg.to_dict()) == cfg
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    full = SupermaskConfig(method=cfg, density=0.25)
    assert SupermaskConfig.from_json(full.to_json()) == full
    with pytest.raises(ConfigError, match="no argument"):
        method_config(cfg.method, no_such_argument=1)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_parts_are_what_the_method_exports(name, arch):
    model = build(name, arch)
    for _, layer in layers(model):
        shape = tuple(layer.weight.shape)
        declared = layer.method.parts(shape, layer.method_config, layer.density)
        exported = layer.method.export(layer)
        assert sorted(exported) == sorted(p.name for p in declared)
        for part in declared:
            values = np.asarray(exported[part.name])
            assert values.shape == (part.n,)
            if part.alphabet is None:
                assert values.dtype == np.float32
            else:
                assert values.dtype in (np.bool_, np.uint8)
                assert int(values.max(initial=0)) < part.alphabet


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_file_round_trip_is_bit_identical(name, arch, tmp_path):
    model = build(name, arch)
    train_steps(model, arch)
    x = inputs(arch)
    with torch.no_grad():
        expected = model(x)
    info = save(model, tmp_path / "m.hnn")
    again = load(tmp_path / "m.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), expected)
    # the coded parts the summary counts are the file's, byte for byte
    rows = [r for r in summary(model, print_fn=None).rows if r.method is not None]
    assert sum(r.part_bytes for r in rows) == sum(e.bytes for e in info.entries)
    for row, entry in zip(rows, info.entries, strict=True):
        assert [p.bytes for p in row.parts] == [p.bytes for p in entry.parts]
    t = read_header(tmp_path / "m.hnn").totals()
    assert t["mask_bytes"] + t["float_part_bytes"] == sum(r.part_bytes for r in rows)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_checkpoint_state_rebuilds_identical_outputs(name):
    model = build(name, "conv")
    train_steps(model, "conv")
    fresh = build(name, "conv")
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = inputs("conv")
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_training_reaches_the_learned_state(name):
    model = build(name, "mlp")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, "mlp", steps=2)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "a training step changed nothing"


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_to_dense_gives_identical_outputs(name, arch):
    model = build(name, arch)
    train_steps(model, arch)
    plain = to_dense(model)
    assert not layers(plain)
    x = inputs(arch)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_frozen_weights_regenerate_from_the_seed(name):
    a, b = build(name, "conv", seed=5), build(name, "conv", seed=5)
    c = build(name, "conv", seed=6)
    for (_, la), (_, lb), (_, lc) in zip(layers(a), layers(b), layers(c), strict=True):
        assert torch.equal(la.weight, lb.weight)
        assert not torch.equal(la.weight, lc.weight)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_corrupted_part_is_a_model_format_error(name, tmp_path):
    model = build(name, "mlp")
    info = save(model, tmp_path / "m.hnn")
    blob = bytearray((tmp_path / "m.hnn").read_bytes())
    entry = info.entries[0].parts[-1]
    position = 8 + info.header_bytes - 8 + info.tensors[entry.tensor].begin
    blob[position] ^= 0x5A
    (tmp_path / "bad.hnn").write_bytes(bytes(blob))
    with pytest.raises(ModelFormatError, match="checksum"):
        load(tmp_path / "bad.hnn")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_cost_is_declared_for_every_layer(name):
    cfg = example(name)
    method = get_method(cfg.method)
    cost = method.cost((8, 4, 3, 3), cfg, 0.3)
    assert cost.weight_source in ("prng", "stored")
    assert cost.weight_bits >= 1
    parts = method.parts((8, 4, 3, 3), cfg, 0.3)
    assert all(p.n <= math.prod((8, 4, 3, 3)) or p.alphabet is None for p in parts)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hw_model_bytes_equal_the_file(name, tmp_path):
    from hiddenite.hw import simulate

    model = build(name, "mlp")
    train_steps(model, "mlp")
    info = save(model, tmp_path / "m.hnn")
    report = simulate(tmp_path / "m.hnn")
    expected = info.file_bytes - info.header_bytes
    assert report.totals["model_bytes"] == expected
    assert report.totals["offchip_model_bytes"] == expected
    for row, entry in zip(report.rows, info.entries, strict=True):
        cost = get_method(entry.config.method).cost(entry.shape, entry.config, entry.density)
        assert row.weight_source == cost.weight_source
        moved = row.dram_weight_read_bytes + row.dram_mask_read_bytes
        assert moved == entry.bytes  # every coded part, charged by the method's cost
