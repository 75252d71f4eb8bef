"""Analytical model: hand-computed layers, invariants, workloads from modules, reports, sweeps."""

from __future__ import annotations

import csv
import importlib
import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, models, save, supermask_
from hiddenite.codecs import entropy_bound_bits
from hiddenite.errors import UserError
from hiddenite.hw import (
    EnergyTable,
    LayerWorkload,
    Report,
    compare,
    estimate,
    estimate_layer,
    get_preset,
    simulate,
    sweep,
    workloads_from_module,
)
from hiddenite.hw.plots import plot_energy_breakdown, plot_offchip_comparison, plot_pareto
from hiddenite.hw.workload import (
    WorkloadError,
    entropy_bits_per_weight,
    mask_bytes_for,
    resnet_workloads,
)

# The hand-computed energies below check the model's equations on the uncalibrated source table
# (Horowitz 45 nm as published, 200 MHz, no leakage); tests/test_hw_calibration.py checks the
# calibrated presets.
RAW45 = dict(clock_mhz=200, energy=EnergyTable.horowitz_45nm())


def _raw(arch):
    return get_preset(arch, **RAW45)


# A 3x3 conv, 16 -> 16 channels, 4x4 output, padding 1: exactly one tile of the 16x4x4x16 array.
SMALL = dict(
    name="c",
    kind="conv",
    in_channels=16,
    out_channels=16,
    kernel=3,
    padding=1,
    in_hw=4,
    param_bytes=128,
)


# ---------------------------------------------------------------------------------------------
# hand-computed small layers, one per preset
# ---------------------------------------------------------------------------------------------
def _common_small_checks(e):
    assert (e.tiles_ic, e.tiles_oh, e.tiles_ow, e.tiles_oc) == (1, 1, 1, 1)
    assert e.utilization == 1.0
    assert e.macs == 16 * 16 * 9 * 16 == 36864
    assert e.compute_cycles == 9  # one cycle per kernel tap
    # inputs: a 4x4 tile with a 3x3 window reads a 6x6 halo (padding positions included)
    assert e.ifmap_sram_read_bytes == 16 * 6 * 6
    assert e.dram_ifmap_read_bytes == 256 and e.dram_ofmap_write_bytes == 256
    assert e.ofmap_sram_write_bytes == 256 and e.ofmap_sram_read_bytes == 256
    assert e.param_sram_read_bytes == 128 and e.param_sram_write_bytes == 128


def test_small_layer_hiddenite_by_hand():
    e = estimate_layer(SMALL, _raw("hiddenite"))
    _common_small_checks(e)
    # model data: packed mask ceil(2304 / 8) = 288 B + 128 B of per-channel parameters
    assert e.dram_mask_read_bytes == 288 and e.dram_weight_read_bytes == 0
    assert e.offchip_model_bytes == 288 + 128
    assert e.offchip_bytes == 288 + 128 + 256 + 256 == 928
    assert e.dram_cycles == 928 // 16 == 58
    assert e.decoder_bits == 2304 and e.decoder_cycles == 2304 // 128 == 18
    assert e.prng_steps == 2304 and e.prng_cycles == 2304 // 256 == 9
    assert e.total_cycles == 58 and e.bound == "dram" and e.stall_cycles == 49
    assert e.filter_sram_read_bytes == 288 and e.filter_sram_write_bytes == 288  # 1 bit/weight
    # energy (pJ): add at 24 bits 0.075; SRAM 128 KiB 6.5/B, 64 KiB 4.5/B, 8 KiB 1.25/B
    assert e.energy_compute_pj == pytest.approx(36864 * 0.075)
    sram = (576 + 256) * 6.5 + (256 + 256) * 6.5 + (288 + 288) * 4.5 + (128 + 128) * 1.25
    assert e.energy_sram_pj == pytest.approx(sram)
    assert e.energy_dram_pj == pytest.approx(928 * 243.75)
    assert e.energy_prng_pj == pytest.approx(2304 * 0.1)
    assert e.energy_decoder_pj == pytest.approx(2304 * 0.01)
    assert e.energy_pj == pytest.approx(240866.24)
    assert e.latency_s == pytest.approx(58 / 200e6)


