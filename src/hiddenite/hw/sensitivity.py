"""Holding the calibrated presets against the chip, and how much each assumption matters.

:func:`chip_workloads` builds the two workloads the Hiddenite chip was measured on (ImageNet
ResNet-50 at 224 x 224, a CIFAR-100 ResNet at 32 x 32; hidden at k = 0.3). :func:`evaluate`
runs every workload on one and the same spec (no per-workload override exists: the spec is the
only input that carries constants). :func:`sensitivity` re-derives the spec from a
:class:`~hiddenite.hw.calibration.Calibration` with one assumption changed at a time and reports
how far the metric moves for each workload, most influential assumption first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
from .calibration import CALIBRATION, PUBLISHED, Calibration, energy_fields, spec_fields
from .model import Report, estimate
from .spec import ArchSpec, EnergyTable, get_preset
from .workload import LayerWorkload, zoo_workloads

__all__ = [
    "CHIP_WORKLOADS",
    "DEFAULT_VARIATIONS",
    "SensitivityRow",
    "calibrated_spec",
    "chip_workloads",
    "evaluate",
    "published_tops_per_watt",
    "sensitivity",
]

CHIP_WORKLOADS: Mapping[str, tuple[str, dict[str, Any], str]] = {
    # name: (zoo model, model arguments, key of the published figure in calibration.PUBLISHED)
    "imagenet-resnet50": ("resnet50", {}, "imagenet_tops_per_watt"),
    "cifar100-resnet18": (
        "resnet18",
        {"in_channels": 3, "image_size": 32, "num_classes": 100},
        "cifar100_tops_per_watt",
    ),
}
"""The two measured workloads: zoo model, its arguments, the published TOPS/W it is held to."""

DEFAULT_VARIATIONS: Mapping[str, tuple[float, ...]] = {
    "vdd_v": (0.7, 1.1),  # near-threshold .. 40 nm low-power nominal
    "sram_bank_bytes": (32 * 1024, 128 * 1024),  # larger banks .. one monolithic buffer
    "act_reuse_oc_tiles": (2, 4),  # 2 or 4 partial sums per output position
    "leakage_mw": (0.5, 8.0),  # x1/4 .. x4
    "clock_mhz": (85.0, 340.0),  # x1/2 .. x2 (moves the leakage energy per op)
    "prng_step_pj_45nm": (0.05, 0.2),  # x1/2 .. x2
    "decoder_pj_per_bit_45nm": (0.005, 0.02),  # x1/2 .. x2
    "node_nm": (45.0,),  # no node scaling: the 45 nm table as published
}
"""Plausible range of each assumption (docs/hw-calibration.md gives the reasons)."""


def calibrated_spec(cal: Calibration = CALIBRATION, base: str = "hiddenite") -> ArchSpec:
    """The preset ``base`` with its technology (clock, register reuse, energy table) derived
    from ``cal``; ``calibrated_spec()`` equals ``PRESETS["hiddenite"]``."""
    return get_preset(base).replace(**spec_fields(cal), energy=EnergyTable(**energy_fields(cal)))


def chip_workloads(density: float = 0.3, codec: str = "entropy") -> dict[str, list[LayerWorkload]]:
    """The measured workloads (:data:`CHIP_WORKLOADS`), every conv/linear layer hidden at
    ``density`` (default 0.3, the density seed 003 reports as most accurate), mask sizes by
    ``codec`` (default: the entropy bound); built on the ``meta`` device."""
    return {
        name: zoo_workloads(model, density, codec=codec, **kwargs)
        for name, (model, kwargs, _) in CHIP_WORKLOADS.items()
    }


def published_tops_per_watt() -> dict[str, float]:
    """The chip's published TOPS/W per workload of :data:`CHIP_WORKLOADS`."""
    return {name: PUBLISHED[key] for name, (_, _, key) in CHIP_WORKLOADS.items()}


def evaluate(
    workloads: Mapping[str, Sequence[LayerWorkload]],
    spec: ArchSpec | str = "hiddenite",
    **options: Any,
) -> dict[str, Report]:
    """Every workload estimated on the one ``spec`` (same object for all; ``options`` are
    :func:`~hiddenite.hw.estimate`'s, also the same for all)."""
    if isinstance(spec, str):
        spec = get_preset(spec)
    return {name: estimate(wl, spec, **options) for name, wl in workloads.items()}


@dataclass(frozen=True)
class SensitivityRow:
    """One assumption at one value: the metric per workload and its relative change against
    the calibrated value (``value / base - 1``)."""

    assumption: str
    value: float
    base_value: float
    metric: dict[str, float]
    change: dict[str, float]

    @property
    def max_abs_change(self) -> float:
        return max(abs(c) for c in self.change.values())


def sensitivity(
    workloads: Mapping[str, Sequence[LayerWorkload]],
    variations: Mapping[str, Sequence[float]] = DEFAULT_VARIATIONS,
    *,
    base: Calibration = CALIBRATION,
    arch: str = "hiddenite",
    metric: str = "onchip_tops_per_watt",
    **options: Any,
) -> tuple[dict[str, float], list[SensitivityRow]]:
    """Vary one :class:`~hiddenite.hw.calibration.Calibration` field at a time.

    Returns the metric of each workload at ``base`` and one row per (assumption, value), the
    assumptions sorted by their largest relative change over all values and workloads (most
    influential first; an assumption's values keep their given order). ``metric`` is a key of
    :attr:`Report.totals`. Unknown fields or invalid values raise
    :class:`~hiddenite.errors.ConfigError` (via :class:`Calibration`).
    """
    valid = [f.name for f in fields(Calibration)]
    for name in variations:
        if name not in valid:
            raise ConfigError(
                f"sensitivity: unknown assumption {name!r}; vary one of {', '.join(valid)}"
            )

    def run(cal: Calibration) -> dict[str, float]:
        reps = evaluate(workloads, calibrated_spec(cal, arch), **options)
        return {name: float(rep.totals[metric]) for name, rep in reps.items()}

    ref = run(base)
    groups: list[list[SensitivityRow]] = []
    for name, values in variations.items():
        rows = []
        for v in values:
            got = run(base.replace(**{name: v}))
            rows.append(
                SensitivityRow(
                    assumption=name,
                    value=float(v),
                    base_value=float(getattr(base, name)),
                    metric=got,
                    change={w: got[w] / ref[w] - 1.0 for w in ref},
                )
            )
        groups.append(rows)
    groups.sort(key=lambda rows: -max((r.max_abs_change for r in rows), default=0.0))
    return ref, [r for rows in groups for r in rows]
