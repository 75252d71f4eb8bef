"""Activation quantizers: grid, range, round trip, STE gradient, insertion, calibration, hw."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import models
from hiddenite.errors import ConfigError
from hiddenite.hw import estimate
from hiddenite.hw.spec import get_preset
from hiddenite.hw.workload import workloads_from_module
from hiddenite.quant import (
    ActQuantConfig,
    ActQuantizer,
    add_act_quantizers_,
    calibrate,
    input_bits,
    input_quantizers,
    quantizer_of,
    quantizers,
)


def _frozen(x: torch.Tensor, **kw) -> ActQuantizer:
    q = ActQuantizer(ActQuantConfig(**kw))
    q(x)
    q.freeze()
    return q


def _reference(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Nearest level of the grid, by brute force over every level."""
    if signed:
        top = 2 ** (bits - 1) - 1
        codes = np.arange(-top, top + 1)
        scale = np.float32(np.abs(x).max() / top)
    else:
        codes = np.arange(0, 2**bits)
        scale = np.float32(x.max() / (2**bits - 1))
    t = x.astype(np.float64) / np.float64(scale)
    chosen = codes[np.abs(t[:, None] - codes[None, :]).argmin(axis=1)]  # random data: no ties
    return (chosen.astype(np.float32) * scale).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_levels_equal_the_brute_force_grid(bits, signed):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(500, generator=g)
    x = x if signed else x.abs()
    q = _frozen(x, bits=bits)
    assert bool(q.signed) == signed
    got = q(x).numpy()
    want = _reference(x.numpy(), bits, signed)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(x.abs().max()))
    codes = np.round(got / float(q.scale))
    assert len(np.unique(codes)) <= 2**bits - (1 if signed else 0)


@pytest.mark.parametrize("signed", ["signed", "unsigned"])
def test_range_and_round_trip(signed):
    x = torch.linspace(-3, 5, 1001)
    q = _frozen(x, bits=8, signed=signed)
    y = q(x)
    qmin, qmax = q.bounds
    codes = torch.round(y / q.scale)
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert int(codes.max()) == qmax  # the observed extreme maps to the top code
    assert torch.equal(codes * q.scale, y)
    assert torch.equal(q(y), y)  # values on the grid come back bit for bit
    if signed == "unsigned":
        assert float(y.min()) == 0.0 and (qmin, qmax) == (0, 255)
    else:
        assert (qmin, qmax) == (-127, 127)
    # the error inside the range is at most half a step
    inside = (x >= qmin * q.scale) & (x <= qmax * q.scale)
    assert float((y - x)[inside].abs().max()) <= float(q.scale) / 2 + 1e-6


def test_ste_gradient_passes_inside_and_stops_outside():
    q = _frozen(torch.tensor([0.0, 2.0]), bits=4)  # unsigned, scale 2/15
    x = torch.tensor([-0.5, 0.0, 1.0, 2.0, 2.5], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_observing_quantizer_is_the_identity_and_percentile_clips():
    q = ActQuantizer(ActQuantConfig(calibration="percentile", percentile=90.0))
    x = torch.arange(101, dtype=torch.float32)
    assert torch.equal(q(x), x)
    q.freeze()
    assert float(q.hi) == pytest.approx(90.0)
    assert float(q(torch.tensor([100.0]))) == pytest.approx(90.0)
    with pytest.raises(ValueError, match="no batch"):
        ActQuantizer().freeze()


def test_config_validation_and_json_round_trip():
    c = ActQuantConfig(bits=4, signed="unsigned", calibration="percentile", percentile=99)
    assert ActQuantConfig.from_json(c.to_json()) == c
    for bad in ({"bits": 1}, {"bits": 8.0}, {"signed": "maybe"}, {"percentile": 40}):
        with pytest.raises(ConfigError):
            ActQuantConfig(**bad)
    with pytest.raises(ConfigError, match="no field"):
        ActQuantConfig.from_dict({"bitz": 3})


@pytest.mark.parametrize("name", ["mlp", "conv4", "resnet20"])
def test_insert_into_zoo_models_and_calibrate(name):
    torch.manual_seed(0)
    model = models.create(name, width=0.25) if name != "mlp" else models.create(name)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        want = model.eval()(x)
    add_act_quantizers_(model, ActQuantConfig(bits=8))
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert input_bits(layers[0]) is None and all(input_bits(m) == 8 for m in layers[1:])
    with torch.no_grad():
        assert torch.equal(model(x), want)  # observing: unchanged
    calibrate(model, [x])
    assert all(q.frozen for _, q in quantizers(model))
    with torch.no_grad():
        got = model(x)
    assert not torch.equal(got, want)
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max()) + 1e-3
    copied = copy.deepcopy(model)  # hooks follow the copy
    with torch.no_grad():
        assert torch.equal(copied(x), got)
    with pytest.raises(ValueError, match="already"):
        add_act_quantizers_(model, ActQuantConfig(first_layer=True))


def test_hw_model_reads_the_activation_width_from_the_model():
    model = models.create("mlp").eval()
    x = torch.randn(2, 1, 28, 28)
    plain = workloads_from_module(model, (1, 1, 28, 28))
    add_act_quantizers_(model, ActQuantConfig(bits=4))
    calibrate(model, [x])
    wl = workloads_from_module(model, (1, 1, 28, 28))
    assert [w.act_bits for w in plain] == [0, 0, 0]
    assert [w.act_bits for w in wl] == [0, 4, 4]
    spec = "int8"
    a, b = estimate(plain, spec), estimate(wl, spec)
    # 4-bit inputs: the hidden layers read half the activation bytes (the 8x8-bit multiply
    # of the int8 baseline stays: its weights are 8 bits)
    assert a.rows[0].energy_pj == b.rows[0].energy_pj
    for i in (1, 2):
        assert b.rows[i].energy_compute_pj == a.rows[i].energy_compute_pj
        assert b.rows[i].energy_dram_pj < a.rows[i].energy_dram_pj
    spec4 = get_preset("int8", weight_bits=4)  # 4-bit weights: now the multiply shrinks too
    assert (
        estimate(wl, spec4).rows[1].energy_compute_pj
        < estimate(plain, spec4).rows[1].energy_compute_pj
    )


def test_input_quantizers_names_the_layers_and_refuses_a_stray_quantizer():
    """The file and the accelerator model find quantizers only as a layer's input quantizer."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    add_act_quantizers_(model, ActQuantConfig(bits=4, first_layer=True))
    assert [name for name, _ in input_quantizers(model)] == ["0", "2"]
    assert quantizer_of(model[0]) is dict(input_quantizers(model))["0"]
    assert quantizer_of(model[1]) is None
    model.stray = ActQuantizer(ActQuantConfig(bits=4))
    with pytest.raises(ValueError, match="'stray' is not the input quantizer"):
        input_quantizers(model)