def test_small_layer_bnn_by_hand():
    e = estimate_layer(SMALL, _raw("bnn"))
    _common_small_checks(e)
    assert e.dram_weight_read_bytes == 288 and e.dram_mask_read_bytes == 0
    assert e.offchip_bytes == 928 and e.total_cycles == 58
    assert e.prng_steps == 0 and e.decoder_bits == 0
    assert e.energy_prng_pj == 0 and e.energy_decoder_pj == 0
    assert e.energy_pj == pytest.approx(36864 * 0.075 + 11648 + 928 * 243.75)


def test_small_layer_int8_by_hand():
    e = estimate_layer(SMALL, _raw("int8"))
    _common_small_checks(e)
    assert e.dram_weight_read_bytes == 2304
    assert e.offchip_bytes == 2304 + 128 + 512 == 2944
    assert e.dram_cycles == 2944 // 16 == 184 and e.total_cycles == 184
    assert e.filter_sram_read_bytes == 2304 and e.filter_sram_write_bytes == 2304
    assert e.energy_compute_pj == pytest.approx(36864 * 0.275)  # 8-bit mult + 24-bit add
    sram = (576 + 256) * 6.5 + 512 * 6.5 + 4608 * 4.5 + 256 * 1.25
    assert e.energy_sram_pj == pytest.approx(sram)
    assert e.energy_pj == pytest.approx(757529.6)


def test_edge_effects_in_utilization():
    # 20 channels on 16 PEs, 5x5 outputs on 4x4 PEs: 2 tiles per axis
    w = dict(kind="conv", in_channels=20, out_channels=20, kernel=1, in_hw=5)
    e = estimate_layer(w, "int8")
    assert (e.tiles_ic, e.tiles_oh, e.tiles_ow, e.tiles_oc) == (2, 2, 2, 2)
    assert e.compute_cycles == 16 and e.macs == 10000
    assert e.utilization == pytest.approx(10000 / (16 * 4096))
    assert e.utilization == pytest.approx((20 / 32) * (5 / 8) * (5 / 8) * (20 / 32))


def test_strided_1x1_fetches_only_touched_inputs():
    w = dict(kind="conv", in_channels=64, out_channels=128, kernel=1, stride=2, in_hw=56)
    e = estimate_layer(w, "int8")
    assert (e.compute_cycles, e.dram_ifmap_read_bytes) == (4 * 7 * 7 * 8, 64 * 28 * 28)


def test_loop_order_choice_minimises_dram_bytes():
    spec = get_preset("int8")
    # input 56x56x64 = 200,704 B does not fit 128 KiB; all weights 73,728 B exceed 64 KiB:
    # pixel_outer streams the input once in 2 bands and reads the weights twice
    w = dict(kind="conv", in_channels=64, out_channels=128, kernel=3, stride=2, padding=1, in_hw=56)
    e = estimate_layer(w, spec)
    assert e.dataflow == "pixel_outer"
    assert e.dram_weight_read_bytes == 2 * 73728 and e.dram_ifmap_read_bytes == 200704
    # 512x512 3x3 on 7x7: an oc slice (73,728 B) exceeds 64 KiB but partial sums fit, so
    # every weight is fetched once
    w = dict(kind="conv", in_channels=512, out_channels=512, kernel=3, padding=1, in_hw=7)
    e = estimate_layer(w, spec)
    assert e.dataflow == "weight_stream" and e.dram_weight_read_bytes == 512 * 512 * 9
    assert e.ofmap_sram_write_bytes > 512 * 49  # partial sums spilled between ic tiles
    # everything fits: weights resident, output stationary
    assert estimate_layer(SMALL, spec).dataflow == "oc_outer"


def test_decoder_and_prng_stalls():
    fc = dict(kind="linear", in_channels=512, out_channels=1000)
    e = estimate_layer(fc, get_preset("hiddenite", dram_bytes_per_cycle=1e6))
    assert e.compute_cycles == 32 * 63
    assert e.decoder_cycles == 512000 // 128 and e.bound == "decoder"
    e = estimate_layer(
        fc,
        get_preset(
            "hiddenite", dram_bytes_per_cycle=1e6, prng_lanes=16, decoder_bits_per_cycle=1e6
        ),
    )
    assert e.prng_cycles == 512000 // 16 and e.bound == "prng"


# ---------------------------------------------------------------------------------------------
# invariants on a whole network
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r18():
    return resnet_workloads(18, density=0.3, codec="entropy")


