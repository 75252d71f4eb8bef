"""Tests for hiddenite.hw.cim: mapping, gating counts and energy of the SRAM CIM macro model.

Independent references: small layers whose tiles, gating units, ON cells, active columns and
leaking cells are worked out by hand below (each case spells out the arithmetic), and the
supermask of a hidden layer read through ``layer.support()`` (not through the CIM code).
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, models, save
from hiddenite.cli import main
from hiddenite.hw.cim import (
    CIM_PRESETS,
    COMPONENTS,
    CimEnergy,
    CimSpec,
    SpecError,
    analyze_cim,
    get_cim_preset,
    parse_granularity,
)

ONES = CimEnergy(**dict.fromkeys([f for f in CimEnergy().to_dict()], 1.0))


def conv1x1(weight: list[list[float]]) -> nn.Sequential:
    w = torch.tensor(weight)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
    return nn.Sequential(conv)


def image(channels_on: list[int], channels: int = 4, size: int = 3) -> torch.Tensor:
    x = torch.zeros(1, channels, size, size)
    for c in channels_on:
        x[0, c, 1, 2] = 1.0  # one non-zero pixel keeps the whole channel active
    return x


def test_weight_stationary_hand_counts():
    # K = 4 rows (1x1 kernel), N = 2 columns, one 4 x 2 array, units of 2 rows x 2 columns.
    # Input channels 0 and 1 are zero: unit 0 (rows 0-1) is off by the input; unit 1 is on.
    spec = CimSpec(rows=4, cols=2, unit_rows=2, unit_cols=2, act_bits=1, energy=ONES)
    model = conv1x1([[1, 1, 1, 0], [1, 1, 1, 0]])
    (rep,) = analyze_cim(model, [image([2, 3])], spec)
    (layer,) = rep.layers
    assert (layer.rows_k, layer.cols_n, layer.arrays, layer.units) == (4, 2, 1, 2)
    cycles = 9  # 3 x 3 output positions x 1 input bit
    assert layer.cycles == cycles
    assert layer.fraction("input") == 0.5 and layer.fraction("weight") == 0.0
    g, b = layer.counts_gated, layer.counts_baseline
    assert g["wordline"] == g["precharge"] == g["and"] == 4 * cycles  # unit 1: 2 x 2 cells
    assert g["global_bitline"] == g["readout"] == g["accumulate"] == 2 * cycles
    assert g["leakage"] == 4 * cycles and g["control"] == 2  # 2 units, one decision each
    assert b["wordline"] == 8 * cycles and b["readout"] == 2 * cycles
    assert b["leakage"] == 8 * cycles and b["control"] == 0
    # energy with every event at 1 pJ except the readout (ADC: 2^6 steps x 1 pJ) and leakage
    t = rep.totals
    leak = 1.0 / 100e6  # 1 pW x one 10 ns cycle, in pJ
    gated = 3 * 36 + 2 * 18 + 64 * 18 + 36 * leak + 2
    assert t["energy_gated_pj"] == pytest.approx(gated)
    assert t["energy_baseline_pj"] == pytest.approx(3 * 72 + 2 * 18 + 64 * 18 + 72 * leak)


def test_weight_sparsity_switches_units_off_statically():
    spec = CimSpec(rows=4, cols=2, unit_rows=2, unit_cols=2, act_bits=1)
    model = conv1x1([[1, 1, 0, 0], [1, 0, 0, 0]])  # rows 2 and 3 hold only zero weights
    (rep,) = analyze_cim(model, [image([0, 1, 2, 3])], spec)
    (layer,) = rep.layers
    assert layer.fraction("weight") == 0.5 and layer.fraction("input") == 0.0
    assert layer.counts_gated["and"] == 4 * 9


def test_tiling_and_units_of_a_3x3_conv():
    # K = 5 x 9 = 45 rows, N = 3 x 2 bits = 6 columns; 16 x 4 arrays -> 3 x 2 = 6 arrays;
    # units 8 x 2 -> (48 / 8) x (8 / 2) = 24 units, of which 6 x 3 = 18 hold mapped cells.
    spec = CimSpec(rows=16, cols=4, unit_rows=8, unit_cols=2, weight_bits=2, act_bits=1)
    conv = nn.Conv2d(5, 3, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    x = torch.ones(2, 5, 4, 4)
    (rep,) = analyze_cim(nn.Sequential(conv), [x], spec)
    (layer,) = rep.layers
    assert (layer.rows_k, layer.cols_n, layer.arrays, layer.units) == (45, 6, 6, 24)
    cycles = 2 * 16  # two inputs x 4 x 4 positions x 1 bit
    assert layer.unit_cycles_mapped == 18 * cycles
    assert layer.counts_gated["and"] == layer.counts_baseline["and"] == 45 * 6 * cycles
    assert layer.counts_baseline["readout"] == 3 * 6 * cycles  # 3 rows of arrays x 6 columns
    assert layer.counts_baseline["leakage"] == 6 * 16 * 4 * cycles


def test_channel_major_rows_put_a_zero_channel_in_whole_units():
    # 3x3 kernels: channel c owns rows 9c .. 9c + 8; with 9-row units, channel 1 zero = unit 1
    spec = CimSpec(rows=36, cols=4, unit_rows=9, unit_cols=4, act_bits=1)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 0.5)
    x = torch.ones(1, 4, 5, 5)
    x[0, 1] = 0.0  # a known all-zero input channel
    (rep,) = analyze_cim(nn.Sequential(conv), [x], spec)
    (layer,) = rep.layers
    assert layer.fraction("input") == pytest.approx(1 / 4)
    assert layer.counts_gated["wordline"] == 27 * 4 * 25  # three ON units of 9 x 4 cells


def test_activation_stationary_hand_counts():
    # cells hold the input (4 rows x 9 positions); weights streamed, one output channel a cycle.
    # o0 = rows 0-1, o1 = rows 2-3; input channels 2, 3 zero. Units of 2 rows x 16 columns:
    # o0: unit 0 ON, unit 1 off (weights); o1: unit 0 off (weights), unit 1 off (input).
    spec = CimSpec(
        rows=4,
        cols=16,
        unit_rows=2,
        unit_cols=16,
        act_bits=1,
        stationary="activations",
        energy=ONES,
    )
    model = conv1x1([[1, 1, 0, 0], [0, 0, 1, 1]])
    (rep,) = analyze_cim(model, [image([0, 1])], spec)
    (layer,) = rep.layers
    assert (layer.cols_n, layer.arrays, layer.units) == (9, 1, 2)
    assert layer.unit_cycles_mapped == 4
    assert (layer.unit_cycles_off_weight, layer.unit_cycles_off_input) == (2, 1)
    g, b = layer.counts_gated, layer.counts_baseline
    assert g["and"] == 18 and g["readout"] == 9 and g["leakage"] == 32 and g["control"] == 4
    assert b["and"] == 72 and b["readout"] == 18 and b["leakage"] == 128


def test_energy_is_the_sum_of_its_parts():
    model = models.create("se-conv2", width=0.125).eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    specs = [get_cim_preset(n) for n in CIM_PRESETS]
    for rep in analyze_cim(model, [x], specs):
        for row in rep.row_dicts():
            for which in ("gated", "baseline"):
                parts = sum(row[f"{which}_{c}_pj"] for c in COMPONENTS)
                assert row[f"energy_{which}_pj"] == pytest.approx(parts, rel=1e-12)
        t = rep.totals
        assert t["energy_gated_pj"] == pytest.approx(
            sum(t[f"gated_{c}_pj"] for c in COMPONENTS), rel=1e-12
        )
        assert t["energy_gated_pj"] == pytest.approx(
            sum(r["energy_gated_pj"] for r in rep.row_dicts()), rel=1e-12
        )
        # the gated macro never does more array work than the ungated one
        assert t["gated_and_pj"] <= t["baseline_and_pj"]


def test_supermask_weights_come_from_the_layer_support():
    model = models.create("mlp", SupermaskConfig(density=0.02, seed=4), hidden=(16,))
    first = model.net[1]
    spec = CimSpec(rows=8, cols=16, unit_rows=1, unit_cols=16, act_bits=1)
    x = torch.ones(2, 1, 28, 28)
    rep = analyze_cim(model, [x], spec)[0]
    layer = rep.layers[0]
    support = first.support().T  # in_features x out_features
    dead_rows = int((~support.any(dim=1)).sum())
    assert dead_rows > 0
    assert layer.fraction("weight") == pytest.approx(dead_rows / 784)


def test_shared_layers_and_linear_zero_features():
    lin = nn.Linear(4, 2, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(2, 4, bias=False), nn.ReLU())
    model.append(lin)  # the first layer again: reported as "0#2"
    spec = CimSpec(rows=4, cols=2, unit_rows=1, unit_cols=2, act_bits=1)
    x = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    (rep,) = analyze_cim(model, [x], spec)
    assert [r.layer for r in rep.layers] == ["0", "2", "0#2"]
    assert rep.layers[0].fraction("input") == 0.5  # features 1 and 2 are zero


def test_spec_validation_one_line_errors(tmp_path):
    cases = [
        ({"rows": 0}, "rows: must be >= 1"),
        ({"rows": 256, "unit_rows": 24}, "unit_rows: 24 does not divide rows"),
        ({"stationary": "inputs"}, "stationary: unknown"),
        ({"readout": "tdc"}, "readout: unknown"),
        ({"colums": 8}, "did you mean 'cols'"),
        ({"energy": {"and_pj": -1}}, "energy.and_pj: must be >= 0"),
        ({"cols": 8192}, "cols: must be <= 4096"),
    ]
    for data, message in cases:
        with pytest.raises(SpecError, match=message) as info:
            CimSpec.from_dict(data)
        assert "\n" not in str(info.value)
    deep = tmp_path / "deep.yaml"
    deep.write_text("energy: {and_pj: {a: {b: {c: 1}}}}\n")
    with pytest.raises(SpecError, match="nested more than 4 levels deep"):
        CimSpec.from_yaml(deep)
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 4)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match="aliases"):  # refused while parsing: no bomb
        CimSpec.from_yaml(bomb)
    twice = tmp_path / "twice.yaml"
    twice.write_text("rows: 64\nrows: 128\n")
    with pytest.raises(SpecError, match="'rows' appears twice"):
        CimSpec.from_yaml(twice)
    big = tmp_path / "big.yaml"
    big.write_text("#" * 70_000)
    with pytest.raises(SpecError, match="larger than"):
        CimSpec.from_yaml(big)
    with pytest.raises(SpecError, match="granularity"):
        parse_granularity("16by256", CimSpec())
    with pytest.raises(SpecError, match="unknown CIM macro"):
        get_cim_preset("nope")


def test_spec_yaml_json_round_trip(tmp_path):
    spec = CimSpec(name="mine", rows=128, unit_rows=32, energy={"adc_pj_per_step": 0.002})
    path = tmp_path / "m.yaml"
    spec.to_yaml(path)
    assert CimSpec.from_yaml(path) == spec
    assert CimSpec.from_json(spec.to_json()) == spec
    assert spec.readout_pj == pytest.approx(0.002 * 64)
    assert parse_granularity("rows:8", spec).granularity == "8x256"
    assert parse_granularity("cols:16", spec).granularity == "128x16"


def _write_fashion_mnist(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        arrays = {
            "images-idx3": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            "labels-idx1": rng.integers(0, 10, size=n, dtype=np.uint8),
        }
        for kind, a in arrays.items():
            head = struct.pack(">I", 0x800 | a.ndim) + b"".join(
                struct.pack(">I", d) for d in a.shape
            )
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + a.tobytes()))
    return folder


def test_cli_cim(tmp_path, capsys):
    data = _write_fashion_mnist(tmp_path / "data", 12)
    hnn = tmp_path / "se.hnn"
    save(models.create("se-conv2", SupermaskConfig(density=0.3, seed=2), width=0.125), hnn)
    out = tmp_path / "out"
    argv = ["cim", str(hnn), "--data-dir", str(data), "--samples", "10", "--out", str(out)]
    assert main([*argv, "--granularity", "16x256", "rows:64"]) == 0
    text = capsys.readouterr().out
    assert "gating unit 16x256" in text and "gating unit 64x256" in text
    names = {p.name for p in out.iterdir()}
    assert {"cim_16x256_layers.csv", "cim_64x256.json", "cim_gated.png", "cim_energy.png"} <= names
    doc = json.loads((out / "cim_16x256.json").read_text())
    assert doc["totals"]["inputs"] == 10 and len(doc["layers"]) == 9  # 2 conv + 2x2 SE + 3 fc
    spec = tmp_path / "macro.yaml"
    spec.write_text("rows: 128\ncols: 128\nunit_rows: 32\nunit_cols: 128\n")
    assert main([*argv, "--spec", str(spec), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["reports"]) == ["32x128"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: 100\nunit_rows: 16\n")
    assert main([*argv, "--spec", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unit_rows" in err[0]
    assert main(["cim", str(tmp_path / "missing.hnn")]) == 2


@pytest.mark.parametrize(
    "data, words",
    [
        ([1], "spec: expected a mapping, got list"),
        ({"nosuch": 1}, "nosuch: unknown field"),
        ({"energy": {"bad": 1}}, "energy.bad: unknown field"),
    ],
)
def test_spec_fields_are_checked_by_name(data, words):
    with pytest.raises(SpecError, match=words):
        CimSpec.from_dict(data)
