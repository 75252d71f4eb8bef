"""Calibration of the presets: the documented table is the one source of constants, scaling
rules on hand-computed cases, energy = sum of its parts, sensitivity by hand, one spec for all
workloads."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from hiddenite.errors import ConfigError
from hiddenite.hw import PRESETS, ArchSpec, EnergyTable, LayerWorkload, estimate_layer, get_preset
from hiddenite.hw.calibration import (
    CALIBRATION,
    HOROWITZ_45NM,
    PUBLISHED,
    Calibration,
    dynamic_scale,
    energy_fields,
    horowitz_sram_pj_per_byte,
    scale_energy,
    spec_fields,
)
from hiddenite.hw.sensitivity import (
    CHIP_WORKLOADS,
    calibrated_spec,
    chip_workloads,
    evaluate,
    published_tops_per_watt,
    sensitivity,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "hw-calibration.md"
S = (40 / 45) * (0.9 / 0.9) ** 2  # 45 nm -> 40 nm at 0.9 V, by hand

# A 3x3 conv, 16 -> 16 channels, 4x4 output, padding 1: exactly one tile of the array
# (the same layer test_hw_model checks on the uncalibrated table).
SMALL = dict(
    name="small",
    kind="conv",
    in_channels=16,
    out_channels=16,
    kernel_h=3,
    kernel_w=3,
    padding=1,
    in_h=4,
    in_w=4,
    out_h=4,
    out_w=4,
    param_bytes=128,
)


def _doc_table() -> dict[str, str]:
    """``{field: value cell}`` of the constants table in docs/hw-calibration.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 1. The constants", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} appears twice in the table"
            rows[m.group(1)] = m.group(2)
    return rows


# ---------------------------------------------------------------------------------------------
# the documented table is the single source
# ---------------------------------------------------------------------------------------------
def test_documented_table_is_the_calibration():
    rows = _doc_table()
    names = [f.name for f in dataclasses.fields(Calibration)]
    assert sorted(rows) == sorted(names)
    for name in names:
        value = float(rows[name].replace(",", "").split()[0])
        assert value == pytest.approx(getattr(CALIBRATION, name), rel=1e-3), name


def test_presets_are_built_from_the_table_only():
    energy = EnergyTable(**energy_fields(CALIBRATION))
    for name, spec in PRESETS.items():
        assert spec.energy == energy, name
        for field, value in spec_fields(CALIBRATION).items():
            assert getattr(spec, field) == value, (name, field)
    assert calibrated_spec() == PRESETS["hiddenite"]
    # ArchSpec() and EnergyTable() defaults are the calibrated values too
    assert EnergyTable() == energy
    assert ArchSpec().clock_mhz == CALIBRATION.clock_mhz
    # a different calibration gives a different preset: nothing else feeds the constants
    other = calibrated_spec(CALIBRATION.replace(vdd_v=1.0))
    assert other.energy.add(24) == pytest.approx(0.075 * (40 / 45) * (1.0 / 0.9) ** 2)


def test_published_figures_are_the_seeds():
    assert PUBLISHED["cifar100_tops_per_watt"] == 34.8
    assert PUBLISHED["imagenet_tops_per_watt"] == 16.0
    assert PUBLISHED["power_mw_at_cifar100"] == 40.0 and PUBLISHED["num_pes"] == 4096
    # the clock is derived from them: 34.8 TOPS/W x 40 mW / (2 ops x 4,096 PEs), in MHz
    derived = 34.8e12 * 40e-3 / (2 * 4096) / 1e6
    assert CALIBRATION.clock_mhz == pytest.approx(derived, abs=0.5)
    assert published_tops_per_watt() == {"imagenet-resnet50": 16.0, "cifar100-resnet18": 34.8}


# ---------------------------------------------------------------------------------------------
# scaling rules, hand-computed
# ---------------------------------------------------------------------------------------------
def test_scaling_rule_by_hand():
    # E = C V^2, C ~ feature size
    assert scale_energy(0.1, from_nm=45, to_nm=40, from_vdd_v=0.9, to_vdd_v=0.9) == pytest.approx(
        0.088888889
    )
    assert scale_energy(1.0, from_nm=45, to_nm=22.5, from_vdd_v=1.0, to_vdd_v=0.5) == 0.125
    assert scale_energy(2.0, from_nm=40, to_nm=40, from_vdd_v=0.9, to_vdd_v=1.1) == pytest.approx(
        2.0 * 1.21 / 0.81
    )
    assert dynamic_scale(CALIBRATION) == pytest.approx(8 / 9)
    assert dynamic_scale(CALIBRATION.replace(node_nm=45.0)) == 1.0