def test_hiddenite_offchip_model_bytes_are_mask_plus_params(r18):
    t = estimate(r18, "hiddenite").totals
    assert t["offchip_model_bytes"] == sum(w.mask_bytes + w.param_bytes for w in r18)
    assert t["model_bytes"] == t["offchip_model_bytes"]
    assert t["offchip_bytes"] == t["offchip_model_bytes"] + t["offchip_activation_bytes"]


def test_bnn_moves_exactly_one_bit_per_weight(r18):
    rep = estimate(r18, "bnn")
    for w, r in zip(r18, rep.rows, strict=True):
        assert r.dram_weight_read_bytes == math.ceil(w.weights / 8)
        assert r.dram_mask_read_bytes == 0
    weights = sum(w.weights for w in r18)
    assert rep.totals["dram_weight_read_bytes"] == weights / 8  # all layer sizes divide by 8
    assert rep.totals["offchip_model_bytes"] == weights / 8 + sum(w.param_bytes for w in r18)
    int8 = estimate(r18, "int8").totals
    assert int8["model_bytes"] == weights + sum(w.param_bytes for w in r18)
    # with the same 64 KiB weight buffer INT8 must re-read some weights (layer2.0.conv1)
    assert int8["dram_weight_read_bytes"] > weights


@pytest.mark.parametrize("arch", ["hiddenite", "bnn", "int8"])
def test_energy_is_sum_of_components_and_utilization_bounded(r18, arch):
    rep = estimate(r18, arch)
    comps = ("compute", "sram", "dram", "prng", "decoder", "leakage")
    for r in rep.rows:
        assert r.energy_pj == pytest.approx(sum(getattr(r, f"energy_{c}_pj") for c in comps))
        assert 0 < r.utilization <= 1
        assert r.total_cycles >= r.compute_cycles
        assert r.total_cycles == max(
            r.compute_cycles, r.dram_cycles, r.decoder_cycles, r.prng_cycles
        )
    t = rep.totals
    assert t["energy_pj"] == pytest.approx(sum(t[f"energy_{c}_pj"] for c in comps))
    assert t["energy_pj"] == pytest.approx(sum(r.energy_pj for r in rep.rows))
    assert t["cycles"] == sum(r.total_cycles for r in rep.rows)
    assert t["latency_s"] == pytest.approx(t["cycles"] / get_preset(arch).clock_hz)
    assert t["inferences_per_s"] == pytest.approx(1 / t["latency_s"])
    assert t["tops_per_watt"] == pytest.approx(2 * t["macs"] / t["energy_pj"])
    assert t["macs"] == sum(w.macs for w in r18)
    assert t["onchip_tops_per_watt"] > t["tops_per_watt"]
    for key in (
        "offchip_model_bytes",
        "offchip_bytes",
        "macs",
        "cycles",
        "energy_pj",
        "tops_per_watt",
        "latency_s",
        "inferences_per_s",
    ):
        assert key in t


def test_skipping_masked_weights_scales_ops_by_density():
    w = LayerWorkload.from_dict(dict(SMALL, density=0.25))
    skip = estimate_layer(w, "hiddenite", skip_masked=True)
    dense = estimate_layer(w, "hiddenite", skip_masked=False)
    assert skip.pe_ops == dense.pe_ops * 0.25 == skip.kept_macs
    assert skip.energy_compute_pj == pytest.approx(dense.energy_compute_pj * 0.25)
    assert skip.total_cycles == dense.total_cycles  # lock-step array: same cycles
    # baselines have no mask: density does not change their work
    assert estimate_layer(w, "bnn").pe_ops == w.macs


def test_activations_on_chip_keeps_middle_layers_off_dram():
    wl = resnet_workloads(18, input_hw=32, num_classes=10, cifar_stem=True)
    off = estimate(wl, "hiddenite").rows
    on = estimate(wl, "hiddenite", activations_on_chip=True).rows
    assert on[0].dram_ifmap_read_bytes == off[0].dram_ifmap_read_bytes > 0  # the image
    assert on[-1].dram_ofmap_write_bytes == off[-1].dram_ofmap_write_bytes > 0  # the logits
    assert sum(r.dram_ifmap_read_bytes for r in on[1:]) == 0  # CIFAR maps fit 128 KiB
    assert sum(r.offchip_bytes for r in on) < sum(r.offchip_bytes for r in off)
    single = estimate_layer(wl[5], "hiddenite", activations_on_chip=True)
    assert single.dram_ifmap_read_bytes == 0 and single.dram_ofmap_write_bytes == 0


