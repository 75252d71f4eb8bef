"""Accelerator architecture specs: validated frozen dataclasses, YAML round trip, presets.

An :class:`ArchSpec` describes one accelerator: a 4D PE array (input channel x output height x
output width x output channel), clock, bit widths, on-chip SRAM buffers, DRAM bandwidth, the
on-chip model-construction units (Xorshift PRNG lanes, mask decoder) and an :class:`EnergyTable`
(picojoules per event). Every number carries its unit in its name. Specs are immutable; use
:meth:`ArchSpec.replace` to derive variants. The default numbers are the calibration of
:mod:`hiddenite.hw.calibration` (sources in ``docs/hw-calibration.md``, equations in
``docs/hw-model.md``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..errors import UserError
from ..validate import open_regular
from .calibration import (
    BIT_SERIAL_DIGIT_PJ_45NM,
    CALIBRATION,
    HOROWITZ_45NM,
    energy_fields,
    spec_fields,
)

__all__ = [
    "PRESETS",
    "ArchSpec",
    "EnergyTable",
    "SpecError",
    "get_preset",
]

WEIGHT_SOURCES = ("prng", "dram")


class SpecError(UserError, ValueError):
    """An impossible or malformed architecture spec; the message names the field and the fix."""


def _fail(field_name: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{field_name}: {problem}; {fix}")


def _unknown_key_error(where: str, key: str, valid: list[str]) -> SpecError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _fail(
        f"{where}{key}", "unknown field", f"{hint}valid fields are: {', '.join(sorted(valid))}"
    )


def _as_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, f"expected an integer, got {value!r}", "give a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail(name, f"expected an integer, got {value!r}", "give a whole number")
        value = int(value)
    if value < minimum:
        raise _fail(
            name, f"must be >= {minimum}, got {value}", f"use a value of at least {minimum}"
        )
    if maximum is not None and value > maximum:
        raise _fail(name, f"must be <= {maximum}, got {value}", f"use a value of at most {maximum}")
    return int(value)


def _as_float(name: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, f"expected a number, got {value!r}", "give a number")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(name, f"must be finite, got {value}", "give a finite number")
    if positive and value <= 0:
        raise _fail(name, f"must be > 0, got {value}", "give a positive number")
    if not positive and value < 0:
        raise _fail(name, f"must be >= 0, got {value}", "give a non-negative number")
    return value


def _as_table(name: str, value: Any) -> tuple[tuple[int, float], ...]:
    """Normalise ``{key: pJ}`` (or pairs) into a sorted tuple of ``(int key, float pJ)``."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        try:
            items = [(k, v) for k, v in value]
        except (TypeError, ValueError):
            raise _fail(
                name, "expected a mapping {key: pJ}", "write it as e.g. {8: 0.03, 32: 0.1}"
            ) from None
    else:
        raise _fail(name, "expected a mapping {key: pJ}", "write it as e.g. {8: 0.03, 32: 0.1}")
    if not items:
        raise _fail(name, "table is empty", "give at least one {key: pJ} entry")
    out: dict[int, float] = {}
    for k, v in items:
        key = _as_int(
            f"{name}[{k!r}]", int(k) if isinstance(k, str) and k.isdigit() else k, minimum=1
        )
        out[key] = _as_float(f"{name}[{key}]", v, positive=False)
    return tuple(sorted(out.items()))


def _interp_linear(table: tuple[tuple[int, float], ...], x: float) -> float:
    """Piecewise-linear in ``x`` between table points; proportional (``e * x / x_edge``) outside."""
    xs = [k for k, _ in table]
    ys = [v for _, v in table]
    if x <= xs[0]:
        return ys[0] * x / xs[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]  # pragma: no cover


def _interp_log2(table: tuple[tuple[int, float], ...], size: float) -> float:
    """Linear in ``log2(size)`` between table points; clamped to the end values outside."""
    xs = [k for k, _ in table]
    ys = [v for _, v in table]
    if size <= xs[0]:
        return ys[0]
    if size >= xs[-1]:
        return ys[-1]
    ls = math.log2(size)
    for i in range(1, len(xs)):
        if size <= xs[i]:
            a, b = math.log2(xs[i - 1]), math.log2(xs[i])
            return ys[i - 1] + (ls - a) / (b - a) * (ys[i] - ys[i - 1])
    return ys[-1]  # pragma: no cover


