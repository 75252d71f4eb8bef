"""Model file format version 4: declared activation quantizers and per-layer operators.

Round trips are bit-exact (quantizer state, outputs); a model with neither is still written as
version 3; a version 3 file that stored quantizer buffers as per-channel tensors still loads
(fixture written by the writer before version 4); every edit of the new declarations is a
ModelFormatError (the edits are shared with the hostile-input fuzz run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import hiddenite
from hiddenite import SupermaskConfig, models, supermask_
from hiddenite.fileformat import ModelFormatError, load, read_header, save
from hiddenite.ops import operator_choices, operator_for, use_operator
from hiddenite.quant import ActQuantConfig, ActQuantizer, add_act_quantizers_, calibrate, quantizers
from hostile_cases import PRECISION_EDITS, _resign_model, precision_model

V3_DIR = Path(__file__).parent / "data" / "v3"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def quantized(name: str, bits: int, config: SupermaskConfig, **kwargs) -> nn.Module:
    model = models.create(name, config, **kwargs)
    add_act_quantizers_(model, ActQuantConfig(bits=bits))
    shape = models.default_input_shape(name, **kwargs)
    gen = torch.Generator().manual_seed(0)
    calibrate(model, [torch.randn(8, *shape, generator=gen) for _ in range(2)])
    return model.eval()


def quantizer_state(model: nn.Module) -> dict[str, tuple]:
    return {
        n: (q.config, *(getattr(q, k).clone() for k in ("scale", "signed", "lo", "hi")))
        for n, q in quantizers(model)
    }


@pytest.mark.parametrize(
    "name,kwargs,bits,param_dtype",
    [
        ("mlp", {"hidden": [24, 12]}, 4, "float32"),
        ("conv2", {"width": 0.25, "image_size": 8}, 6, "float32"),
        ("conv2", {"width": 0.25, "image_size": 8}, 8, "float16"),
    ],
)
def test_zoo_model_with_quantizers_round_trips_bit_exactly(
    tmp_path, name, kwargs, bits, param_dtype
):
    model = quantized(name, bits, SupermaskConfig(density=0.5, seed=4), **kwargs)
    path = tmp_path / "q.hnn"
    info = save(model, path, param_dtype=param_dtype)
    assert info.format_version == 4
    assert [q.layer for q in info.quantizers] == [
        n.rpartition(".")[0] for n, _ in quantizers(model)
    ]
    assert {q.bits for q in info.quantizers} == {bits}
    assert not any("act_quant" in p["name"] for p in info.meta["params"])  # declared instead
    loaded = load(path)  # no model=: the zoo model and its quantizers are rebuilt
    want, got = quantizer_state(model), quantizer_state(loaded)
    assert list(got) == list(want)
    for key in want:
        assert want[key][0] == got[key][0]
        assert all(same_bits(a, b) for a, b in zip(want[key][1:], got[key][1:], strict=True))
    x = torch.randn(5, *models.default_input_shape(name, **kwargs))
    if param_dtype == "float32":
        assert same_bits(loaded(x), model(x))
    # the scales are exact float32 values in the header, whatever the param dtype
    header = read_header(path)
    assert [q.scale for q in header.quantizers] == [float(q.scale) for _, q in quantizers(model)]


def test_quantizer_grid_matches_the_declaration(tmp_path):
    """Independent check: the loaded quantizer maps x to clamp(round(x / s), 0, 2^b - 1) * s
    with s and b as the header declares them (unsigned: after a ReLU)."""
    model = quantized("mlp", 3, SupermaskConfig(density=0.5, seed=5), hidden=[16])
    save(model, tmp_path / "q.hnn")
    (decl,) = read_header(tmp_path / "q.hnn").quantizers
    assert decl.layer == "net.3" and not decl.signed and decl.zero_point == 0
    q = dict(load(tmp_path / "q.hnn").named_modules())["net.3"].act_quant
    x = torch.linspace(-1, 10 * decl.scale, 101)
    s = torch.tensor(decl.scale, dtype=torch.float32)
    want = torch.clamp(torch.round(x / s), 0, 2**3 - 1) * s
    assert same_bits(q(x), want)


def test_operators_are_declared_and_restored(tmp_path):
    model = quantized("mlp", 4, SupermaskConfig(density=0.5, seed=6), hidden=[16])
    use_operator(model, "mitchell", phase="inference", layers=["net.3"])
    use_operator(model, "mitchell-bwd", phase="training", layers=["net.1"])
    info = save(model, tmp_path / "m.hnn")
    assert [o.to_dict() for o in info.operators] == [
        {"layer": "net.1", "training": "mitchell-bwd", "inference": "exact"},
        {"layer": "net.3", "training": "exact", "inference": "mitchell"},
    ]
    loaded = load(tmp_path / "m.hnn")
    assert operator_choices(loaded) == operator_choices(model)
    x = torch.randn(4, 1, 28, 28)
    assert same_bits(loaded(x), model(x))
    # into a module: a layer the file declares nothing for runs exact again
    target = models.create("mlp", SupermaskConfig(density=0.5, seed=6), hidden=[16])
    use_operator(target, "mitchell")
    load(tmp_path / "m.hnn", model=target)
    assert operator_choices(target) == operator_choices(model)


def test_plain_models_are_still_written_as_version_3(tmp_path):
    model = models.create("mlp", SupermaskConfig(density=0.5, seed=7), hidden=[16])
    info = save(model, tmp_path / "p.hnn")
    assert info.format_version == 3 and info.quantizers == () and info.operators == ()
    doc = info.to_dict()
    assert doc["activations"] == [] and doc["operators"] == []
    assert "activations into" not in info.table()


def test_loading_into_a_module(tmp_path):
    model = quantized("mlp", 4, SupermaskConfig(density=0.5, seed=8), hidden=[16, 16])
    save(model, tmp_path / "q.hnn")
    x = torch.randn(3, 1, 28, 28)
    bare = models.create("mlp", SupermaskConfig(density=0.5, seed=8), hidden=[16, 16])
    assert same_bits(load(tmp_path / "q.hnn", model=bare)(x), model(x))  # quantizers attached
    again = quantized("mlp", 4, SupermaskConfig(density=0.5, seed=8), hidden=[16, 16])
    for _, q in quantizers(again):  # other scales: refilled from the file
        q.scale.fill_(1.0)
    assert same_bits(load(tmp_path / "q.hnn", model=again)(x), model(x))
    other = models.create("mlp", SupermaskConfig(density=0.5, seed=8), hidden=[16, 16])
    add_act_quantizers_(other, ActQuantConfig(first_layer=True))  # one more quantizer
    with pytest.raises(ModelFormatError, match="has activation quantizers on"):
        load(tmp_path / "q.hnn", model=other)


def test_save_refuses_quantizers_that_are_still_observing(tmp_path):
    model = models.create("mlp", SupermaskConfig(density=0.5, seed=9), hidden=[16])
    add_act_quantizers_(model)
    with pytest.raises(ValueError, match=r"still observing: run hiddenite\.quant\.calibrate"):
        save(model, tmp_path / "q.hnn")
    assert not (tmp_path / "q.hnn").exists()


def build_v3_module() -> nn.Module:
    """The module tests/data/v3/seq-quant-user.hnn was written from (before version 4)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    supermask_(m, SupermaskConfig(density=0.5, seed=3))
    add_act_quantizers_(m, ActQuantConfig(bits=5))
    calibrate(m, [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))])
    return m


