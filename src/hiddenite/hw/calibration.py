"""The calibration of the presets against the Hiddenite chip: one table of constants, each with
its source or its reasoning (``docs/hw-calibration.md`` prints the same table; a test checks
that the two agree and that the presets are built from it).

The published figures this calibration is held against (seeds 002 and 003, ISSCC 2022 paper
15.4): TSMC 40 nm, 3 mm x 3 mm, 4,096 PEs, 1-bit weights x 1-bit masks x 8-bit activations,
34.8 TOPS/W on CIFAR-100 at about 40 mW, 16.0 TOPS/W on ImageNet (ResNet-50 class).

Energy scaling from the 45 nm, 0.9 V source table (Horowitz, ISSCC 2014) to the chip's node
and supply follows the first-order CMOS rule for dynamic (switching) energy,
``E = C V^2`` with the switched capacitance ``C`` proportional to the feature size
(constant-field scaling, Dennard et al., IEEE JSSC 1974)::

    E(node, V) = E_45nm,0.9V x (node / 45 nm) x (V / 0.9 V)^2

It applies to every on-chip dynamic energy (adds, multiplies, SRAM, PRNG, decoder); the DRAM
energy is off chip and is left as published. Leakage is a separate term, static power x time.

This module is plain data and arithmetic: :mod:`hiddenite.hw.spec` builds its default energy
table and the presets from :data:`CALIBRATION`; :mod:`hiddenite.hw.sensitivity` re-derives them
from varied assumptions.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError

__all__ = [
    "BIT_SERIAL_DIGIT_PJ_45NM",
    "CALIBRATION",
    "HOROWITZ_45NM",
    "PUBLISHED",
    "Calibration",
    "dynamic_scale",
    "energy_fields",
    "horowitz_sram_pj_per_byte",
    "scale_energy",
    "spec_fields",
]

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V.
# Integer add: 8 b 0.03 pJ, 16 b 0.05 pJ, 32 b 0.1 pJ.  Integer mult: 8 b 0.2 pJ, 32 b 3.1 pJ.
# SRAM, 64-bit access: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ  -> per byte: /8.
# DRAM, 64-bit access: 1.3-2.6 nJ -> midpoint 1.95 nJ / 8 B = 243.75 pJ per byte.
HOROWITZ_45NM: dict[str, Any] = {
    "node_nm": 45.0,
    "vdd_v": 0.9,
    "add_pj": {8: 0.03, 16: 0.05, 32: 0.1},
    "mult_pj": {8: 0.2, 32: 3.1},
    "sram_pj_per_byte": {8 * 1024: 10.0 / 8, 32 * 1024: 20.0 / 8, 1024 * 1024: 100.0 / 8},
    "dram_pj_per_byte": 1950.0 / 8,
}
"""The published 45 nm / 0.9 V source figures (pJ per event)."""

PUBLISHED: dict[str, float] = {
    "cifar100_tops_per_watt": 34.8,  # seed 003, ISSCC 2022 15.4: best point, CIFAR-100
    "imagenet_tops_per_watt": 16.0,  # seed 003 (title of 15.4): ImageNet, ResNet-50 class
    "power_mw_at_cifar100": 40.0,  # seed 003: "about 40 mW" at the 34.8 TOPS/W point
    "num_pes": 4096.0,  # seed 003
    "node_nm": 40.0,  # seed 003: TSMC 40 nm
}
"""The chip's published figures the calibration is held against."""


def scale_energy(
    pj: float, *, from_nm: float, to_nm: float, from_vdd_v: float, to_vdd_v: float
) -> float:
    """Dynamic energy ``pj`` moved from (``from_nm``, ``from_vdd_v``) to (``to_nm``,
    ``to_vdd_v``): ``pj x (to_nm / from_nm) x (to_vdd_v / from_vdd_v)^2`` (E = C V^2, C
    proportional to the feature size)."""
    return pj * (to_nm / from_nm) * (to_vdd_v / from_vdd_v) ** 2


BIT_SERIAL_DIGIT_PJ_45NM = (HOROWITZ_45NM["add_pj"][16] + HOROWITZ_45NM["add_pj"][32]) / 2