_CAL_ENERGY = energy_fields(CALIBRATION)


def _pairs(table: Mapping[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted(table.items()))


@dataclass(frozen=True)
class EnergyTable:
    """Energy per event in picojoules (pJ), and the die's static power.

    The defaults are the calibrated 40 nm table (:mod:`hiddenite.hw.calibration`, documented in
    ``docs/hw-calibration.md``); :meth:`horowitz_45nm` gives the published 45 nm source figures
    unscaled. ``leakage_mw`` is charged as static power x latency.

    Tables are ``{key: pJ}`` mappings stored as sorted ``(key, pJ)`` pairs: ``add_pj`` and
    ``mult_pj`` are keyed by operand bit width (interpolated linearly in bits, proportional
    outside the table); ``sram_*_pj_per_byte`` are keyed by buffer capacity in bytes (the size
    class; interpolated linearly in log2(capacity), clamped outside). A MAC costs
    ``mult_pj(operand bits) + add_pj(accumulator bits)``; on a layer whose operator declares
    the ``log`` datapath (:mod:`hiddenite.ops`, Mitchell) ``log_mult_pj`` replaces ``mult_pj``
    (keyed by operand bits; derived in :func:`hiddenite.hw.calibration.energy_fields`).
    """

    add_pj: tuple[tuple[int, float], ...] = _pairs(_CAL_ENERGY["add_pj"])
    mult_pj: tuple[tuple[int, float], ...] = _pairs(_CAL_ENERGY["mult_pj"])
    sram_read_pj_per_byte: tuple[tuple[int, float], ...] = _pairs(
        _CAL_ENERGY["sram_read_pj_per_byte"]
    )
    sram_write_pj_per_byte: tuple[tuple[int, float], ...] = _pairs(
        _CAL_ENERGY["sram_write_pj_per_byte"]
    )
    dram_pj_per_byte: float = _CAL_ENERGY["dram_pj_per_byte"]
    prng_step_pj: float = _CAL_ENERGY["prng_step_pj"]
    decoder_pj_per_bit: float = _CAL_ENERGY["decoder_pj_per_bit"]
    leakage_mw: float = _CAL_ENERGY["leakage_mw"]  # static power of the die (mW)
    # Mitchell multiply at operand width b: derived in hiddenite.hw.calibration.energy_fields
    log_mult_pj: tuple[tuple[int, float], ...] = _pairs(_CAL_ENERGY["log_mult_pj"])
    # bit-serial PE (ProgressiveNN), one {-1,+1} digit: hiddenite.hw.calibration.energy_fields
    bit_serial_digit_pj: float = _CAL_ENERGY["bit_serial_digit_pj"]

    _TABLES = (
        "add_pj",
        "mult_pj",
        "sram_read_pj_per_byte",
        "sram_write_pj_per_byte",
        "log_mult_pj",
    )
    _SCALARS = (
        "dram_pj_per_byte",
        "prng_step_pj",
        "decoder_pj_per_bit",
        "leakage_mw",
        "bit_serial_digit_pj",
    )

    def __post_init__(self) -> None:
        for name in self._TABLES:
            object.__setattr__(self, name, _as_table(f"energy.{name}", getattr(self, name)))
        for name in self._SCALARS:
            object.__setattr__(
                self, name, _as_float(f"energy.{name}", getattr(self, name), positive=False)
            )

    @classmethod
    def horowitz_45nm(cls) -> EnergyTable:
        """The uncalibrated source table: Horowitz's 45 nm / 0.9 V figures as published (SRAM
        keyed by the whole buffer's capacity), PRNG 0.1 pJ/step and decoder 0.01 pJ/bit at
        45 nm, no leakage."""
        h = HOROWITZ_45NM
        return cls(
            add_pj=h["add_pj"],
            mult_pj=h["mult_pj"],
            log_mult_pj=h["add_pj"],  # a b-bit Mitchell multiply is a b-bit add (calibration.py)
            bit_serial_digit_pj=BIT_SERIAL_DIGIT_PJ_45NM,
            sram_read_pj_per_byte=h["sram_pj_per_byte"],
            sram_write_pj_per_byte=h["sram_pj_per_byte"],
            dram_pj_per_byte=h["dram_pj_per_byte"],
            prng_step_pj=CALIBRATION.prng_step_pj_45nm,
            decoder_pj_per_bit=CALIBRATION.decoder_pj_per_bit_45nm,
            leakage_mw=0.0,
        )

    # -- lookups ------------------------------------------------------------------------------
    def add(self, bits: int) -> float:
        """Energy of one integer add at ``bits`` bits (pJ)."""
        return _interp_linear(self.add_pj, bits)

    def mult(self, bits: int) -> float:
        """Energy of one ``bits`` x ``bits`` integer multiply (pJ)."""
        return _interp_linear(self.mult_pj, bits)

    def mac(self, operand_bits: int, accum_bits: int) -> float:
        """Energy of one multiply-accumulate: multiply at ``operand_bits`` + add at ``accum_bits``
        (pJ)."""
        return self.mult(operand_bits) + self.add(accum_bits)

    def log_mult(self, bits: int) -> float:
        """Energy of one ``bits``-bit Mitchell (logarithmic) multiply (pJ)."""
        return _interp_linear(self.log_mult_pj, bits)

    def sram_read(self, capacity_bytes: int) -> float:
        """Energy to read one byte from an SRAM of ``capacity_bytes`` (pJ/B)."""
        return _interp_log2(self.sram_read_pj_per_byte, capacity_bytes)

    def sram_write(self, capacity_bytes: int) -> float:
        """Energy to write one byte into an SRAM of ``capacity_bytes`` (pJ/B)."""
        return _interp_log2(self.sram_write_pj_per_byte, capacity_bytes)

    # -- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the table's fields."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyTable:
        """Build from a plain mapping; unknown keys raise :class:`SpecError`."""
        if not isinstance(data, Mapping):
            raise _fail(
                "energy",
                f"expected a mapping, got {type(data).__name__}",
                "write energy fields as a mapping",
            )
        valid = cls.field_names()
        for key in data:
            if key not in valid:
                raise _unknown_key_error("energy.", str(key), valid)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tables as ``{key: pJ}`` dicts) suitable for YAML/JSON."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = dict(value) if name in self._TABLES else value
        return out

    def replace(self, **overrides: Any) -> EnergyTable:
        """Copy with some fields replaced; a table given as a mapping is merged into the
        existing table (override single entries, e.g. ``add_pj={24: 0.07}``)."""
        valid = self.field_names()
        merged: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in valid:
                raise _unknown_key_error("energy.", key, valid)
            if key in self._TABLES and isinstance(value, Mapping):
                table = dict(getattr(self, key))
                table.update(dict(_as_table(f"energy.{key}", value)))
                value = table
            merged[key] = value
        return dataclasses.replace(self, **merged)


