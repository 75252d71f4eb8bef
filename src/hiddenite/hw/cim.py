"""An SRAM computing-in-memory (CIM) macro with hierarchical bit lines and power gating.

Seed 004 (Yamauchi, JSPS 21K11818): channel attention switches channels off per input, and a
CIM macro whose bit lines are split hierarchically can stop the word lines, the precharge of
the AND-output lines and the power of the parts of the array that hold them. This module
counts, per layer and per input, how many *gating units* of such a macro can be switched off,
why (weight sparsity, zero input channels), and what that saves in energy against the same
macro without gating. All figures are modelled, not measured; ``docs/cim.md`` gives the
equations, the sources of the energy table and a cross-check against published macros.

Mapping (``stationary="weights"``, default): a layer is a K x N matrix, K = input channels x
kernel positions (rows, channel-major: the kh x kw rows of one input channel are adjacent) and
N = output channels x ``weight_bits`` (columns, bit-sliced). A grouped convolution is mapped as
its block-diagonal dense matrix; a linear layer is a 1x1 convolution (K = in_features). The
matrix is cut into ceil(K / rows) x ceil(N / cols) arrays (tiles). Inputs are streamed
bit-serially: every output position takes ``act_bits`` cycles on every tile.
``stationary="activations"``: the arrays hold the input patches (K rows x positions x
``act_bits`` columns) and the weights are streamed bit-serially, ``out_channels x weight_bits``
cycles per input.

Gating unit: a block of ``unit_rows x unit_cols`` cells of one array with its own local bit-line
segment, local word-line segment, AND-line precharge and power switch; its columns join the
global bit line of the array. A unit is ON for a cycle iff it holds at least one (row, column)
whose input and weight are both non-zero. An input row is zero when its input channel's whole
feature map is zero for that input (a binarized SE gate produces exactly these; any all-zero
channel counts); a weight is zero when the layer's effective weight (for a supermask layer
``effective_weight()``, which applies its mask) is zero. A unit that is off costs nothing but
its share of the gating control; an ON unit pays its word lines, precharge, AND cells and
leakage for every mapped cell, and every column with an ON unit pays the global bit line, the
readout (ADC or sense amplifier) and the accumulation. The baseline, the same macro without
gating, runs every mapped cell and column every cycle and leaks on every cell of its arrays.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch
import yaml
from torch import nn

from ..atomic import atomic_write_text
from ..layers import is_supermask
from ..texttable import text_table
from .model import _json_safe
from .spec import SpecError, _as_float, _as_int, _fail, _unknown_key_error, read_spec_yaml

__all__ = [
    "CIM_PRESETS",
    "COMPONENTS",
    "CimEnergy",
    "CimLayer",
    "CimReport",
    "CimSpec",
    "analyze_cim",
    "get_cim_preset",
    "parse_granularity",
]

STATIONARY = ("weights", "activations")
READOUTS = ("adc", "sense-amp")
COMPONENTS = (
    "wordline",
    "precharge",
    "and",
    "global_bitline",
    "readout",
    "accumulate",
    "leakage",
    "control",
)
MAX_DIM = 4096  # rows / columns of one array
MAX_YAML_BYTES = 64 * 1024
MAX_YAML_DEPTH = 4


def _check_fields(cls: type, data: Any, what: str, prefix: str, fix: str) -> None:
    """SpecError unless ``data`` is a mapping whose keys are all fields of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise _fail(what, f"expected a mapping, got {type(data).__name__}", fix)
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise _unknown_key_error(prefix, str(key), valid)