def test_calibrated_table_by_hand():
    e = get_preset("hiddenite").energy
    assert e.add(8) == pytest.approx(0.03 * S)
    assert e.add(24) == pytest.approx(0.075 * S)  # linear between 16 and 32 bits, scaled
    assert e.mult(8) == pytest.approx(0.2 * S)
    assert e.mac(8, 24) == pytest.approx(0.275 * S)
    # SRAM: one 8 KiB bank per access, whatever the buffer's capacity (Horowitz 10 pJ / 8 B)
    for capacity in (8 * 1024, 64 * 1024, 128 * 1024, 1 << 20):
        assert e.sram_read(capacity) == pytest.approx(1.25 * S)
        assert e.sram_write(capacity) == pytest.approx(1.25 * S)
    assert e.prng_step_pj == pytest.approx(0.1 * S)
    assert e.decoder_pj_per_bit == pytest.approx(0.01 * S)
    assert e.dram_pj_per_byte == pytest.approx(1950 / 8)  # off chip: not scaled
    assert e.leakage_mw == 2.0
    # Horowitz's curve, used to pick a bank's energy: linear in log2(capacity)
    assert horowitz_sram_pj_per_byte(8 * 1024) == 1.25
    assert horowitz_sram_pj_per_byte(128 * 1024) == pytest.approx(2.5 + 2 / 5 * 10.0)
    assert horowitz_sram_pj_per_byte(4 * 1024) == 1.25  # clamped
    big = calibrated_spec(CALIBRATION.replace(sram_bank_bytes=32 * 1024)).energy
    assert big.sram_read(128 * 1024) == pytest.approx(2.5 * S)
    # the uncalibrated source table stays available
    raw = EnergyTable.horowitz_45nm()
    assert dict(raw.add_pj) == HOROWITZ_45NM["add_pj"] and raw.leakage_mw == 0


# ---------------------------------------------------------------------------------------------
# energy = the sum of its parts (leakage included), by hand on the calibrated preset
# ---------------------------------------------------------------------------------------------
def test_small_layer_on_calibrated_preset_by_hand():
    e = estimate_layer(SMALL, "hiddenite")
    assert e.macs == 36864 and e.total_cycles == 58  # DRAM-bound: 928 B / 16 B per cycle
    compute = 36864 * 0.075 * S
    # SRAM bytes: ifmap 576 read + 256 written, ofmap 256 + 256, filter 288 + 288, params
    # 128 + 128 = 2,176 B, each a bank access
    sram = 2176 * 1.25 * S
    prng = 2304 * 0.1 * S
    decoder = 2304 * 0.01 * S
    dram = 928 * 243.75
    leakage = 2e-3 * (58 / 170e6) * 1e12  # 2 mW x latency, in pJ
    assert e.energy_compute_pj == pytest.approx(compute)
    assert e.energy_sram_pj == pytest.approx(sram)
    assert e.energy_prng_pj == pytest.approx(prng)
    assert e.energy_decoder_pj == pytest.approx(decoder)
    assert e.energy_dram_pj == pytest.approx(dram)
    assert e.energy_leakage_pj == pytest.approx(leakage)
    assert e.energy_pj == pytest.approx(compute + sram + prng + decoder + dram + leakage)
    assert e.latency_s == pytest.approx(58 / 170e6)


def test_leakage_is_static_power_times_time():
    slow = estimate_layer(SMALL, get_preset("hiddenite", clock_mhz=85))
    fast = estimate_layer(SMALL, get_preset("hiddenite", clock_mhz=340))
    assert slow.energy_leakage_pj == pytest.approx(4 * fast.energy_leakage_pj)
    assert slow.energy_compute_pj == fast.energy_compute_pj  # dynamic energy: no clock
    off = estimate_layer(SMALL, get_preset("hiddenite", energy={"leakage_mw": 0.0}))
    assert off.energy_leakage_pj == 0


def test_register_reuse_divides_activation_reads_by_oc_tiles():
    # 1x1 conv, 16 -> 64 channels on a 4x4 map: 4 oc tiles, each re-reading the 256 B input
    w = dict(kind="conv", in_channels=16, out_channels=64, in_h=4, in_w=4, out_h=4, out_w=4)
    got = [
        estimate_layer(w, get_preset("hiddenite", act_reuse_oc_tiles=r)).ifmap_sram_read_bytes
        for r in (1, 2, 3, 4, 8)
    ]
    assert got == [16 * 16 * 4, 16 * 16 * 2, 16 * 16 * 2, 16 * 16, 16 * 16]
    with pytest.raises(ValueError, match="act_reuse_oc_tiles"):
        get_preset("hiddenite", act_reuse_oc_tiles=0)