_INT_FIELDS: dict[str, tuple[int, int | None]] = {
    # name: (minimum, maximum)
    "pe_ic": (1, None),
    "pe_oh": (1, None),
    "pe_ow": (1, None),
    "pe_oc": (1, None),
    "num_pes": (1, None),
    "act_bits": (1, 32),
    "weight_bits": (1, 32),
    "mask_bits": (0, 1),
    "accum_bits": (1, 64),
    "act_in_sram_bytes": (1, None),
    "act_out_sram_bytes": (1, None),
    "weight_sram_bytes": (1, None),
    "param_sram_bytes": (1, None),
    "prng_lanes": (0, None),
    "weights_per_prng_step": (1, None),
    "act_reuse_oc_tiles": (1, None),
}
_FLOAT_FIELDS = ("clock_mhz", "dram_bytes_per_cycle")


@dataclass(frozen=True)
class ArchSpec:
    """One accelerator configuration (immutable, validated on construction).

    PE array: ``pe_ic x pe_oh x pe_ow x pe_oc`` processing elements (must equal ``num_pes``),
    one per (input channel, output row, output column, output channel) of a tile; each PE does one
    add (1-bit weights) or one MAC (wider weights) per cycle.

    ``weight_source``: ``"prng"`` regenerates weights on chip from Xorshift seeds (Hiddenite; the
    chip loads only the compressed mask and per-channel parameters), ``"dram"`` loads
    ``weight_bits`` per weight from DRAM (BNN / INT8 baselines).
    """

    name: str = "custom"
    weight_source: str = "prng"
    pe_ic: int = 16  # PEs along input channels (reduced by an adder tree)
    pe_oh: int = 4  # PEs along output rows
    pe_ow: int = 4  # PEs along output columns
    pe_oc: int = 16  # PEs along output channels
    num_pes: int = 4096  # total PEs; must equal the product of the four axes
    clock_mhz: float = CALIBRATION.clock_mhz  # clock frequency (MHz), docs/hw-calibration.md
    act_bits: int = 8  # activation bit width
    weight_bits: int = 1  # weight bit width (1 => add/sub PEs, >1 => MAC PEs)
    mask_bits: int = 1  # supermask bits per weight (1 for hidden networks, 0 for none)
    accum_bits: int = 24  # accumulator width inside a PE (bits)
    act_in_sram_bytes: int = 128 * 1024  # input-activation buffer (B)
    act_out_sram_bytes: int = 128 * 1024  # output-activation buffer (B)
    weight_sram_bytes: int = 64 * 1024  # weight / decoded-mask buffer (B)
    param_sram_bytes: int = 8 * 1024  # per-channel parameter buffer (B)
    dram_bytes_per_cycle: float = 16.0  # off-chip bandwidth (B/cycle)
    prng_lanes: int = 256  # parallel Xorshift generators (one step per lane per cycle)
    weights_per_prng_step: int = 1  # weights produced by one Xorshift step
    decoder_bits_per_cycle: float = 128.0  # mask-decoder output rate (decoded bits/cycle)
    # output-channel tiles served by one load of an input tile into the PE registers
    # (register-level reuse; that many partial sums per output position)
    act_reuse_oc_tiles: int = CALIBRATION.act_reuse_oc_tiles
    energy: EnergyTable = field(default_factory=EnergyTable)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _fail(
                "name", f"expected a non-empty string, got {self.name!r}", "give the spec a name"
            )
        if self.weight_source not in WEIGHT_SOURCES:
            raise _fail(
                "weight_source",
                f"unknown kind {self.weight_source!r}",
                f"use one of {', '.join(WEIGHT_SOURCES)}",
            )
        for name, (lo, hi) in _INT_FIELDS.items():
            object.__setattr__(
                self, name, _as_int(name, getattr(self, name), minimum=lo, maximum=hi)
            )
        for name in _FLOAT_FIELDS:
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        dec = _as_float("decoder_bits_per_cycle", self.decoder_bits_per_cycle, positive=False)
        object.__setattr__(self, "decoder_bits_per_cycle", dec)
        if isinstance(self.energy, Mapping):
            object.__setattr__(self, "energy", EnergyTable.from_dict(self.energy))
        elif not isinstance(self.energy, EnergyTable):
            raise _fail(
                "energy",
                f"expected a mapping or EnergyTable, got {self.energy!r}",
                "give the energy table as a mapping of fields",
            )
        product = self.pe_ic * self.pe_oh * self.pe_ow * self.pe_oc
        if product != self.num_pes:
            raise _fail(
                "num_pes",
                f"pe_ic x pe_oh x pe_ow x pe_oc = {self.pe_ic} x {self.pe_oh} x {self.pe_ow} x "
                f"{self.pe_oc} = {product}, but num_pes = {self.num_pes}",
                f"set num_pes to {product} or change the PE dimensions so their product is "
                f"{self.num_pes}",
            )
        if self.accum_bits < self.act_bits:
            raise _fail(
                "accum_bits",
                f"{self.accum_bits} is narrower than act_bits {self.act_bits}",
                "use an accumulator at least as wide as activations",
            )
        if self.weight_source == "prng":
            if self.prng_lanes < 1:
                raise _fail(
                    "prng_lanes",
                    "a 'prng' weight source needs at least one lane",
                    "set prng_lanes >= 1 (e.g. pe_ic x pe_oc)",
                )
            if self.mask_bits and self.decoder_bits_per_cycle <= 0:
                raise _fail(
                    "decoder_bits_per_cycle",
                    "a masked 'prng' spec needs a mask decoder",
                    "set decoder_bits_per_cycle > 0",
                )

    # -- derived -------------------------------------------------------------------------------
    @property
    def pe_dims(self) -> tuple[int, int, int, int]:
        """PE array shape ``(ic, oh, ow, oc)``."""
        return (self.pe_ic, self.pe_oh, self.pe_ow, self.pe_oc)

    @property
    def clock_hz(self) -> float:
        """Clock frequency (Hz)."""
        return self.clock_mhz * 1e6

    @property
    def dram_gb_per_s(self) -> float:
        """Off-chip bandwidth (GB/s, 1 GB = 1e9 B)."""
        return self.dram_bytes_per_cycle * self.clock_hz / 1e9

    @property
    def onchip_weight_bits(self) -> int:
        """Bits per weight held in the weight buffer: decoded mask bits for ``prng``, weight bits
        for ``dram``."""
        return self.mask_bits if self.weight_source == "prng" else self.weight_bits

    @property
    def pe_op_pj(self) -> float:
        """Energy of one PE operation (pJ): an add at ``accum_bits`` for 1-bit weights, otherwise a
        MAC at ``max(act_bits, weight_bits)`` operand bits."""
        if self.weight_bits == 1:
            return self.energy.add(self.accum_bits)
        return self.energy.mac(max(self.act_bits, self.weight_bits), self.accum_bits)

    @property
    def peak_ops_per_s(self) -> float:
        """Peak dense-equivalent throughput (ops/s, 2 ops per MAC)."""
        return 2.0 * self.num_pes * self.clock_hz

    # -- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the spec's fields (the YAML keys)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        """Build from a plain mapping (e.g. parsed YAML). ``num_pes`` may be omitted (it is then
        the product of the PE dims); ``pe_dims: [ic, oh, ow, oc]`` is accepted as a shorthand.
        Unknown keys raise :class:`SpecError`."""
        if not isinstance(data, Mapping):
            raise _fail(
                "spec",
                f"expected a mapping, got {type(data).__name__}",
                "write the spec as a YAML mapping of fields",
            )
        data = dict(data)
        if "pe_dims" in data:
            dims = data.pop("pe_dims")
            if not isinstance(dims, list | tuple) or len(dims) != 4:
                raise _fail(
                    "pe_dims",
                    f"expected 4 numbers [ic, oh, ow, oc], got {dims!r}",
                    "write pe_dims: [16, 4, 4, 16]",
                )
            data.update(zip(("pe_ic", "pe_oh", "pe_ow", "pe_oc"), dims, strict=True))
        valid = cls.field_names()
        for key in data:
            if key not in valid:
                raise _unknown_key_error("", str(key), [*valid, "pe_dims"])
        if "num_pes" not in data:
            defaults = cls.__dataclass_fields__
            dims = [data.get(k, defaults[k].default) for k in ("pe_ic", "pe_oh", "pe_ow", "pe_oc")]
            if all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                data["num_pes"] = math.prod(dims)
        if "energy" in data:
            energy = data["energy"]
            data["energy"] = (
                energy
                if isinstance(energy, EnergyTable)
                else (EnergyTable.from_dict(energy if energy is not None else {}))
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (every field, energy table included) for YAML/JSON."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, EnergyTable) else value
        return out

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> ArchSpec:
        """Load a spec from a YAML file (a mapping of fields; see :meth:`from_dict`)."""
        data = read_spec_yaml(path)
        if data is None:
            data = {}
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            raise SpecError(f"{os.fspath(path)}: {exc}") from None

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written atomically to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            _atomic_write_text(path, text)
        return text

    def replace(self, **overrides: Any) -> ArchSpec:
        """Copy with fields replaced (validated). ``energy`` may be a mapping merged into the
        current table, and ``energy.<field>=value`` keys override one energy entry;
        ``pe_dims=(ic, oh, ow, oc)`` sets the four axes. If PE dims change and ``num_pes`` is not
        given, ``num_pes`` becomes their product."""
        overrides = dict(overrides)
        energy_over: dict[str, Any] = {}
        for key in [k for k in overrides if k.startswith("energy.")]:
            energy_over[key.split(".", 1)[1]] = overrides.pop(key)
        if "pe_dims" in overrides:
            dims = overrides.pop("pe_dims")
            if not isinstance(dims, list | tuple) or len(dims) != 4:
                raise _fail(
                    "pe_dims",
                    f"expected 4 numbers (ic, oh, ow, oc), got {dims!r}",
                    "pass pe_dims=(16, 4, 4, 16)",
                )
            overrides.update(zip(("pe_ic", "pe_oh", "pe_ow", "pe_oc"), dims, strict=True))
        valid = self.field_names()
        for key in overrides:
            if key not in valid:
                raise _unknown_key_error("", key, [*valid, "pe_dims"])
        energy = overrides.pop("energy", None)
        new_energy = self.energy
        if isinstance(energy, EnergyTable):
            new_energy = energy
        elif energy is not None:
            if not isinstance(energy, Mapping):
                raise _fail(
                    "energy",
                    f"expected a mapping or EnergyTable, got {energy!r}",
                    "pass energy={'dram_pj_per_byte': 100.0}",
                )
            new_energy = new_energy.replace(**dict(energy))
        if energy_over:
            new_energy = new_energy.replace(**energy_over)
        if "num_pes" not in overrides and any(
            k in overrides for k in ("pe_ic", "pe_oh", "pe_ow", "pe_oc")
        ):
            dims = [
                overrides.get(k, getattr(self, k)) for k in ("pe_ic", "pe_oh", "pe_ow", "pe_oc")
            ]
            if all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                overrides["num_pes"] = math.prod(dims)
        return dataclasses.replace(self, energy=new_energy, **overrides)


MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_DEPTH = 16


def read_spec_yaml(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_SPEC_BYTES,
    max_depth: int = MAX_SPEC_DEPTH,
) -> Any:
    """A spec file's YAML, bounded: a regular file of at most ``max_bytes``, nested at most
    ``max_depth`` deep, no duplicate keys, no aliases, valid YAML (SpecError otherwise,
    naming the file). Every YAML spec (accelerator, CIM macro) is read here."""
    with open_regular(path, "spec file", SpecError) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SpecError(f"{os.fspath(path)}: larger than {max_bytes:,} bytes; not a spec")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{os.fspath(path)}: not UTF-8 text") from None

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise SpecError(f"{os.fspath(path)}: YAML aliases (*name) are not allowed")
            self.depth += 1
            if self.depth > max_depth:
                raise SpecError(f"{os.fspath(path)}: nested more than {max_depth} levels deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node, deep=False):
            keys = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in keys
                except TypeError:
                    raise SpecError(f"{os.fspath(path)}: a key is not a plain value") from None
                if seen:
                    raise SpecError(f"{os.fspath(path)}: key {key!r} appears twice")
                keys.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise SpecError(f"{os.fspath(path)}: not valid YAML ({first})") from None


def _atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :mod:`hiddenite.atomic`)."""
    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------
