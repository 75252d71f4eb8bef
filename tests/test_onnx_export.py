"""Tests for hiddenite.onnx_export: activation quantizers exported exactly, approximate
operators refused (or exported exact on request), plain models unchanged.

Bit-exact comparisons use *dyadic* models: signed-constant weights of fan-in 8 or 32 are
exactly +-1/2 or +-1/4, inputs are multiples of 1/8 and quantizer scales powers of two, so every
product and sum is exact in float32 whatever order a runtime sums in; onnxruntime and torch
must then agree bit for bit, including on the many values that fall exactly halfway between
two quantization levels (ties). Models with ordinary weights agree to float32 rounding of the
matrix products (summation order, about 1 ulp of the largest partial sum): 1e-5, on fixed
inputs; a value within that rounding of a quantizer's decision boundary would move one level
(benchmarks/onnx_agreement.py measures how rarely: 2 and 5 of 10,000 test images, BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, supermask_, to_dense
from hiddenite.checkpoint import Checkpoint, save_checkpoint
from hiddenite.cli import main
from hiddenite.errors import UserError
from hiddenite.onnx_export import OnnxExport, export_onnx, onnx_bytes
from hiddenite.ops import OperatorChoice, operator_choice, use_operator
from hiddenite.quant import (
    QUANTIZER_NAME,
    ActQuantConfig,
    add_act_quantizers_,
    attach_quantizer_,
    calibrate,
    input_quantizers,
    quantizer_of,
)
from hiddenite.train import TrainConfig, build_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SHAPE = (2, 4, 4)


def _float_copy(model):
    """``to_dense(model)`` without its activation quantizers: the float network the export
    held before it kept them."""
    dense = to_dense(model)
    for _, module in dense.named_modules():
        if quantizer_of(module) is not None:
            del module._modules[QUANTIZER_NAME]
            module._forward_pre_hooks.clear()
    return dense


def _run(data: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _dyadic(kind: str, bits: int = 4, scale: float = 0.25) -> nn.Module:
    """A supermask model whose arithmetic is exact in float32 (see the module docstring), with a
    signed quantizer on the image and unsigned ones after each ReLU, all at ``scale``."""
    if kind == "conv":
        layers = [
            nn.Conv2d(2, 8, 2, bias=False),  # fan-in 8: weights +-1/2
            nn.ReLU(),
            nn.Conv2d(8, 8, 2, bias=False),  # fan-in 32: +-1/4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32, 10, bias=False),  # 8 x 2 x 2 inputs: +-1/4
        ]
    else:
        layers = [
            nn.Flatten(),
            nn.Linear(32, 32, bias=False),
            nn.ReLU(),
            nn.Linear(32, 8, bias=False),
            nn.ReLU(),
            nn.Linear(8, 10, bias=False),  # fan-in 8: +-1/2
        ]
    model = nn.Sequential(*layers)
    supermask_(model, SupermaskConfig(density=0.5, seed=7, scale_by_density=False))
    add_act_quantizers_(model, ActQuantConfig(bits=bits, first_layer=True))
    for layer, q in input_quantizers(model):
        q.set_frozen(signed=layer == ("0" if kind == "conv" else "1"), scale=scale, lo=-1, hi=1)
    return model.eval()


def _dyadic_input(batch: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-24, 25, (batch, *SHAPE), generator=gen).float() / 8


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_dyadic_model_bit_exact_with_ties(kind):
    model = _dyadic(kind)
    for _, p in to_dense(model).named_parameters():  # the premise: weights are k/4
        w = p.detach()
        assert torch.equal(w * 4, torch.round(w * 4))
    # count the quantizer inputs that lie exactly halfway between two levels
    ties, seen = [], []

    def record(module, inputs):
        v = inputs[0] / 0.25
        seen.append(v.numel())
        ties.append(int((v - torch.floor(v) == 0.5).sum()))

    handles = [m.register_forward_pre_hook(record, prepend=True) for _, m in _layers(model)]
    x = _dyadic_input()
    ref = _torch(model, x)
    for h in handles:
        h.remove()
    assert all(t > 0 for t in ties), (ties, seen)  # every quantizer meets ties

    data = onnx_bytes(model, SHAPE)
    assert _ops(data).count("Round") == 3 and _ops(data).count("Clip") == 3
    got = _run(data, x)
    np.testing.assert_array_equal(got, ref)
    # the float network (what the export held before quantizers) computes something else
    assert not np.array_equal(_torch(_float_copy(model), x), ref)


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("signed", [False, True])
def test_hand_made_ties_and_clip(signed):
    """An identity Linear behind a 4-bit quantizer of scale 0.5: the output is the quantized
    input, which is written down by hand (round half to even, then clip)."""
    layer = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(10))
    attach_quantizer_(layer, ActQuantConfig(bits=4), "fc").set_frozen(
        signed=signed, scale=0.5, lo=-1, hi=1
    )
    model = nn.Sequential(nn.Flatten(), layer).eval()
    codes = [-9.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 7.5, 16.0]  # x / scale
    x = (torch.tensor(codes) * 0.5).reshape(1, 10, 1, 1)
    signed_codes = [-7, -2, -2, 0, 0, 2, 2, 4, 7, 7]  # -7..7
    unsigned_codes = [0, 0, 0, 0, 0, 2, 2, 4, 8, 15]  # 0..15
    expect = np.array([signed_codes if signed else unsigned_codes], dtype=np.float32) * 0.5
    np.testing.assert_array_equal(_torch(model, x), expect)
    np.testing.assert_array_equal(_run(onnx_bytes(model, (10, 1, 1)), x), expect)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quantizer_alone_bit_exact_on_random_inputs(bits):
    """Any bit width: the exported quantizer equals torch's on 4,000 arbitrary floats (its
    Div/Round/Clip/Mul are the same IEEE operations); the identity Linear adds nothing."""
    layer = nn.Linear(40, 40, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(40))
    attach_quantizer_(layer, ActQuantConfig(bits=bits), "fc").set_frozen(
        signed=True, scale=2.7 / (2 ** (bits - 1) - 1), lo=-2.7, hi=2.7
    )
    model = nn.Sequential(nn.Flatten(), layer).eval()
    x = torch.randn(100, 40, 1, 1, generator=torch.Generator().manual_seed(bits)) * 1.5
    np.testing.assert_array_equal(_run(onnx_bytes(model, (40, 1, 1)), x), _torch(model, x))


def _calibrated(name: str, bits: int, **kwargs) -> nn.Module:
    model = models.create(name, SupermaskConfig(density=0.5, seed=3), **kwargs)
    add_act_quantizers_(model, ActQuantConfig(bits=bits))
    gen = torch.Generator().manual_seed(1)
    calibrate(model, [torch.rand(16, 1, 12, 12, generator=gen) for _ in range(2)])
    return model.eval()


@pytest.mark.parametrize(
    ("name", "kwargs", "bits"),
    [
        ("mlp", {"hidden": (32, 16)}, 2),
        ("mlp", {"hidden": (32, 16)}, 4),
        ("mlp", {"hidden": (32, 16)}, 8),
        ("conv2", {"width": 0.125}, 4),
    ],
)
def test_calibrated_zoo_models_match_onnxruntime(name, kwargs, bits):
    model = _calibrated(name, bits, in_channels=1, image_size=12, num_classes=10, **kwargs)
    x = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    data = onnx_bytes(model, (1, 12, 12))
    n = len(input_quantizers(model))
    assert n >= 2 and _ops(data).count("Round") == n
    got, ref = _run(data, x), _torch(model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the same model exported before this change (float activations) is further off
    floats = _torch(_float_copy(model), x)
    assert np.abs(floats - ref).max() > 1e-3


def test_export_onnx_returns_what_it_wrote(tmp_path):
    model = _dyadic("conv")
    path = tmp_path / "m.onnx"
    info = export_onnx(model, path, SHAPE)
    assert isinstance(info, OnnxExport)
    assert info.size == path.stat().st_size
    assert info.quantizers == (("0", 4, True), ("2", 4, False), ("5", 4, False))
    assert info.exact_in_place_of == ()
    assert info.describe() == "activation quantizers: 3 layers at 4 bits"
    assert OnnxExport(10).describe() == ""


def test_uncalibrated_quantizer_is_refused():
    model = models.create(
        "mlp", SupermaskConfig(), in_channels=1, image_size=4, num_classes=3, hidden=(8,)
    )
    add_act_quantizers_(model, ActQuantConfig(bits=4))
    with pytest.raises(UserError, match=r"'net\.3'.*calibrate"):
        onnx_bytes(model, (1, 4, 4))


def test_approximate_operator_refused_then_exported_exact_on_request():
    """(Not a dyadic model: Mitchell's product is exact when a factor is a power of two.)"""
    kwargs = {"in_channels": 1, "image_size": 12, "num_classes": 10, "hidden": (32, 16)}
    model = _calibrated("mlp", 4, **kwargs)
    x = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    use_operator(model, "mitchell", phase="inference")
    with pytest.raises(UserError) as err:
        onnx_bytes(model, (1, 12, 12))
    msg = str(err.value)
    assert "\n" not in msg and "'net.1'" in msg and "mitchell" in msg
    assert "exact_operators=True" in msg and "2 more" in msg
    mitchell = _torch(model, x)

    data = onnx_bytes(model, (1, 12, 12), exact_operators=True)
    with use_operator(model, "exact", phase="inference"):
        exact = _torch(model, x)
    got = _run(data, x)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)
    assert np.abs(got - mitchell).max() > 1e-3  # the flag did change what is computed