# ---------------------------------------------------------------------------------------------
# sensitivity, by hand on the small layer
# ---------------------------------------------------------------------------------------------
def test_sensitivity_on_a_tiny_workload_by_hand():
    ops = 2 * 36864
    dynamic = (36864 * 0.075 + 2176 * 1.25 + 2304 * 0.1 + 2304 * 0.01) * S  # on chip, pJ
    leak = 2e-3 * (58 / 170e6) * 1e12
    ref, rows = sensitivity(
        {"small": [LayerWorkload.from_dict(SMALL)]},
        {"leakage_mw": (4.0,), "vdd_v": (0.45, 1.8)},
    )
    assert ref["small"] == pytest.approx(ops / (dynamic + leak))
    # sorted by impact: the supply (x1/4 and x4 on dynamic energy) before the leakage (x2)
    assert [(r.assumption, r.value) for r in rows] == [
        ("vdd_v", 0.45),
        ("vdd_v", 1.8),
        ("leakage_mw", 4.0),
    ]
    half, double, leak4 = rows
    assert half.metric["small"] == pytest.approx(ops / (dynamic / 4 + leak))
    assert double.metric["small"] == pytest.approx(ops / (dynamic * 4 + leak))
    assert leak4.metric["small"] == pytest.approx(ops / (dynamic + 2 * leak))
    assert leak4.change["small"] == pytest.approx((dynamic + leak) / (dynamic + 2 * leak) - 1)
    assert half.base_value == 0.9 and leak4.base_value == 2.0
    with pytest.raises(ConfigError, match="unknown assumption 'vdd'"):
        sensitivity({"small": [LayerWorkload.from_dict(SMALL)]}, {"vdd": (1.0,)})


# ---------------------------------------------------------------------------------------------
# no per-workload fudge factor
# ---------------------------------------------------------------------------------------------
def test_both_workloads_run_on_the_same_spec_without_overrides():
    workloads = chip_workloads()
    assert set(workloads) == set(CHIP_WORKLOADS) == {"imagenet-resnet50", "cifar100-resnet18"}
    reports = evaluate(workloads)
    specs = [rep.spec for rep in reports.values()]
    assert all(s is PRESETS["hiddenite"] for s in specs)  # the very same object
    assert all(rep.options == reports["imagenet-resnet50"].options for rep in reports.values())
    # a workload carries no technology constant that could override the spec's
    technology = (
        {f.name for f in dataclasses.fields(Calibration)}
        | set(EnergyTable.field_names())
        | set(spec_fields(CALIBRATION))
    )
    assert not technology & {f.name for f in dataclasses.fields(LayerWorkload)}
    # every calibration value is one scalar: nothing keyed by workload
    assert all(isinstance(v, int | float) for v in dataclasses.asdict(CALIBRATION).values())
    # evaluating each workload alone gives the same totals as evaluating them together
    for name, wl in workloads.items():
        alone = evaluate({name: wl})[name]
        assert alone.totals == reports[name].totals
    # dense-equivalent ops: 2 per MAC of the layer shape, whatever the density
    sparse = evaluate(chip_workloads(density=0.1))
    for name in workloads:
        assert sparse[name].totals["ops"] == reports[name].totals["ops"]
        assert reports[name].totals["ops"] == 2 * reports[name].totals["macs"]


# ---------------------------------------------------------------------------------------------
# the Calibration config
# ---------------------------------------------------------------------------------------------
def test_calibration_config_round_trip_and_errors():
    data = json.loads(CALIBRATION.to_json())
    assert data["version"] == Calibration.VERSION
    assert Calibration.from_dict(data) == CALIBRATION
    with pytest.raises(ConfigError, match=r"calibration.vdd_v: must be > 0"):
        CALIBRATION.replace(vdd_v=0.0)
    with pytest.raises(ConfigError, match=r"calibration.leakage_mw: must be >= 0"):
        CALIBRATION.replace(leakage_mw=-1.0)
    with pytest.raises(ConfigError, match=r"calibration.sram_bank_bytes: must be a whole"):
        CALIBRATION.replace(sram_bank_bytes=1000.5)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) vdd"):
        Calibration.from_dict({"vdd": 1.0})
    with pytest.raises(ConfigError, match="version 2 is not supported"):
        Calibration.from_dict({"version": 2})
    assert CALIBRATION.replace(leakage_mw=0).leakage_mw == 0.0
