"""Tests for hiddenite.summary: per-layer sizes, totals, ratios, table and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from hiddenite import models, save
from hiddenite.convert import SupermaskConfig, supermask_
from hiddenite.layers import SupermaskLayer
from hiddenite.summary import SEED_BYTES, LayerSize, ModelSummary, PartSize, summary


def tiny(**config) -> nn.Module:
    """Conv2d(1,2,3) [18 weights + 2 bias], BN(2), Flatten, Linear(8,3) [24 weights + 3 bias]."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    return supermask_(model, SupermaskConfig(**{"density": 0.5, "seed": 1, **config}))


def packed(model) -> ModelSummary:
    return summary(model, print_fn=None, codec="packed")


# Hand-computed rows for tiny() at density 0.5 (kept: floor(18*0.5+0.5)=9, 12 of 24), packed.
CONV = LayerSize(
    name="0",
    kind="SupermaskConv2d",
    method="edge-popup",
    shape=(2, 1, 3, 3),
    weights=18,
    density=0.5,
    parts=(PartSize("mask", 18, 2, "packed", 3),),  # ceil(18 / 8) = 3
    part_bytes=3,
    param_count=2,
    float32_bytes=4 * 18 + 4 * 2,
    int8_bytes=18 + 4 * 2,
    binarized_bytes=3 + 4 * 2,
    stored_bytes=3 + 4 * 2,
)
BN = LayerSize(
    name="1",
    kind="BatchNorm2d",
    method=None,
    shape=(),
    weights=0,
    density=1.0,
    parts=(),
    part_bytes=0,
    param_count=8,  # running mean 2 + running var 2 + weight 2 + bias 2
    float32_bytes=32,
    int8_bytes=32,
    binarized_bytes=32,
    stored_bytes=32,
)
LINEAR = LayerSize(
    name="3",
    kind="SupermaskLinear",
    method="edge-popup",
    shape=(3, 8),
    weights=24,
    density=0.5,
    parts=(PartSize("mask", 24, 2, "packed", 3),),
    part_bytes=3,
    param_count=3,
    float32_bytes=4 * 24 + 4 * 3,
    int8_bytes=24 + 4 * 3,
    binarized_bytes=3 + 4 * 3,
    stored_bytes=3 + 4 * 3,
)


def test_tiny_rows_by_hand():
    result = packed(tiny())
    assert isinstance(result, ModelSummary)
    assert result.rows == (CONV, BN, LINEAR)


def test_tiny_totals_by_hand():
    t = packed(tiny()).totals
    float32 = 80 + 32 + 108
    int8 = 26 + 32 + 36
    binarized = 11 + 32 + 15
    stored = 11 + 32 + 15 + SEED_BYTES
    assert t == {
        "layers": 2,
        "weights": 42,
        "used_weights": 21,
        "density": 0.5,
        "part_bytes": 6,
        "param_count": 13,
        "float32_bytes": float32,
        "int8_bytes": int8,
        "binarized_bytes": binarized,
        "stored_bytes": stored,
        "ratio_int8": float32 / int8,
        "ratio_binarized": float32 / binarized,
        "ratio_stored": float32 / stored,
    }
    assert SEED_BYTES == 8


def test_density_follows_the_mask():
    model = tiny(density=0.25)  # kept: floor(4.5+0.5)=5 of 18, floor(6+0.5)=6 of 24
    rows = summary(model, print_fn=None).rows
    assert rows[0].density == pytest.approx(5 / 18)
    assert rows[2].density == pytest.approx(6 / 24)
    t = summary(model, print_fn=None).totals
    assert t["used_weights"] == 11
    assert t["density"] == pytest.approx(11 / 42)
    # the summary reads the live mask: changing the scores changes the density only via ties
    with torch.no_grad():
        model[0].scores.fill_(1.0)  # all tied: the mask still keeps exactly 5
    assert summary(model, print_fn=None).rows[0].density == pytest.approx(5 / 18)


def test_dense_method_counts_32_bits_per_weight():
    rows = summary(tiny(method="dense"), print_fn=None).rows
    conv, bn, linear = rows
    assert conv.method == linear.method == "dense"
    assert conv.density == linear.density == 1.0
    assert conv.parts == (PartSize("weight", 18, None, None, 4 * 18),)
    assert conv.part_bytes == 4 * 18 and linear.part_bytes == 4 * 24
    assert conv.stored_bytes == conv.float32_bytes == 4 * 18 + 8
    assert linear.stored_bytes == linear.float32_bytes == 4 * 24 + 12
    assert conv.binarized_bytes == 3 + 8  # the binarized column is the same either way
    assert bn == BN