def test_version_3_file_with_quantizer_buffers_still_loads():
    path = V3_DIR / "seq-quant-user.hnn"
    info = read_header(path)
    assert info.format_version == 3 and info.quantizers == ()
    assert "3.act_quant.scale" in {p["name"] for p in info.meta["params"]}
    loaded = load(path, model=build_v3_module())
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    want = load_file(V3_DIR / "outputs.safetensors")["seq-quant-user"]
    assert same_bits(loaded(x), want)


def test_version_3_file_resaved_as_version_4(tmp_path):
    loaded = load(V3_DIR / "seq-quant-user.hnn", model=build_v3_module())
    info = save(loaded, tmp_path / "r.hnn")
    assert info.format_version == 4
    assert [(q.layer, q.bits) for q in info.quantizers] == [("3", 5)]
    assert not any("act_quant" in p["name"] for p in info.meta["params"])
    again = load(tmp_path / "r.hnn", model=build_v3_module())
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert same_bits(again(x), load_file(V3_DIR / "outputs.safetensors")["seq-quant-user"])


@pytest.fixture(scope="module")
def precision_blob(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("p") / "p.hnn"
    save(precision_model(), path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "name,edit,must_fail", PRECISION_EDITS, ids=[e[0] for e in PRECISION_EDITS]
)
def test_edited_declarations_raise_model_format_error(
    tmp_path, precision_blob, name, edit, must_fail
):
    path = tmp_path / "e.hnn"
    path.write_bytes(_resign_model(precision_blob, edit))
    if must_fail:
        with pytest.raises(ModelFormatError):
            load(path)
    else:
        try:
            model = load(path)
        except ModelFormatError:
            return
        assert isinstance(model, nn.Module)


def test_precision_model_file_header_is_readable(precision_blob, tmp_path):
    path = tmp_path / "p.hnn"
    path.write_bytes(precision_blob)
    info = read_header(path)
    assert [(q.layer, q.bits, q.signed) for q in info.quantizers] == [("net.3", 4, False)]
    text = info.table()
    assert "activations into net.3: 4-bit unsigned" in text
    assert "operator of net.3: exact in training, mitchell in inference" in text
    doc = json.loads(info.to_json())
    assert doc["format_version"] == 4 and doc["operators"][0]["inference"] == "mitchell"
    model = hiddenite.load(path)
    assert operator_for(dict(model.named_modules())["net.3"]).name == "mitchell"
    assert isinstance(dict(model.named_modules())["net.3"].act_quant, ActQuantizer)