@dataclass(frozen=True)
class CimEnergy:
    """Energy per event in picojoules (28 nm, 0.9 V defaults; sources in ``docs/cim.md``).

    Per cell of an ON unit per cycle: ``wordline_pj`` (the cell's share of a local word-line
    pulse), ``precharge_pj`` (its share of the local AND-output / bit-line precharge),
    ``and_pj`` (the in-cell AND / multiply). Per active column per cycle:
    ``global_bitline_pj``, the readout (``adc_pj_per_step`` x 2^adc_bits for an ADC, or
    ``sense_amp_pj``) and ``accumulate_pj`` (the shift-and-add of the partial sum).
    ``leakage_pw_per_cell``: static power of a powered cell (pW), charged per cycle at the
    spec's clock. ``gate_control_pj``: one gating decision of one unit (zero flag, switch).
    """

    wordline_pj: float = 1.6e-4
    precharge_pj: float = 1.2e-4
    and_pj: float = 1.0e-4
    global_bitline_pj: float = 2.0e-3
    adc_pj_per_step: float = 3.0e-3
    sense_amp_pj: float = 5.0e-3
    accumulate_pj: float = 3.1e-2
    leakage_pw_per_cell: float = 20.0
    gate_control_pj: float = 5.0e-3

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(
                self, f.name, _as_float(f"energy.{f.name}", getattr(self, f.name), positive=False)
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CimEnergy:
        _check_fields(cls, data, "energy", "energy.", "write energy fields as a mapping")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_INTS = {
    "rows": (1, MAX_DIM),
    "cols": (1, MAX_DIM),
    "weight_bits": (1, 16),
    "act_bits": (1, 16),
    "unit_rows": (1, MAX_DIM),
    "unit_cols": (1, MAX_DIM),
    "adc_bits": (1, 12),
}


@dataclass(frozen=True)
class CimSpec:
    """One CIM macro (immutable, validated; versioned, YAML/JSON round trip).

    ``rows x cols`` cells per array; ``stationary``: what the cells hold (``weights`` or
    ``activations``); ``weight_bits`` / ``act_bits``: operand widths (bit-sliced columns for
    the stored operand, bit-serial cycles for the streamed one); ``unit_rows x unit_cols``:
    the gating unit (must divide the array); ``readout``: ``adc`` (``adc_bits``) or
    ``sense-amp``; ``clock_mhz``: for leakage per cycle.
    """

    VERSION = 1

    name: str = "custom"
    rows: int = 256
    cols: int = 256
    stationary: str = "weights"
    weight_bits: int = 1
    act_bits: int = 8
    unit_rows: int = 16
    unit_cols: int = 256
    readout: str = "adc"
    adc_bits: int = 6
    clock_mhz: float = 100.0
    energy: CimEnergy = field(default_factory=CimEnergy)
    version: int = VERSION

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate every field (normalising numbers); one-line :class:`SpecError` otherwise."""
        if not isinstance(self.name, str) or not self.name:
            raise _fail("name", f"expected a non-empty string, got {self.name!r}", "name it")
        for name, (lo, hi) in _INTS.items():
            object.__setattr__(
                self, name, _as_int(name, getattr(self, name), minimum=lo, maximum=hi)
            )
        object.__setattr__(self, "clock_mhz", _as_float("clock_mhz", self.clock_mhz))
        if self.stationary not in STATIONARY:
            raise _fail(
                "stationary", f"unknown {self.stationary!r}", f"use one of {', '.join(STATIONARY)}"
            )
        if self.readout not in READOUTS:
            raise _fail("readout", f"unknown {self.readout!r}", f"use one of {', '.join(READOUTS)}")
        if self.rows % self.unit_rows:
            raise _fail(
                "unit_rows",
                f"{self.unit_rows} does not divide rows = {self.rows}",
                "use a divisor of rows (e.g. 8, 16, 32)",
            )
        if self.cols % self.unit_cols:
            raise _fail(
                "unit_cols",
                f"{self.unit_cols} does not divide cols = {self.cols}",
                "use a divisor of cols",
            )
        if isinstance(self.energy, Mapping):
            object.__setattr__(self, "energy", CimEnergy.from_dict(self.energy))
        elif not isinstance(self.energy, CimEnergy):
            raise _fail("energy", f"expected a mapping, got {self.energy!r}", "give a mapping")
        if self.version != self.VERSION:
            raise _fail("version", f"{self.version!r} is not supported", f"use {self.VERSION}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def readout_pj(self) -> float:
        """Energy of one column readout (pJ)."""
        if self.readout == "adc":
            return self.energy.adc_pj_per_step * 2**self.adc_bits
        return self.energy.sense_amp_pj

    @property
    def leakage_pj_per_cell_cycle(self) -> float:
        """Static energy of one powered cell over one cycle (pJ)."""
        return self.energy.leakage_pw_per_cell / (self.clock_mhz * 1e6)

    @property
    def granularity(self) -> str:
        return f"{self.unit_rows}x{self.unit_cols}"

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["energy"] = self.energy.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CimSpec:
        _check_fields(cls, data, "spec", "", "write the spec as a YAML mapping of fields")
        data = dict(data)
        if "energy" in data and data["energy"] is None:
            data["energy"] = {}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CimSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> CimSpec:
        """Load a spec from a YAML file of at most MAX_YAML_BYTES, nested at most
        MAX_YAML_DEPTH deep (read by :func:`hiddenite.hw.spec.read_spec_yaml`)."""
        where = os.fspath(path)
        data = read_spec_yaml(path, max_bytes=MAX_YAML_BYTES, max_depth=MAX_YAML_DEPTH)
        try:
            return cls.from_dict({} if data is None else data)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def replace(self, **changes: Any) -> CimSpec:
        """Copy with fields replaced (``energy`` as a mapping is merged into the table)."""
        energy = changes.pop("energy", None)
        valid = [f.name for f in fields(self)]
        for key in changes:
            if key not in valid:
                raise _unknown_key_error("", key, valid)
        new_energy = self.energy
        if isinstance(energy, Mapping):
            new_energy = CimEnergy.from_dict({**self.energy.to_dict(), **energy})
        elif isinstance(energy, CimEnergy):
            new_energy = energy
        return dataclasses.replace(self, energy=new_energy, **changes)


def parse_granularity(text: str, spec: CimSpec) -> CimSpec:
    """``"RxC"`` (unit of R rows x C columns), ``"rows:G"`` (G rows x all columns) or
    ``"cols:G"`` (all rows x G columns) applied to ``spec``."""
    t = text.strip().lower()
    try:
        if t.startswith("rows:"):
            r, c = int(t[5:]), spec.cols
        elif t.startswith("cols:"):
            r, c = spec.rows, int(t[5:])
        else:
            a, b = t.split("x")
            r, c = int(a), int(b)
    except ValueError:
        raise SpecError(
            f"granularity {text!r}: expected RxC, rows:G or cols:G (e.g. 16x256)"
        ) from None
    return spec.replace(unit_rows=r, unit_cols=c)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------
CIM_PRESETS: Mapping[str, CimSpec] = MappingProxyType(
    {
        "sram-28nm": CimSpec(name="sram-28nm"),
        "sram-28nm-int8": CimSpec(name="sram-28nm-int8", weight_bits=8),
        "sram-28nm-act": CimSpec(name="sram-28nm-act", stationary="activations"),
    }
)
"""Built-in macros: 256 x 256 arrays, 8-bit bit-serial inputs, 6-bit ADC, 16-row gating units;
1-bit weights (hidden / binarized networks), 8-bit weights, or activations held in the cells."""


def get_cim_preset(name: str) -> CimSpec:
    try:
        return CIM_PRESETS[name]
    except KeyError:
        raise SpecError(
            f"preset: unknown CIM macro {name!r}; use one of "
            f"{', '.join(CIM_PRESETS)} or a YAML spec file"
        ) from None


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------
@dataclass
class CimLayer:
    """One conv/linear call on one macro, summed over every input analysed."""

    layer: str
    kind: str
    rows_k: int  # K: input channels x kernel positions (or in_features)
    cols_n: int  # stored columns: out_channels x weight_bits (or positions x act_bits)
    arrays: int
    units: int  # gating units over all arrays
    inputs: int = 0
    cycles: int = 0  # per array, summed over inputs
    unit_cycles_mapped: int = 0  # unit decisions x cycles, over units holding mapped cells
    unit_cycles_off_weight: int = 0
    unit_cycles_off_input: int = 0
    counts_baseline: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))
    counts_gated: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))

    def fraction(self, what: str) -> float:
        n = self.unit_cycles_mapped
        if not n:
            return 0.0
        if what == "weight":
            return self.unit_cycles_off_weight / n
        if what == "input":
            return self.unit_cycles_off_input / n
        return (self.unit_cycles_off_weight + self.unit_cycles_off_input) / n


def _energies(spec: CimSpec) -> dict[str, float]:
    e = spec.energy
    return {
        "wordline": e.wordline_pj,
        "precharge": e.precharge_pj,
        "and": e.and_pj,
        "global_bitline": e.global_bitline_pj,
        "readout": spec.readout_pj,
        "accumulate": e.accumulate_pj,
        "leakage": spec.leakage_pj_per_cell_cycle,
        "control": e.gate_control_pj,
    }


def _pad(n: int, m: int) -> int:
    return -(-n // m) * m


class _Layout:
    """Static structures of one layer on one macro (weights, mapping, units)."""

    def __init__(self, spec: CimSpec, weight_nz: torch.Tensor, positions: int) -> None:
        # weight_nz: K x out_channels bool (row order channel-major)
        self.spec = spec
        k, oc = weight_nz.shape
        self.k, self.oc, self.positions = k, oc, positions
        ws = spec.stationary == "weights"
        n = oc * spec.weight_bits if ws else positions * spec.act_bits
        self.n = n
        self.kp, self.np_ = _pad(k, spec.rows), _pad(n, spec.cols)
        self.tiles_r, self.tiles_c = self.kp // spec.rows, self.np_ // spec.cols
        gr, gc = spec.unit_rows, spec.unit_cols
        self.ni, self.nj = self.kp // gr, self.np_ // gc
        rows_in = (k - torch.arange(self.ni) * gr).clamp(0, gr)
        cols_in = (n - torch.arange(self.nj) * gc).clamp(0, gc)
        self.rows_in, self.cols_in = rows_in, cols_in
        self.mcell = rows_in[:, None] * cols_in[None, :]  # mapped cells per unit (ni x nj)
        self.mapped = self.mcell > 0
        wpad = torch.zeros(self.kp, oc, dtype=torch.bool)
        wpad[:k] = weight_nz
        self.wpad = wpad
        if ws:
            mc = torch.zeros(self.kp, self.np_, dtype=torch.float32)
            mc[:, :n] = wpad.repeat_interleave(spec.weight_bits, dim=1).float()
            self.mc = mc.view(self.ni, gr, self.np_)
            self.weight_unit = self.mc.view(self.ni, gr, self.nj, gc).amax(dim=(1, 3)) > 0
        else:  # activations stored; weights streamed: per output channel, per row unit
            self.wrow = wpad.view(self.ni, gr, oc).permute(2, 0, 1).float()  # oc x ni x gr
            self.weight_unit_o = self.wrow.amax(dim=2) > 0  # oc x ni
        self.tile_of_i = torch.arange(self.ni) // (spec.rows // gr)
        self.unit_cells = gr * gc

    @property
    def arrays(self) -> int:
        return self.tiles_r * self.tiles_c

    @property
    def units(self) -> int:
        return self.ni * self.nj

    def cycles_per_input(self) -> int:
        s = self.spec
        if s.stationary == "weights":
            return self.positions * s.act_bits
        return self.oc * s.weight_bits

    def add(self, rec: CimLayer, active: torch.Tensor) -> None:
        """Count one batch: ``active`` is B x K bool (non-zero input rows)."""
        s = self.spec
        b = active.shape[0]
        a = torch.zeros(b, self.kp, dtype=torch.float32)
        a[:, : self.k] = active.float()
        gr = s.unit_rows
        cyc = self.cycles_per_input()
        rec.inputs += b
        rec.cycles += b * cyc
        mapped = self.mapped
        n_mapped_units = int(mapped.sum())
        mcell_total = int(self.mcell.sum())
        cols_per_tile_row = self.n  # mapped columns of one row of arrays
        leak_all = self.arrays * s.rows * s.cols
        base = rec.counts_baseline
        base_cells = mcell_total * cyc * b
        for comp in ("wordline", "precharge", "and"):
            base[comp] += base_cells
        base_cols = self.tiles_r * cols_per_tile_row * cyc * b
        for comp in ("global_bitline", "readout", "accumulate"):
            base[comp] += base_cols
        base["leakage"] += leak_all * cyc * b
        g = rec.counts_gated
        if s.stationary == "weights":
            useful = torch.einsum("bir,irc->bic", a.view(b, self.ni, gr), self.mc)
            on = useful.view(b, self.ni, self.nj, s.unit_cols).amax(-1) > 0  # b x ni x nj
            on &= mapped
            off_w = (~self.weight_unit & mapped).sum() * b
            off_in = ((self.weight_unit & mapped)[None] & ~on).sum()
            rec.unit_cycles_mapped += n_mapped_units * b * cyc
            rec.unit_cycles_off_weight += int(off_w) * cyc
            rec.unit_cycles_off_input += int(off_in) * cyc
            cells_on = float((on * self.mcell).sum()) * cyc
            # a column of one row of arrays is active if any of its units there is ON
            col_on = _any_by_group(on, self.tile_of_i, self.tiles_r)  # b x tiles_r x nj
            cols_on = float((col_on * self.cols_in).sum()) * cyc
            leak_on = float(on.sum()) * self.unit_cells * cyc
            control = float(self.units * b)
        else:
            act_i = a.view(b, self.ni, gr)  # b x ni x gr
            useful = torch.einsum("bir,oir->boi", act_i, self.wrow) > 0  # b x oc x ni
            row_mapped = self.rows_in > 0
            useful &= row_mapped
            wu = self.weight_unit_o & row_mapped  # oc x ni
            units_per_i = self.mapped.sum(1)  # mapped column units per row unit
            wb = s.weight_bits
            rec.unit_cycles_mapped += int((row_mapped * units_per_i).sum()) * self.oc * wb * b
            off_w = ((~self.weight_unit_o & row_mapped) * units_per_i).sum() * b
            off_in = ((wu[None] & ~useful) * units_per_i).sum()
            rec.unit_cycles_off_weight += int(off_w) * wb
            rec.unit_cycles_off_input += int(off_in) * wb
            cells_i = self.mcell.sum(1)  # mapped cells per row unit
            cells_on = float((useful * cells_i).sum()) * wb
            tile_on = _any_by_group(
                useful.reshape(b * self.oc, self.ni), self.tile_of_i, self.tiles_r
            )
            cols_on = float(tile_on.sum()) * self.n * wb
            leak_on = float((useful * units_per_i).sum()) * self.unit_cells * wb
            control = float(self.units * self.oc * b)
        for comp in ("wordline", "precharge", "and"):
            g[comp] += cells_on
        for comp in ("global_bitline", "readout", "accumulate"):
            g[comp] += cols_on
        g["leakage"] += leak_on
        g["control"] += control


def _any_by_group(x: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """``out[:, t, ...] = any(x[:, i, ...] for i with group[i] == t)`` (x: B x I x ...)."""
    out = torch.zeros(x.shape[0], n, *x.shape[2:], dtype=torch.bool)
    for t in range(n):
        out[:, t] = x[:, group == t].any(dim=1)
    return out


def _effective_weight(module: nn.Module) -> torch.Tensor:
    if is_supermask(module):
        return module.effective_weight()
    return module.weight


def _weight_rows(module: nn.Module) -> torch.Tensor:
    """K x out_channels bool: which weights are non-zero, rows channel-major."""
    w = _effective_weight(module).detach().to("cpu")
    if isinstance(module, nn.Conv2d):
        oc = w.shape[0]
        groups = module.groups
        cin_g = w.shape[1]
        per = cin_g * w.shape[2] * w.shape[3]
        flat = w.reshape(oc, per) != 0
        if groups == 1:
            return flat.T.contiguous()
        full = torch.zeros(groups * per, oc, dtype=torch.bool)
        oc_g = oc // groups
        for gi in range(groups):
            full[gi * per : (gi + 1) * per, gi * oc_g : (gi + 1) * oc_g] = flat[
                gi * oc_g : (gi + 1) * oc_g
            ].T
        return full
    return (w != 0).T.contiguous()


def _active_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """B x K bool: rows whose input is not all zero for each input of the batch."""
    x = x.detach()
    if isinstance(module, nn.Conv2d):
        kk = module.kernel_size[0] * module.kernel_size[1]
        x = x if x.ndim == 4 else x[None]  # an unbatched C x H x W input
        ch = x.flatten(2).abs().amax(dim=2) > 0
        return ch.to("cpu").repeat_interleave(kk, dim=1)
    flat = x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim > 2 else x[:, None, :]
    return (flat.abs().amax(dim=1) > 0).to("cpu")


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
@dataclass
class CimReport:
    """Per-layer gating and energy of one macro over a data set (modelled)."""

    spec: CimSpec
    layers: list[CimLayer]
    options: dict[str, Any] = field(default_factory=dict)

    def energy_pj(self, layer: CimLayer, which: str = "gated") -> dict[str, float]:
        counts = layer.counts_gated if which == "gated" else layer.counts_baseline
        pj = _energies(self.spec)
        return {c: counts[c] * pj[c] for c in COMPONENTS}

    def row_dicts(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.layers:
            eb, eg = self.energy_pj(r, "baseline"), self.energy_pj(r, "gated")
            tb, tg = sum(eb.values()), sum(eg.values())
            rows.append(
                {
                    "layer": r.layer,
                    "kind": r.kind,
                    "rows_k": r.rows_k,
                    "cols_n": r.cols_n,
                    "arrays": r.arrays,
                    "units": r.units,
                    "inputs": r.inputs,
                    "off_weight": r.fraction("weight"),
                    "off_input": r.fraction("input"),
                    "off_total": r.fraction("total"),
                    "energy_baseline_pj": tb,
                    "energy_gated_pj": tg,
                    "saved": 1.0 - tg / tb if tb else 0.0,
                    **{f"gated_{c}_pj": eg[c] for c in COMPONENTS},
                    **{f"baseline_{c}_pj": eb[c] for c in COMPONENTS},
                }
            )
        return rows

    @property
    def totals(self) -> dict[str, Any]:
        rows = self.row_dicts()
        tb = sum(r["energy_baseline_pj"] for r in rows)
        tg = sum(r["energy_gated_pj"] for r in rows)
        mapped = sum(r.unit_cycles_mapped for r in self.layers)
        ow = sum(r.unit_cycles_off_weight for r in self.layers)
        oi = sum(r.unit_cycles_off_input for r in self.layers)
        inputs = max((r.inputs for r in self.layers), default=0)
        return {
            "inputs": inputs,
            "energy_baseline_pj": tb,
            "energy_gated_pj": tg,
            "saved": 1.0 - tg / tb if tb else 0.0,
            "off_weight": ow / mapped if mapped else 0.0,
            "off_input": oi / mapped if mapped else 0.0,
            "off_total": (ow + oi) / mapped if mapped else 0.0,
            "energy_per_input_gated_pj": tg / inputs if inputs else 0.0,
            "energy_per_input_baseline_pj": tb / inputs if inputs else 0.0,
            **{f"gated_{c}_pj": sum(r[f"gated_{c}_pj"] for r in rows) for c in COMPONENTS},
            **{f"baseline_{c}_pj": sum(r[f"baseline_{c}_pj"] for r in rows) for c in COMPONENTS},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "granularity": self.spec.granularity,
            "options": dict(self.options),
            "totals": self.totals,
            "layers": self.row_dicts(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(_json_safe(self.to_dict()), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        rows = self.row_dicts()
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=list(rows[0]) if rows else ["layer"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_text(self) -> str:
        head = [
            "layer",
            "K",
            "cols",
            "arrays",
            "units",
            "off:weight",
            "off:input",
            "base uJ",
            "gated uJ",
            "saved",
        ]
        body = [
            [
                r["layer"],
                r["rows_k"],
                r["cols_n"],
                r["arrays"],
                r["units"],
                f"{r['off_weight']:.1%}",
                f"{r['off_input']:.1%}",
                f"{r['energy_baseline_pj'] / 1e6:.4f}",
                f"{r['energy_gated_pj'] / 1e6:.4f}",
                f"{r['saved']:.1%}",
            ]
            for r in self.row_dicts()
        ]
        t = self.totals
        total = [
            "total",
            "",
            "",
            "",
            "",
            f"{t['off_weight']:.1%}",
            f"{t['off_input']:.1%}",
            f"{t['energy_baseline_pj'] / 1e6:.4f}",
            f"{t['energy_gated_pj'] / 1e6:.4f}",
            f"{t['saved']:.1%}",
        ]
        s = self.spec
        title = (
            f"CIM macro {s.name}: {s.rows}x{s.cols} arrays holding {s.stationary}, "
            f"gating unit {s.granularity}, {t['inputs']} inputs (energy summed over them)"
        )
        return "\n".join([title, *text_table(head, body, total)])


def analyze_cim(
    model: nn.Module,
    batches: Iterable[Any],
    specs: CimSpec | Sequence[CimSpec],
    *,
    max_batches: int | None = None,
) -> list[CimReport]:
    """Run ``model`` (eval mode, no gradients) over ``batches`` (tensors or ``(inputs, ...)``
    tuples) and count, for every ``nn.Conv2d`` / ``nn.Linear`` call and every macro in
    ``specs``, the gating units switched off and the events of the gated and ungated macro.
    One report per spec, layers in execution order (a layer called twice: ``name#2``)."""
    specs = [specs] if isinstance(specs, CimSpec) else list(specs)
    if not specs:
        raise ValueError("analyze_cim: give at least one CimSpec")
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    records: list[dict[str, CimLayer]] = [{} for _ in specs]
    layouts: dict[tuple[int, str], list[_Layout]] = {}
    weights: dict[int, torch.Tensor] = {}
    order: list[str] = []
    calls: dict[int, int] = {}

    def hook(mod: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        calls[id(mod)] = calls.get(id(mod), 0) + 1
        base = names.get(id(mod), type(mod).__name__)
        name = base if calls[id(mod)] == 1 else f"{base}#{calls[id(mod)]}"
        if id(mod) not in weights:
            weights[id(mod)] = _weight_rows(mod)
        if isinstance(mod, nn.Conv2d):
            positions = int(output.shape[-1] * output.shape[-2])
            kind = "conv"
        else:
            positions = math.prod(output.shape[1:-1]) if output.ndim > 2 else 1
            kind = "linear"
        key = (id(mod), f"{name}:{positions}")
        if key not in layouts:
            layouts[key] = [_Layout(s, weights[id(mod)], positions) for s in specs]
        if name not in order:
            order.append(name)
        active = _active_rows(mod, inputs[0])
        for i, lay in enumerate(layouts[key]):
            rec = records[i].get(name)
            if rec is None:
                rec = records[i][name] = CimLayer(
                    layer=name,
                    kind=kind,
                    rows_k=lay.k,
                    cols_n=lay.n,
                    arrays=lay.arrays,
                    units=lay.units,
                )
            lay.add(rec, active)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                calls.clear()
                x = batch if isinstance(batch, torch.Tensor) else batch[0]
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise ValueError("analyze_cim: no input was analysed, or the model has no conv/linear")
    return [
        CimReport(spec, [records[i][n] for n in order], {"max_batches": max_batches})
        for i, spec in enumerate(specs)
    ]