def test_full_resnet50_estimate_is_fast():
    wl = resnet_workloads(50)
    assert len(wl) == 54
    t0 = time.perf_counter()
    for arch in ("hiddenite", "bnn", "int8"):
        estimate(wl, arch)
    assert (time.perf_counter() - t0) / 3 < 0.25


# ---------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------
def test_workload_from_dict_and_validation():
    w = LayerWorkload.from_dict(
        dict(
            kind="conv",
            in_channels=3,
            out_channels=8,
            kernel=7,
            stride=2,
            padding=3,
            in_hw=224,
            density=0.5,
        )
    )
    assert (w.out_h, w.out_w) == (112, 112)
    assert w.weights == 8 * 3 * 49 and w.kept_weights == 588
    assert w.macs == 112 * 112 * w.weights
    assert w.mask_bytes == math.ceil(w.weights / 8) and w.mask_codec == "packed"
    with pytest.raises(ValueError, match="divisible by groups"):
        LayerWorkload.from_dict(dict(in_channels=3, out_channels=8, groups=2))
    with pytest.raises(ValueError, match="density"):
        LayerWorkload.from_dict(dict(in_channels=3, out_channels=8, density=1.5))
    with pytest.raises(ValueError, match="unknown workload field"):
        LayerWorkload.from_dict(dict(in_channels=3, out_channels=8, chanels=3))
    dw = LayerWorkload.from_dict(
        dict(in_channels=32, out_channels=32, groups=32, kernel=3, padding=1, in_hw=8)
    )
    e = estimate_layer(dw, "int8")
    # groups run one after another: a depthwise conv uses 1/16 of the ic and of the oc PEs
    assert e.macs == 32 * 9 * 64 and e.tiles_ic == 1 and e.utilization == pytest.approx(1 / 256)


def test_mask_bytes_codecs():
    assert entropy_bits_per_weight is entropy_bound_bits  # one definition, in hiddenite.codecs
    assert entropy_bound_bits(0.3) == pytest.approx(0.881, abs=1e-3)
    assert entropy_bound_bits(0.1) == pytest.approx(0.469, abs=1e-3)
    assert mask_bytes_for("packed", 1000, 0.3) == 125
    assert mask_bytes_for("packed", 1001, 0.3) == 126
    assert mask_bytes_for("entropy", 8000, 0.3) == math.ceil(entropy_bound_bits(0.3) * 1000)
    assert mask_bytes_for("rle", 8000, 0.1) == mask_bytes_for("entropy", 8000, 0.1)
    assert mask_bytes_for("none", 8000, 0.1) == 0
    # a codec's size follows its declared size model, not its name
    assert mask_bytes_for("entropy-grouped", 8000, 0.1) == mask_bytes_for("entropy", 8000, 0.1)
    with pytest.raises(WorkloadError, match="codec"):
        mask_bytes_for("zip", 10, 0.5)
    with pytest.raises(WorkloadError, match="density"):
        mask_bytes_for("entropy-grouped", 10, 1.5)


class _TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # with bias
        self.bn1 = nn.BatchNorm2d(8, affine=False)  # running mean/var only
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)  # + weight and bias
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_workloads_from_plain_module():
    model = _TinyCNN().train()
    wl = workloads_from_module(model, (2, 3, 8, 8))
    assert model.training  # mode restored
    assert [w.name for w in wl] == ["conv1", "conv2", "fc"]
    c1, c2, fc = wl
    assert (c1.kind, c1.in_channels, c1.out_channels, c1.kernel_h, c1.in_h, c1.out_h, c1.batch) == (
        "conv",
        3,
        8,
        3,
        8,
        8,
        2,
    )
    assert (c2.stride, c2.padding, c2.out_h, c2.out_w) == (2, 1, 4, 4)
    assert (fc.kind, fc.in_channels, fc.out_channels, fc.batch, fc.out_w) == (
        "linear",
        16,
        10,
        2,
        1,
    )
    assert c1.param_bytes == 4 * (8 + 2 * 8)  # bias + running mean/var
    assert c2.param_bytes == 4 * (4 * 16)  # running mean/var + affine weight/bias
    assert fc.param_bytes == 4 * 10
    assert c1.macs == 2 * 8 * 8 * 8 * 3 * 9
    assert all(w.density == 1.0 and w.mask_codec == "packed" for w in wl)
    assert c2.mask_bytes == math.ceil(c2.weights / 8)