# Presets: same PE count (4,096 as 16 x 4 x 4 x 16), same clock, same on-chip SRAM and the same
# calibrated 40 nm technology (clock, energy table, leakage, register reuse: CALIBRATION, the
# table of docs/hw-calibration.md); they differ only in where the weights come from.
# ---------------------------------------------------------------------------------------------
_CALIBRATED = {**spec_fields(CALIBRATION), "energy": energy_fields(CALIBRATION)}
_PRESET_DATA: dict[str, dict[str, Any]] = {
    "hiddenite": {
        "name": "hiddenite",
        **_CALIBRATED,
        "weight_source": "prng",
        "weight_bits": 1,
        "mask_bits": 1,
        "prng_lanes": 256,
        "weights_per_prng_step": 1,
        "decoder_bits_per_cycle": 128.0,
    },
    "bnn": {
        "name": "bnn",
        **_CALIBRATED,
        "weight_source": "dram",
        "weight_bits": 1,
        "mask_bits": 0,
        "prng_lanes": 0,
        "decoder_bits_per_cycle": 0.0,
    },
    "int8": {
        "name": "int8",
        **_CALIBRATED,
        "weight_source": "dram",
        "weight_bits": 8,
        "mask_bits": 0,
        "prng_lanes": 0,
        "decoder_bits_per_cycle": 0.0,
    },
}

PRESETS: Mapping[str, ArchSpec] = MappingProxyType(
    {name: ArchSpec.from_dict(data) for name, data in _PRESET_DATA.items()}
)
"""Built-in specs by name (read-only): ``hiddenite``, ``bnn``, ``int8``."""


def get_preset(name: str, **overrides: Any) -> ArchSpec:
    """The built-in spec ``name`` (``hiddenite`` | ``bnn`` | ``int8``), with optional
    :meth:`ArchSpec.replace` overrides."""
    try:
        spec = PRESETS[name]
    except KeyError:
        raise SpecError(
            f"arch: unknown preset {name!r}; use one of {', '.join(PRESETS)} or an ArchSpec / "
            "YAML spec file"
        ) from None
    return spec.replace(**overrides) if overrides else spec