def test_keep_last_dense_mixes_hidden_and_dense_rows():
    result = packed(tiny(keep_last_dense=True))
    conv, _, linear = result.rows
    assert conv == CONV
    assert linear.method == "dense" and linear.density == 1.0
    assert linear.part_bytes == 4 * 24
    assert linear.stored_bytes == 4 * 27
    t = result.totals
    assert t["used_weights"] == 9 + 24
    assert t["density"] == pytest.approx(33 / 42)
    assert t["stored_bytes"] == 11 + 32 + 108 + SEED_BYTES


def test_codec_none_is_the_smallest_and_what_the_file_stores(tmp_path):
    model = models.create("conv2", SupermaskConfig(density=0.05), width=0.25)
    best = summary(model, print_fn=None)
    for codec in ("packed", "rle", "entropy"):
        fixed = summary(model, print_fn=None, codec=codec)
        for a, b in zip(best.rows, fixed.rows, strict=True):
            assert a.part_bytes <= b.part_bytes
    info = save(model, tmp_path / "m.hnn")
    assert best.totals["part_bytes"] == info.totals()["mask_bytes"]
    assert best.totals["part_bytes"] < packed(model).totals["part_bytes"]


def test_a_ternary_method_stores_its_own_part():
    rows = summary(tiny(method="signed"), print_fn=None, codec="packed").rows
    conv = rows[0]
    assert conv.method == "signed"
    assert conv.parts == (PartSize("signs", 18, 3, "packed", math.ceil(2 * 18 / 8)),)


def test_plain_model_rows():
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2))
    rows = summary(model, print_fn=None).rows
    assert [r.name for r in rows] == ["0", "1", "3"]
    first, norm, last = rows
    assert first.kind == "Linear" and first.part_bytes == 4 * 20 and first.param_count == 0
    assert first.method is None and first.parts == (PartSize("weight", 20, None, None, 80),)
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
    result = packed(model)
    t = result.totals
    hidden_layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    assert t["layers"] == len(result.rows) == len(hidden_layers) == 5
    assert t["weights"] == sum(m.weight.numel() for m in hidden_layers)
    assert t["used_weights"] == sum(int(m.mask().sum()) for m in hidden_layers)
    assert t["float32_bytes"] == 4 * t["weights"]  # no biases, no batch norm
    assert t["stored_bytes"] == sum(math.ceil(m.weight.numel() / 8) for m in hidden_layers) + 8
    for key in ("float32_bytes", "int8_bytes", "binarized_bytes", "part_bytes"):
        assert t[key] == sum(getattr(r, key) for r in result.rows)
    assert t["ratio_int8"] == pytest.approx(4.0)
    assert 31 < t["ratio_stored"] <= t["ratio_binarized"] <= 32


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
    result = packed(tiny())
    lines = result.table().splitlines()
    # header, rule, one line per row, rule, total, blank, compression line
    assert len(lines) == len(result.rows) + 6
    assert lines[0].split()[:2] == ["layer", "kind"]
    assert set(lines[1]) == {"-"} and set(lines[-4]) == {"-"}
    assert [line.split()[0] for line in lines[2:-4]] == ["0", "1", "3"]
    conv = lines[2].split()
    assert conv[:4] == ["0", "SupermaskConv2d", "edge-popup", "2x1x3x3"]
    assert conv[5:8] == ["0.500", "mask:packed", "3"]
    bn = lines[3].split()
    assert bn[:4] == ["1", "BatchNorm2d", "-", "-"] and bn[4:6] == ["0", "-"]
    total = lines[-3].split()
    assert total[:4] == ["total", "42", "0.500", "6"]
    assert total[4:] == ["0.22", "0.09", "0.06", "0.07"]  # kB
    assert lines[-2] == ""
    assert lines[-1].startswith("compression vs float32: int8 2.3x, binarized 3.8x, stored 3.3x")
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
        expected["parts"] = [dict(p) for p in expected["parts"]]
        assert layer == expected
    assert json.loads(result.to_json(indent=None)) == data
    assert "\n" not in result.to_json(indent=None)


def test_a_data_parallel_wrapper_is_unwrapped():
    """DDP / DataParallel wrap the model; the summary reads the module inside, names unchanged."""
    model = tiny()
    plain, wrapped = summary(model, print_fn=None), summary(nn.DataParallel(model), print_fn=None)
    assert [r.name for r in wrapped.rows] == [r.name for r in plain.rows]
    assert not any(r.name.startswith("module.") for r in wrapped.rows)
    assert wrapped.totals == plain.totals