def horowitz_sram_pj_per_byte(capacity_bytes: int) -> float:
    """Horowitz's 45 nm SRAM read energy per byte for an array of ``capacity_bytes``: linear in
    log2(capacity) between his 8 KB / 32 KB / 1 MB points, clamped outside."""
    table = sorted(HOROWITZ_45NM["sram_pj_per_byte"].items())
    if capacity_bytes <= table[0][0]:
        return table[0][1]
    if capacity_bytes >= table[-1][0]:
        return table[-1][1]
    for (a, ea), (b, eb) in itertools.pairwise(table):
        if capacity_bytes <= b:
            t = (math.log2(capacity_bytes) - math.log2(a)) / (math.log2(b) - math.log2(a))
            return ea + t * (eb - ea)
    return table[-1][1]  # pragma: no cover


@dataclass(frozen=True)
class Calibration:
    """The assumptions the calibrated presets are derived from (frozen, validated, versioned).

    Every field is one row of the table in ``docs/hw-calibration.md``; the comment beside it
    gives its source or reasoning. Nothing here depends on a workload: both calibration
    workloads (and every user's) are evaluated with the one spec derived from these values.
    """

    VERSION: ClassVar[int] = 1

    # Source of the energy table: Horowitz ISSCC 2014 is 45 nm at 0.9 V.
    source_node_nm: float = 45.0
    source_vdd_v: float = 0.9
    # The chip: TSMC 40 nm (seed 003).
    node_nm: float = 40.0
    # Assumption (the seeds give no supply): 0.9 V, the nominal core supply of a 40 nm
    # general-purpose process and Horowitz's own voltage; 40 nm low-power processes run 1.1 V,
    # near-threshold operation 0.6-0.7 V (range in the sensitivity table).
    vdd_v: float = 0.9
    # Derived from the published point: 34.8 TOPS/W x 40 mW = 1.392 TOPS of dense-equivalent
    # ops; / (2 ops per MAC x 4,096 PEs) = 170 MHz at full utilization.
    clock_mhz: float = 170.0
    # Reasoning: each buffer is built of banks and an access costs one bank's energy, not a
    # 128 KiB array's. 8 KiB = 128 KiB input buffer / 16 input-channel lanes (pe_ic), each lane
    # reading its own bank every cycle; also Horowitz's smallest (8 KB) point.
    sram_bank_bytes: int = 8 * 1024
    # Assumption (no published figure): static power of the die, 5 % of the ~40 mW operating
    # point, typical of a 40 nm design at room temperature; charged x latency.
    leakage_mw: float = 2.0
    # Reasoning: one Xorshift32 step = three 32-bit shift-XORs (shifts are wiring) + a 32-bit
    # register: about the switching of a 32-bit ripple add (0.1 pJ at 45 nm, Horowitz).
    prng_step_pj_45nm: float = 0.1
    # Reasoning: a few gate toggles and a shift-register bit per decoded mask bit, about 1/3 of
    # an 8-bit add (0.03 pJ at 45 nm, Horowitz) rounded down.
    decoder_pj_per_bit_45nm: float = 0.01
    # Register-level reuse in the 4D array: output-channel tiles computed from one load of an
    # input tile into the PE registers. 1: each output position keeps one partial sum (outputs
    # are finished in the PEs before the next oc tile), so an activation byte read from SRAM
    # serves pe_oc PEs and the taps of its window inside a pe_oh x pe_ow tile (docs).
    act_reuse_oc_tiles: int = 1
    # Horowitz 64-bit DRAM access 1.3-2.6 nJ, midpoint / 8 B; off chip, not scaled, and not in
    # the on-chip TOPS/W the chip reports.
    dram_pj_per_byte: float = 1950.0 / 8

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    self._fail(f.name, f"must be an integer, got {value!r}")
                if float(value) != int(value):
                    self._fail(f.name, f"must be a whole number, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    self._fail(f.name, f"must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
        self.check()

    @staticmethod
    def _fail(name: str, problem: str) -> None:
        raise ConfigError(f"calibration.{name}: {problem}; give a finite positive value")

    def check(self) -> None:
        """Every value finite and positive (leakage may be 0); reuse at least 1."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value):
                self._fail(f.name, f"must be finite, got {value!r}")
            if f.name == "leakage_mw":
                if value < 0:
                    self._fail(f.name, f"must be >= 0, got {value!r}")
            elif value <= 0:
                self._fail(f.name, f"must be > 0, got {value!r}")
        if self.act_reuse_oc_tiles < 1:
            self._fail("act_reuse_oc_tiles", f"must be >= 1, got {self.act_reuse_oc_tiles}")

    def to_dict(self) -> dict[str, Any]:
        """``{"version": ..., **fields}``, JSON-ready."""
        return {"version": self.VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Build from :meth:`to_dict` output; unknown fields or another version are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"calibration: expected a JSON object, got {data!r}")
        data = dict(data)
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise ConfigError(
                f"calibration: version {version!r} is not supported (this build: {cls.VERSION})"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"calibration: unknown field(s) {', '.join(unknown)}; valid fields are "
                f"{', '.join(known)}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> Calibration:
        return dataclasses.replace(self, **changes)


CALIBRATION = Calibration()
"""The documented calibration every preset uses."""


def dynamic_scale(cal: Calibration) -> float:
    """Factor applied to every 45 nm / 0.9 V dynamic energy: (node / 45) x (V / 0.9)^2."""
    return scale_energy(
        1.0,
        from_nm=cal.source_node_nm,
        to_nm=cal.node_nm,
        from_vdd_v=cal.source_vdd_v,
        to_vdd_v=cal.vdd_v,
    )


def energy_fields(cal: Calibration = CALIBRATION) -> dict[str, Any]:
    """The fields of :class:`hiddenite.hw.spec.EnergyTable` derived from ``cal``: Horowitz's
    adds and multiplies scaled; SRAM = one bank's access (a single-entry table, so every buffer
    costs a bank access: interpolation clamps outside the table); PRNG and decoder scaled;
    DRAM as published; leakage as given."""
    s = dynamic_scale(cal)
    sram = horowitz_sram_pj_per_byte(cal.sram_bank_bytes) * s
    return {
        "add_pj": {b: e * s for b, e in HOROWITZ_45NM["add_pj"].items()},
        "mult_pj": {b: e * s for b, e in HOROWITZ_45NM["mult_pj"].items()},
        # Log-multiplier (Mitchell) multiply, derived, not measured: with operands in sign/
        # exponent/mantissa form the product's bits are one integer add of the operands' bit
        # patterns (Mitchell, IRE Trans. Electron. Comput. EC-11(4), 1962; bits(a) + bits(b) -
        # bits(1.0) for float32), so a b-bit log multiply costs a b-bit integer add (int<->log
        # converters, needed for integer operands, are not charged). fp32 at 45 nm: 0.1 pJ vs
        # 3.7 pJ exact (37x); published designs with extra error-correction logic report up to
        # 23.5x less energy than an exact FP multiplier (Niu et al., GLSVLSI 2021,
        # doi:10.1145/3453688.3461509) and 2.3x power efficiency for a whole training engine
        # (Cheng, Yu, Hashimoto, PATMOS 2019, doi:10.1109/PATMOS.2019.8862162).
        "log_mult_pj": {b: e * s for b, e in HOROWITZ_45NM["add_pj"].items()},
        # bit-serial PE (ProgressiveNN): one {-1,+1} digit = a +-activation add into the 24-bit
        # accumulator (the shift of MSB-first Horner accumulation is wiring); Horowitz's 45 nm
        # integer add interpolated at 24 bits (16 b 0.05 pJ, 32 b 0.1 pJ) = 0.075 pJ, scaled
        "bit_serial_digit_pj": BIT_SERIAL_DIGIT_PJ_45NM * s,
        "sram_read_pj_per_byte": {cal.sram_bank_bytes: sram},
        "sram_write_pj_per_byte": {cal.sram_bank_bytes: sram},
        "dram_pj_per_byte": cal.dram_pj_per_byte,
        "prng_step_pj": cal.prng_step_pj_45nm * s,
        "decoder_pj_per_bit": cal.decoder_pj_per_bit_45nm * s,
        "leakage_mw": cal.leakage_mw,
    }


def spec_fields(cal: Calibration = CALIBRATION) -> dict[str, Any]:
    """The :class:`hiddenite.hw.spec.ArchSpec` fields (other than the energy table) that the
    calibration sets: the clock and the register-level reuse."""
    return {"clock_mhz": cal.clock_mhz, "act_reuse_oc_tiles": cal.act_reuse_oc_tiles}