class _MaskedConv(nn.Conv2d):
    def __init__(self, *args, density_pattern: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        m = torch.zeros(self.weight.numel())
        m[::density_pattern] = 1
        self.register_buffer("_mask", m.view_as(self.weight))

    def mask(self):
        return self._mask


class _MaskedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_MaskedConv(4, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x).flatten(2).mean(-1))


def test_workloads_from_module_uses_mask_and_mask_bytes_fn():
    net = _MaskedNet()
    wl = workloads_from_module(net, (1, 4, 6, 6))
    conv = wl[0]
    assert conv.name == "features.0" and conv.density == pytest.approx(0.25)
    assert conv.mask_bytes == math.ceil(8 * 4 * 9 / 8)
    seen = {}

    def fn(name, mask):
        seen[name] = mask
        return "rle", 7

    wl = workloads_from_module(net, (1, 4, 6, 6), mask_bytes_fn=fn)
    assert (wl[0].mask_codec, wl[0].mask_bytes) == ("rle", 7)
    assert list(seen) == ["features.0"]  # only layers with a mask
    assert seen["features.0"].dtype == np.bool_ and seen["features.0"].shape == (8, 4, 3, 3)
    rep = simulate(net, "hiddenite", input_shape=(1, 4, 6, 6), mask_bytes_fn=fn)
    assert rep.rows[0].dram_mask_read_bytes == 7


def test_linear_over_tokens_maps_tokens_to_positions():
    lin = nn.Linear(32, 64)
    (w,) = workloads_from_module(lin, (3, 5, 32))
    assert (w.batch, w.out_h, w.out_w, w.macs) == (3, 1, 5, 3 * 5 * 32 * 64)


# ---------------------------------------------------------------------------------------------
# simulate, reports, plots, sweeps
# ---------------------------------------------------------------------------------------------
def test_simulate_sources_and_archs(tmp_path):
    wl = resnet_workloads(18, input_hw=32, num_classes=10, cifar_stem=True)
    a = simulate(wl, "int8")
    b = simulate(wl, get_preset("int8"))
    path = tmp_path / "int8.yaml"
    get_preset("int8").to_yaml(path)
    c = simulate(wl, str(path))
    assert a.totals == b.totals == c.totals
    reps = compare(wl)
    assert list(reps) == ["hiddenite", "bnn", "int8"]
    assert reps["int8"].totals["offchip_model_bytes"] > reps["bnn"].totals["offchip_model_bytes"]
    rep = simulate(_TinyCNN(), "bnn", input_shape=(1, 3, 8, 8))
    assert [r.layer for r in rep.rows] == ["conv1", "conv2", "fc"]
    with pytest.raises(WorkloadError, match="input_shape"):
        simulate(_TinyCNN(), "bnn")
    with pytest.raises(WorkloadError, match=r"model\.hnn"):
        simulate("model.hnn")
    with pytest.raises(WorkloadError, match="does not fit"):
        simulate(_TinyCNN(), "bnn", input_shape=(1, 5, 8, 8))


