"""Tests for hiddenite.summary: per-layer sizes, totals, ratios, table and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from hiddenite import models
from hiddenite.convert import SupermaskConfig, supermask_
from hiddenite.layers import SupermaskLayer
from hiddenite.summary import SEED_BYTES, LayerSize, ModelSummary, summary


def tiny(**config) -> nn.Module:
    """Conv2d(1,2,3) [18 weights + 2 bias], BN(2), Flatten, Linear(8,3) [24 weights + 3 bias]."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    return supermask_(model, SupermaskConfig(**{"density": 0.5, "seed": 1, **config}))


# Hand-computed rows for tiny() at density 0.5 (kept: floor(18*0.5+0.5)=9, 12 of 24).
CONV = LayerSize(
    name="0",
    kind="SupermaskConv2d (hidden)",
    shape=(2, 1, 3, 3),
    weights=18,
    density=0.5,
    learned_bits=18 + 32 * 2,  # one mask bit per weight + float32 bias
    param_count=2,
    float32_bytes=4 * 18 + 4 * 2,
    int8_bytes=18 + 4 * 2,
    binarized_bytes=3 + 4 * 2,  # ceil(18 / 8) = 3
    hidden_bytes=3 + 4 * 2,
)
BN = LayerSize(
    name="1",
    kind="BatchNorm2d",
    shape=(),
    weights=0,
    density=1.0,
    learned_bits=32 * 8,  # running mean 2 + running var 2 + weight 2 + bias 2
    param_count=8,
    float32_bytes=32,
    int8_bytes=32,
    binarized_bytes=32,
    hidden_bytes=32,
)
LINEAR = LayerSize(
    name="3",
    kind="SupermaskLinear (hidden)",
    shape=(3, 8),
    weights=24,
    density=0.5,
    learned_bits=24 + 32 * 3,
    param_count=3,
    float32_bytes=4 * 24 + 4 * 3,
    int8_bytes=24 + 4 * 3,
    binarized_bytes=3 + 4 * 3,
    hidden_bytes=3 + 4 * 3,
)


def test_tiny_rows_by_hand():
    result = summary(tiny(), print_fn=None)
    assert isinstance(result, ModelSummary)
    assert result.rows == (CONV, BN, LINEAR)


def test_tiny_totals_by_hand():
    t = summary(tiny(), print_fn=None).totals
    float32 = 80 + 32 + 108
    int8 = 26 + 32 + 36
    binarized = 11 + 32 + 15
    hidden = 11 + 32 + 15 + SEED_BYTES
    assert t == {
        "layers": 2,
        "weights": 42,
        "kept_weights": 21,
        "density": 0.5,
        "learned_bits": 82 + 256 + 120,
        "param_count": 13,
        "float32_bytes": float32,
        "int8_bytes": int8,
        "binarized_bytes": binarized,
        "hidden_bytes": hidden,
        "ratio_int8": float32 / int8,
        "ratio_binarized": float32 / binarized,
        "ratio_hidden": float32 / hidden,
    }
    assert SEED_BYTES == 8


def test_density_follows_the_mask():
    model = tiny(density=0.25)  # kept: floor(4.5+0.5)=5 of 18, floor(6+0.5)=6 of 24
    rows = summary(model, print_fn=None).rows
    assert rows[0].density == pytest.approx(5 / 18)
    assert rows[2].density == pytest.approx(6 / 24)
    t = summary(model, print_fn=None).totals
    assert t["kept_weights"] == 11
    assert t["density"] == pytest.approx(11 / 42)
    # the summary reads the live mask: changing the scores changes the density only via ties
    with torch.no_grad():
        model[0].scores.fill_(1.0)  # all tied: the mask still keeps exactly 5
    assert summary(model, print_fn=None).rows[0].density == pytest.approx(5 / 18)


def test_dense_mode_counts_32_bits_per_weight():
    rows = summary(tiny(mode="dense"), print_fn=None).rows
    conv, bn, linear = rows
    assert conv.kind == "SupermaskConv2d" and linear.kind == "SupermaskLinear"
    assert conv.density == linear.density == 1.0
    assert conv.learned_bits == 32 * 18 + 32 * 2
    assert linear.learned_bits == 32 * 24 + 32 * 3
    assert conv.hidden_bytes == conv.float32_bytes == 4 * 18 + 8
    assert linear.hidden_bytes == linear.float32_bytes == 4 * 24 + 12
    assert conv.binarized_bytes == 3 + 8  # the binarized column is the same either way
    assert bn == BN


def test_keep_last_dense_mixes_hidden_and_dense_rows():
    result = summary(tiny(keep_last_dense=True), print_fn=None)
    conv, _, linear = result.rows
    assert conv == CONV
    assert linear.kind == "SupermaskLinear" and linear.density == 1.0
    assert linear.learned_bits == 32 * 27
    assert linear.hidden_bytes == 4 * 27
    t = result.totals
    assert t["kept_weights"] == 9 + 24
    assert t["density"] == pytest.approx(33 / 42)
    assert t["hidden_bytes"] == 11 + 32 + 108 + SEED_BYTES


