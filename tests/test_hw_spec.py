"""Architecture specs: presets, energy table, YAML round trip, validation errors."""

from __future__ import annotations

import math
import os

import pytest
import yaml

from hiddenite.hw import PRESETS, ArchSpec, EnergyTable, SpecError, get_preset, simulate


def test_presets_share_pe_count_clock_and_memory():
    specs = [get_preset(n) for n in ("hiddenite", "bnn", "int8")]
    assert set(PRESETS) == {"hiddenite", "bnn", "int8"}
    for s in specs:
        assert s.num_pes == 4096 == math.prod(s.pe_dims)
        assert s.pe_dims == (16, 4, 4, 16)
        for f in (
            "clock_mhz",
            "act_in_sram_bytes",
            "act_out_sram_bytes",
            "weight_sram_bytes",
            "param_sram_bytes",
            "dram_bytes_per_cycle",
            "act_bits",
            "accum_bits",
        ):
            assert getattr(s, f) == getattr(specs[0], f), f
    hid, bnn, int8 = specs
    assert (hid.weight_source, hid.weight_bits, hid.mask_bits) == ("prng", 1, 1)
    assert (bnn.weight_source, bnn.weight_bits, bnn.mask_bits) == ("dram", 1, 0)
    assert (int8.weight_source, int8.weight_bits, int8.mask_bits) == ("dram", 8, 0)
    assert hid.prng_lanes == 256 and hid.decoder_bits_per_cycle > 0


def test_get_preset_overrides_and_unknown_name():
    s = get_preset("hiddenite", clock_mhz=100)
    assert s.clock_mhz == 100 and s.name == "hiddenite"
    assert get_preset("hiddenite").clock_mhz == 170  # presets are not mutated (calibrated)
    with pytest.raises(SpecError, match="unknown preset"):
        get_preset("tpu")


def test_horowitz_energy_table_lookups():
    e = EnergyTable.horowitz_45nm()  # the published source table (presets: calibrated 40 nm)
    assert e.add(8) == pytest.approx(0.03)
    assert e.add(16) == pytest.approx(0.05)
    assert e.add(32) == pytest.approx(0.1)
    assert e.add(24) == pytest.approx(0.075)  # linear between 16 and 32 bits
    assert e.add(4) == pytest.approx(0.015)  # proportional below the table
    assert e.mult(8) == pytest.approx(0.2)
    assert e.mult(32) == pytest.approx(3.1)
    assert e.mac(8, 24) == pytest.approx(0.275)
    # 64-bit SRAM reads: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ -> per byte / 8; log2 interpolation
    assert e.sram_read(8 * 1024) == pytest.approx(1.25)
    assert e.sram_read(32 * 1024) == pytest.approx(2.5)
    assert e.sram_read(1024 * 1024) == pytest.approx(12.5)
    assert e.sram_read(128 * 1024) == pytest.approx(2.5 + 2 / 5 * 10.0)
    assert e.sram_read(1024) == pytest.approx(1.25)  # clamped
    assert e.sram_write(64 * 1024) == e.sram_read(64 * 1024)
    assert e.dram_pj_per_byte == pytest.approx(1950 / 8)  # midpoint of 1.3-2.6 nJ per 64 bit
    assert e.leakage_mw == 0
    # the presets: the same figures x 40/45 (45 nm -> 40 nm at 0.9 V, docs/hw-calibration.md)
    assert get_preset("hiddenite").pe_op_pj == pytest.approx(0.075 * 40 / 45)
    assert get_preset("bnn").pe_op_pj == pytest.approx(0.075 * 40 / 45)
    assert get_preset("int8").pe_op_pj == pytest.approx(0.275 * 40 / 45)


def test_specs_are_frozen_and_hashable():
    s = get_preset("int8")
    with pytest.raises(AttributeError):
        s.clock_mhz = 1.0  # type: ignore[misc]
    assert hash(s) == hash(ArchSpec.from_dict(s.to_dict()))


def test_dict_and_yaml_round_trip(tmp_path):
    for name in PRESETS:
        s = get_preset(name)
        assert ArchSpec.from_dict(s.to_dict()) == s
        path = tmp_path / f"{name}.yaml"
        s.to_yaml(path)
        assert ArchSpec.from_yaml(path) == s
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_yaml_partial_spec_with_pe_dims_shorthand(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nweight_source: dram\nweight_bits: 8\nmask_bits: 0\nprng_lanes: 0\n"
        "pe_dims: [8, 4, 4, 8]\nenergy:\n  dram_pj_per_byte: 20.0\n  add_pj: {8: 0.02}\n"
    )
    s = ArchSpec.from_yaml(path)
    assert s.num_pes == 1024 and s.pe_dims == (8, 4, 4, 8)
    assert s.energy.dram_pj_per_byte == 20.0
    assert s.energy.add_pj == ((8, 0.02),)  # a table given in full replaces the default table