def test_report_csv_and_json(tmp_path):
    wl = resnet_workloads(18, input_hw=32, num_classes=10, cifar_stem=True)
    rep = simulate(wl, "hiddenite")
    assert isinstance(rep, Report)
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    rep.to_csv(csv_path)
    rep.to_json(json_path)
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    assert len(rows) == 1 + len(wl)
    for col in (
        "layer",
        "total_cycles",
        "compute_cycles",
        "stall_cycles",
        "utilization",
        "ifmap_sram_read_bytes",
        "filter_sram_read_bytes",
        "dram_mask_read_bytes",
        "offchip_bytes",
        "energy_pj",
        "energy_dram_pj",
        "latency_s",
    ):
        assert col in header
    data = json.loads(json_path.read_text())
    assert data["arch"] == "hiddenite" and len(data["layers"]) == len(wl)
    assert data["totals"]["offchip_model_bytes"] == rep.totals["offchip_model_bytes"]
    assert data["spec"]["pe_ic"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temp files
    assert "TOPS/W" in rep.to_text()


def test_plots_write_pngs(tmp_path):
    wl = resnet_workloads(18, input_hw=32, num_classes=10, cifar_stem=True)
    reps = compare(wl)
    p1 = plot_energy_breakdown(reps["hiddenite"], tmp_path / "energy.png")
    p2 = plot_offchip_comparison(reps, tmp_path / "offchip.png")
    p3 = plot_pareto(sweep(wl, grid={"arch": ["hiddenite", "bnn"]}), tmp_path / "pareto.png")
    for p in (p1, p2, p3):
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["energy.png", "offchip.png", "pareto.png"]


def test_sweep_grid_rows_csv_and_pareto(tmp_path):
    wl = resnet_workloads(18, input_hw=32, num_classes=10, cifar_stem=True)
    grid = {
        "arch": ["hiddenite", "bnn"],
        "density": [0.1, 0.3],
        "codec": ["packed", "entropy"],
        "pe_dims": [(16, 4, 4, 16), (8, 8, 8, 8)],
        "weight_sram_bytes": [32768, 65536],
    }
    rows = sweep(wl, "hiddenite", grid, csv_path=tmp_path / "s.csv", plot_path=tmp_path / "p.png")
    assert len(rows) == 2 * 2 * 2 * 2 * 2
    assert any(r["pareto"] for r in rows)
    by = {
        (r["arch"], r["density"], r["codec"], r["pe_dims"], r["weight_sram_bytes"]): r for r in rows
    }
    key = ("hiddenite", 0.1, "entropy", "16x4x4x16", 65536)
    packed = ("hiddenite", 0.1, "packed", "16x4x4x16", 65536)
    assert by[key]["mask_bytes_source"] == "entropy-bound"
    assert by[packed]["mask_bytes_source"] == "packed-exact"
    # entropy-bound masks at k = 0.1 are ~0.469 bit/weight: about half of the packed size
    ratio = by[key]["offchip_model_bytes"] / by[packed]["offchip_model_bytes"]
    assert 0.45 < ratio < 0.55
    # the BNN moves the same bytes whatever the density
    assert (
        by[("bnn", 0.1, "entropy", "16x4x4x16", 65536)]["offchip_model_bytes"]
        == by[("bnn", 0.3, "packed", "16x4x4x16", 65536)]["offchip_model_bytes"]
    )
    with open(tmp_path / "s.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == len(rows) and "energy_per_inference_pj" in lines[0]
    assert (tmp_path / "p.png").exists()
    with pytest.raises(ValueError, match="unknown key"):
        sweep(wl, "hiddenite", {"sram": [1]})
    # a layer with stored weights keeps them all whatever the swept density
    stored = [dict(SMALL, weight_source="stored", weight_bits=8, op="mac"), dict(SMALL, name="h")]
    rows = sweep(stored, "hiddenite", {"density": [0.1, 0.5], "codec": ["packed"]})
    assert [r["offchip_model_bytes"] for r in rows] == [2304 + 128 + 288 + 128] * 2
    assert rows[0]["mask_bytes_source"] == "given+packed-exact"
    with pytest.raises(WorkloadError, match="codec"):
        sweep(stored, "hiddenite", {"codec": ["zip"]})


def test_sweep_throughput_thousands_of_points_per_minute():
    wl = resnet_workloads(50)
    t0 = time.perf_counter()
    rows = sweep(
        wl,
        "hiddenite",
        {
            "density": [0.1, 0.2, 0.3, 0.5, 1.0],
            "codec": ["packed", "entropy"],
            "clock_mhz": [100, 200, 400, 800],
        },
    )
    dt = time.perf_counter() - t0
    assert len(rows) == 40
    assert dt / len(rows) < 0.03  # > 2,000 ResNet-50 points per minute


# ---------------------------------------------------------------------------------------------
# per-method cost: where a layer's weights come from and what its PEs do
# ---------------------------------------------------------------------------------------------
def test_stored_layer_on_hiddenite_by_hand():
    # an INT8 layer stored in memory, run on the Hiddenite preset: weight traffic, full MACs,
    # no PRNG, no decoder, and exactly the INT8 preset's numbers for the same layer
    w = dict(SMALL, weight_source="stored", weight_bits=8, op="mac")
    e = estimate_layer(w, _raw("hiddenite"))
    _common_small_checks(e)
    assert (e.weight_source, e.op, e.weight_bits) == ("stored", "mac", 8)
    assert e.dram_weight_read_bytes == 2304 and e.dram_mask_read_bytes == 0
    assert e.prng_steps == 0 and e.decoder_bits == 0
    assert e.energy_compute_pj == pytest.approx(36864 * (0.2 + 0.075))
    int8 = estimate_layer(SMALL, _raw("int8"))
    assert e.energy_pj == pytest.approx(int8.energy_pj) == pytest.approx(757529.6)
    assert e.offchip_bytes == int8.offchip_bytes == 2944
    # a float32 weight: 4 B per weight and a 32-bit multiply (3.1 pJ) + 24-bit add (0.075 pJ)
    w32 = dict(SMALL, weight_source="stored", weight_bits=32, op="mac")
    e = estimate_layer(w32, _raw("hiddenite"))
    assert e.dram_weight_read_bytes == 4 * 2304 and e.filter_sram_read_bytes == 4 * 2304
    assert e.energy_compute_pj == pytest.approx(36864 * 3.175)
    # a binarized layer: 1 bit per weight from memory, an xnor/popcount add per weight
    e = estimate_layer(dict(SMALL, weight_source="stored", op="xnor"), _raw("hiddenite"))
    assert e.dram_weight_read_bytes == 288 and e.energy_compute_pj == pytest.approx(36864 * 0.075)
    # the baselines ignore the layer's method: their own weights from DRAM, as before
    bnn = estimate_layer(dict(SMALL, weight_source="stored", weight_bits=32, op="mac"), "bnn")
    assert bnn.dram_weight_read_bytes == 288 and bnn.weight_source == "dram"
    assert bnn.energy_pj == pytest.approx(estimate_layer(SMALL, "bnn").energy_pj)


def test_shift_add_costs_an_add_at_operand_width():
    # multicoat levels 0..3 (2 bits): a shift-add replaces the multiply, an add at
    # max(act_bits, weight_bits) = 8 bits (0.03 pJ), then the 24-bit accumulate (0.075 pJ)
    w = dict(SMALL, op="shift-add", weight_bits=2, decoded_bits=2 * 2304, mask_bytes=500)
    e = estimate_layer(w, _raw("hiddenite"), skip_masked=False)
    assert (e.weight_source, e.op, e.weight_bits) == ("prng", "shift-add", 2)
    assert e.energy_compute_pj == pytest.approx(36864 * (0.03 + 0.075))
    assert e.dram_mask_read_bytes == 500 and e.decoder_bits == 2 * 2304
    assert e.filter_sram_read_bytes == 2 * 288  # two decoded bits per weight on chip
    assert e.prng_steps == 2304  # the frozen weights are still regenerated


def test_kept_count_is_the_masks_rule():
    # 5 weights at k = 0.5: floor(2.5 + 0.5) = 3 kept (Python's round() would give 2)
    w = LayerWorkload.from_dict(dict(kind="linear", in_channels=1, out_channels=5, density=0.5))
    assert w.kept_weights == 3
    assert estimate_layer(w, "hiddenite").kept_macs == 3


def test_workload_errors_are_user_errors():
    assert issubclass(WorkloadError, UserError) and issubclass(WorkloadError, ValueError)
    for bad in (
        dict(in_channels=3, out_channels=8, density=1.5),
        dict(in_channels=3, out_channels=8, weight_source="flash"),
        dict(in_channels=3, out_channels=8, op="multiply"),
        dict(in_channels=3, out_channels=8, call=0),
    ):
        with pytest.raises(WorkloadError):
            LayerWorkload.from_dict(bad)


def _conv4(density, width=0.25, **config):
    return models.create(
        "conv4", SupermaskConfig(density=density, seed=1, **config), width=width
    ).eval()


def test_dense_kept_layer_is_charged_weight_bytes_and_mac_energy():
    model = _conv4(0.3, keep_first_dense=True)
    rep = simulate(model, _raw("hiddenite"))  # a zoo model: no input_shape needed
    first, second = rep.rows[0], rep.rows[1]
    n = model.features[0].weight.numel()
    assert (first.weight_source, first.op, first.weight_bits) == ("stored", "mac", 32)
    assert first.dram_weight_read_bytes == 4 * n and first.dram_mask_read_bytes == 0
    assert first.prng_steps == 0 and first.decoder_bits == 0 and first.pe_ops == first.macs
    assert first.energy_compute_pj == pytest.approx(first.macs * (3.1 + 0.075))
    assert (second.weight_source, second.op) == ("prng", "add")
    assert second.dram_mask_read_bytes > 0 and second.dram_weight_read_bytes == 0
    assert second.energy_compute_pj == pytest.approx(second.kept_macs * 0.075)
    assert rep.options["source"]["stored_layers"] == 1


def test_module_honours_codec_and_matches_its_file(tmp_path):
    model = _conv4(0.1)
    packed = simulate(model, codec="packed").totals["model_bytes"]
    entropy = simulate(model, codec="entropy")
    sizes = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert packed == sum(-(-n // 8) for n in sizes)  # one bit per weight: the binarized size
    assert entropy.totals["model_bytes"] < 0.55 * packed  # H(0.1) = 0.469 bit/weight
    assert entropy.options["source"]["mask_bytes_source"] == "coded"
    info = save(model, tmp_path / "c4.hnn", codec="entropy")
    t = info.totals()
    assert entropy.totals["model_bytes"] == t["mask_bytes"] == t["file_bytes"] - t["header_bytes"]
    assert simulate(tmp_path / "c4.hnn").totals["model_bytes"] == entropy.totals["model_bytes"]


def test_zoo_module_simulates_without_input_shape():
    model = _conv4(0.3)
    rep = simulate(model, "bnn")
    assert rep.options["source"]["input_shape"] == [1, 1, 28, 28]
    again = simulate(model, "bnn", input_shape=(1, 28, 28))  # C,H,W gets batch 1
    assert again.totals == rep.totals
    plain = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(WorkloadError, match="input_shape"):
        simulate(plain)


class _Folded(nn.Module):
    """One linear layer run twice (a folded block), a batch norm per iteration."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.shared = nn.Linear(32, 32)
        self.bn1 = nn.BatchNorm1d(32, affine=False)
        self.bn2 = nn.BatchNorm1d(32, affine=False)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        x = torch.relu(self.bn1(self.shared(x)))
        x = torch.relu(self.bn2(self.shared(x)))
        return self.out(x)


def test_repeated_calls_charge_model_bytes_once(tmp_path):
    model = _Folded()
    supermask_(model, SupermaskConfig(density=0.3, seed=2))
    model.eval()
    rep = simulate(model, "hiddenite", input_shape=(1, 8))
    assert [r.layer for r in rep.rows] == ["inp", "shared", "shared#2", "out"]
    shared, again = rep.rows[1], rep.rows[2]
    assert shared.dram_mask_read_bytes == again.dram_mask_read_bytes > 0  # loaded per call
    # its bias (32) and bn1 mean/var (64) are charged to the first call, bn2 to the second
    assert shared.model_bytes == shared.dram_mask_read_bytes + 4 * (32 + 64)
    assert again.model_bytes == 4 * 64  # bn2 only: mask and bias are stored once
    info = save(model, tmp_path / "folded.hnn")
    t = info.totals()
    assert rep.totals["model_bytes"] == t["file_bytes"] - t["header_bytes"]
    assert (
        rep.totals["offchip_model_bytes"] == rep.totals["model_bytes"] + again.dram_mask_read_bytes
    )
    for arch in ("bnn", "int8"):  # a baseline also stores the shared weights once
        rows = simulate(model, arch, input_shape=(1, 8)).rows
        assert rows[2].model_bytes == 4 * 64 < rows[1].model_bytes


@pytest.mark.parametrize(
    "grid, words",
    [
        ({"density": [0.5], "codec": ["packed", "zstd"]}, "unknown mask codec 'zstd'"),
        ({"skip_masked": [True, "maybe"]}, "expected true or false, got 'maybe'"),
        ({"activations_on_chip": [1]}, "expected true or false, got 1"),
        ({"codec": ["packed"], "density": [0.5, 2.0]}, r"must be in \(0, 1\], got 2.0"),
    ],
)
def test_sweep_checks_every_value_before_the_first_point(monkeypatch, grid, words):
    sweep_mod = importlib.import_module("hiddenite.hw.sweep")  # the name is also a function
    ran = []
    monkeypatch.setattr(sweep_mod, "estimate", lambda *a, **k: ran.append(1))
    with pytest.raises(UserError, match=words):
        sweep([SMALL], "hiddenite", grid)
    assert ran == []


def test_simulate_reads_the_module_inside_a_data_parallel_wrapper():
    """A zoo model wrapped by DataParallel / DDP keeps its input size and layer names."""
    model = models.create("mlp", SupermaskConfig(density=0.3, seed=1))
    plain, wrapped = simulate(model), simulate(nn.DataParallel(model))
    assert wrapped.totals == plain.totals
    assert [r.layer for r in wrapped.rows] == [r.layer for r in plain.rows]
    assert wrapped.options["source"]["model"] == "mlp"