def test_plain_model_rows():
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2))
    rows = summary(model, print_fn=None).rows
    assert [r.name for r in rows] == ["0", "1", "3"]
    first, norm, last = rows
    assert first.kind == "Linear" and first.learned_bits == 32 * 20 and first.param_count == 0
    assert norm.kind == "LayerNorm" and norm.param_count == 8 and norm.weights == 0
    assert last.param_count == 2 and last.float32_bytes == 4 * (8 + 2)


def test_batchnorm_variants():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False),
        nn.BatchNorm2d(3, affine=False),
        nn.Conv2d(3, 3, 1, bias=False),
        nn.BatchNorm2d(3, track_running_stats=False),
    )
    rows = summary(supermask_(model, SupermaskConfig()), print_fn=None).rows
    assert [(r.name, r.param_count) for r in rows] == [("0", 0), ("1", 6), ("2", 0), ("3", 6)]


def test_layers_without_stored_values_are_skipped():
    rows = summary(tiny(), print_fn=None).rows
    assert "2" not in [r.name for r in rows]  # Flatten
    model = models.create("mlp", SupermaskConfig(), hidden=(8,))
    assert [r.name for r in summary(model, print_fn=None).rows] == ["net.1", "net.3"]


def test_zoo_model_totals_are_consistent():
    model = models.create("conv2", SupermaskConfig(density=0.3), width=0.125)
    result = summary(model, print_fn=None)
    t = result.totals
    hidden_layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    assert t["layers"] == len(result.rows) == len(hidden_layers) == 5
    assert t["weights"] == sum(m.weight.numel() for m in hidden_layers)
    assert t["kept_weights"] == sum(int(m.mask().sum()) for m in hidden_layers)
    assert t["learned_bits"] == t["weights"]  # no biases, no batch norm
    assert t["float32_bytes"] == 4 * t["weights"]
    assert t["hidden_bytes"] == sum(math.ceil(m.weight.numel() / 8) for m in hidden_layers) + 8
    for key in ("float32_bytes", "int8_bytes", "binarized_bytes", "learned_bits"):
        assert t[key] == sum(getattr(r, key) for r in result.rows)
    assert t["ratio_int8"] == pytest.approx(4.0)
    assert 31 < t["ratio_hidden"] <= t["ratio_binarized"] <= 32


# --------------------------------------------------------------------------- output


def test_print_fn_none_prints_nothing(capsys):
    summary(tiny(), print_fn=None)
    assert capsys.readouterr() == ("", "")


def test_default_prints_the_table(capsys):
    result = summary(tiny())
    out = capsys.readouterr().out
    assert out == result.table() + "\n"


def test_print_fn_receives_the_table_once():
    calls: list[str] = []
    result = summary(tiny(), print_fn=calls.append)
    assert calls == [result.table()]
    assert str(result) == result.table()


def test_table_lines():
    result = summary(tiny(), print_fn=None)
    lines = result.table().splitlines()
    # header, rule, one line per row, rule, total, blank, compression line
    assert len(lines) == len(result.rows) + 6
    assert lines[0].split()[:2] == ["layer", "kind"]
    assert set(lines[1]) == {"-"} and set(lines[-4]) == {"-"}
    assert [line.split()[0] for line in lines[2:-4]] == ["0", "1", "3"]
    conv = lines[2]
    assert "SupermaskConv2d (hidden)" in conv and "2x1x3x3" in conv and "0.500" in conv
    bn = lines[3].split()
    assert bn[:3] == ["1", "BatchNorm2d", "-"] and bn[3:5] == ["0", "-"]
    total = lines[-3].split()
    assert total[0] == "total" and total[1] == "42" and total[2] == "0.500"
    assert total[3] == "458"
    assert total[4:] == ["0.22", "0.09", "0.06", "0.07"]  # kB
    assert lines[-2] == ""
    assert lines[-1].startswith("compression vs float32: int8 2.3x, binarized 3.8x, hidden 3.3x")
    assert all(line == line.rstrip() for line in lines)
    widths = {len(line) for line in lines[:-2]}
    assert len(lines[0]) == max(widths)


def test_to_json_matches_rows():
    result = summary(tiny(), print_fn=None)
    data = json.loads(result.to_json())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["totals"] == result.totals
    assert len(data["layers"]) == len(result.rows)
    for layer, row in zip(data["layers"], result.rows, strict=True):
        expected = asdict(row)
        expected["shape"] = list(expected["shape"])
        assert layer == expected
    assert json.loads(result.to_json(indent=None)) == data
    assert "\n" not in result.to_json(indent=None)