def test_exact_operators_description_and_plain_layers(tmp_path):
    """Plain nn.Linear layers (not supermask) with an operator and a quantizer: the copy keeps
    the quantizer and loses the operator."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    add_act_quantizers_(model, ActQuantConfig(bits=6, first_layer=True))
    calibrate(model, [torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(0))])
    use_operator(model, "mitchell-bwd", phase="both")
    model.eval()
    with pytest.raises(UserError, match=r"'1'.*'mitchell-bwd'.*1 more"):
        onnx_bytes(model, SHAPE)
    info = export_onnx(model, tmp_path / "m.onnx", SHAPE, exact_operators=True)
    assert info.exact_in_place_of == (("1", "mitchell-bwd"), ("3", "mitchell-bwd"))
    assert info.describe() == (
        "activation quantizers: 2 layers at 6 bits; "
        "exact products in place of mitchell-bwd on 2 layers (--exact-operators)"
    )
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    with use_operator(model, "exact", phase="inference"):
        exact = _torch(model, x)
    got = _run((tmp_path / "m.onnx").read_bytes(), x)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)
    # the model itself is untouched by the export
    assert OperatorChoice("mitchell-bwd", "mitchell-bwd") == _choice(model, "1")


def _choice(model, name):
    return operator_choice(model.get_submodule(name))


def test_training_only_operator_exports_without_the_flag():
    model = _dyadic("mlp")
    use_operator(model, "mitchell", phase="training")
    x = _dyadic_input()
    np.testing.assert_array_equal(_run(onnx_bytes(model, SHAPE), x), _torch(model, x))


def test_plain_model_graph_has_no_quantizer_ops():
    model = models.create(
        "conv2", SupermaskConfig(seed=2), in_channels=1, image_size=8, num_classes=4, width=0.125
    ).eval()
    data = onnx_bytes(model, (1, 8, 8))
    assert "Round" not in _ops(data) and "Clip" not in _ops(data)
    assert data == onnx_bytes(model, (1, 8, 8), exact_operators=True)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(_run(data, x), _torch(model, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CLI


def _checkpoint(folder: Path, config: TrainConfig) -> Path:
    """A checkpoint as training writes it, its quantizers calibrated on random images."""
    model = build_model(config)
    if config.act_quant is not None:
        gen = torch.Generator().manual_seed(0)
        calibrate(model, [torch.rand(16, 1, 28, 28, generator=gen)])
    path = folder / "checkpoint.safetensors"
    save_checkpoint(
        path,
        Checkpoint(
            config=config.to_dict(),
            epoch=1,
            history=[],
            model_state=model.state_dict(),
            optimizer_state=None,
        ),
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    base = {"model": "mlp", "model_kwargs": {"hidden": [24, 12]}}
    sm = SupermaskConfig(density=0.3, seed=4)
    out = {}
    for key, extra in {
        "act4": {"act_quant": ActQuantConfig(bits=4)},
        "mitchell": {
            "act_quant": ActQuantConfig(bits=8),
            "operator": OperatorChoice("exact", "mitchell"),
        },
    }.items():
        out[key] = _checkpoint(
            tmp_path_factory.mktemp(key), TrainConfig(**base, supermask=sm, **extra)
        )
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_quantizers_and_says_so(tmp_path, capsys, checkpoints):
    hnn, path = tmp_path / "m.hnn", tmp_path / "m.onnx"
    code, text, err = _cli(capsys, "export", str(checkpoints["act4"]), "-o", str(hnn), "--onnx",
                           str(path))  # fmt: skip
    assert code == 0, err
    line = text.splitlines()[-1]
    assert line.startswith(f"wrote {path}: ")
    assert line.endswith("input batch x 1x28x28; activation quantizers: 2 layers at 4 bits)")
    model = load(hnn)
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(_run(path.read_bytes(), x), _torch(model, x), rtol=1e-5, atol=1e-5)


def test_cli_refuses_mitchell_in_one_line_then_exports_exact_on_request(
    tmp_path, capsys, checkpoints
):
    hnn, path = tmp_path / "m.hnn", tmp_path / "m.onnx"
    argv = ["export", str(checkpoints["mitchell"]), "-o", str(hnn), "--onnx", str(path)]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("hiddenite: error: layer 'net.1'") and "--exact-operators" in err
    assert not path.exists() and not hnn.exists()  # refused before anything is written

    code, text, err = _cli(capsys, *argv, "--exact-operators")
    assert code == 0, err
    assert text.splitlines()[-1].endswith(
        "activation quantizers: 2 layers at 8 bits; "
        "exact products in place of mitchell on 3 layers (--exact-operators))"
    )
    model = load(hnn)
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with use_operator(model, "exact", phase="inference"):
        exact = _torch(model, x)
    np.testing.assert_allclose(_run(path.read_bytes(), x), exact, rtol=1e-5, atol=1e-5)

    code, _, err = _cli(capsys, "export", str(checkpoints["act4"]), "-o", str(tmp_path / "n"),
                        "--exact-operators")  # fmt: skip
    assert code == 2 and "--onnx" in err and err.count("\n") == 1