def test_replace_overrides_single_energy_fields_and_pe_dims():
    s = get_preset("hiddenite")
    t = s.replace(energy={"dram_pj_per_byte": 100.0}, **{"energy.prng_step_pj": 0.5})
    assert t.energy.dram_pj_per_byte == 100.0 and t.energy.prng_step_pj == 0.5
    assert t.energy.add_pj == s.energy.add_pj
    u = s.replace(energy={"add_pj": {24: 0.07}})  # merged into the table
    r = 40 / 45  # the preset's adds are Horowitz's scaled to 40 nm
    want = {8: 0.03 * r, 16: 0.05 * r, 24: 0.07, 32: 0.1 * r}
    assert dict(u.energy.add_pj) == pytest.approx(want)
    v = s.replace(pe_dims=(32, 4, 4, 32))
    assert v.num_pes == 16384
    w = s.replace(pe_oc=8)
    assert w.num_pes == 2048


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pe_ic": 0}, "pe_ic"),
        ({"pe_oh": -4}, "pe_oh"),
        ({"act_in_sram_bytes": 0}, "act_in_sram_bytes"),
        ({"weight_sram_bytes": -1}, "weight_sram_bytes"),
        ({"act_bits": 0}, "act_bits"),
        ({"act_bits": 33}, "act_bits"),
        ({"weight_bits": 64}, "weight_bits"),
        ({"mask_bits": 2}, "mask_bits"),
        ({"accum_bits": 4}, "accum_bits"),
        ({"clock_mhz": 0}, "clock_mhz"),
        ({"dram_bytes_per_cycle": -3.0}, "dram_bytes_per_cycle"),
        ({"weight_source": "flash"}, "weight_source"),
        ({"prng_lanes": 0}, "prng_lanes"),
        ({"decoder_bits_per_cycle": 0.0}, "decoder_bits_per_cycle"),
        ({"pe_ic": 2.5}, "pe_ic"),
        ({"pe_ic": True}, "pe_ic"),
        ({"energy": {"dram_pj_per_byte": -1.0}}, "energy.dram_pj_per_byte"),
        ({"energy": {"add_pj": {}}}, "energy.add_pj"),
    ],
)
def test_impossible_configs_raise_spec_error_naming_the_field(overrides, field):
    data = get_preset("hiddenite").to_dict()
    for k, v in overrides.items():
        if k == "energy":
            data["energy"].update(v)
        else:
            data[k] = v
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(data)
    assert str(info.value).startswith(field), str(info.value)
    assert isinstance(info.value, ValueError)


def test_pe_product_mismatch_names_the_fix():
    with pytest.raises(SpecError, match=r"num_pes: .*= 2048.* set num_pes to 2048"):
        ArchSpec.from_dict({"pe_dims": [16, 4, 4, 8], "num_pes": 4096})
    with pytest.raises(SpecError, match="num_pes"):
        get_preset("hiddenite").replace(pe_ic=8, num_pes=4096)


def test_unknown_fields_are_rejected_with_a_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "clok_mhz": 100}))
    with pytest.raises(
        SpecError,
        match=r"typo.yaml: clok_mhz: unknown field; did you mean "
        r"'clock_mhz'",
    ):
        ArchSpec.from_yaml(path)
    with pytest.raises(SpecError, match=r"energy.dram_pj: unknown field"):
        ArchSpec.from_dict({"energy": {"dram_pj": 1.0}})
    with pytest.raises(SpecError, match="unknown field"):
        get_preset("bnn").replace(sram=3)
    with pytest.raises(SpecError, match="expected a mapping"):
        ArchSpec.from_dict([1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- hostile YAML


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: " + "[" * 5000 + "]" * 5000, "nested more than 16 levels deep"),
        ("".join(" " * i + f"k{i}:\n" for i in range(100)), "nested more than 16 levels"),
        ("name: a\nname: b\n", "key 'name' appears twice"),
        ("a: &x [1, 2]\nb: *x\n", "aliases"),
        ("# " + "x" * (1 << 20), "larger than 1,048,576 bytes"),
        ("name: \xff", None),
        ("a: [1,\n", "not valid YAML"),
    ],
    ids=["deep-flow", "deep-block", "duplicate", "alias", "huge", "latin1", "syntax"],
)
def test_hostile_spec_files_are_spec_errors(tmp_path, text, words):
    path = tmp_path / "spec.yaml"
    if words is None:
        path.write_bytes(text.encode("latin-1"))
        words = "not UTF-8"
    else:
        path.write_text(text)
    with pytest.raises(SpecError, match=words):
        ArchSpec.from_yaml(path)


def test_a_fifo_spec_does_not_block(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="is a FIFO"):
        ArchSpec.from_yaml(fifo)


def test_a_spec_path_given_to_simulate_fails_as_a_spec_error(tmp_path):
    """The one YAML reader turns a syntax error into a SpecError, wherever a spec is read."""
    path = tmp_path / "spec.yaml"
    path.write_text("a: [1,\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        simulate("mlp", arch=str(path), density=0.3)
