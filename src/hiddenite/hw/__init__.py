"""Analytical cost model of the Hiddenite accelerator and two baselines (BNN, INT8).

``simulate(model_or_workloads, arch="hiddenite" | "bnn" | "int8" | ArchSpec)`` returns a
:class:`Report` with one row per conv/linear layer (cycles, utilization, on-chip and off-chip
bytes, PRNG steps, decoder bits, energy by component) and whole-network ``totals``. All figures
are modelled, not measured; see ``docs/hw-model.md`` for the equations and assumptions.
"""

from .model import LayerEstimate, Report, compare, estimate, estimate_layer, simulate
from .spec import PRESETS, ArchSpec, EnergyTable, SpecError, get_preset
from .sweep import sweep
from .workload import LayerWorkload, workloads_from_module

__all__ = [
    "PRESETS",
    "ArchSpec",
    "EnergyTable",
    "LayerEstimate",
    "LayerWorkload",
    "Report",
    "SpecError",
    "compare",
    "estimate",
    "estimate_layer",
    "get_preset",
    "simulate",
    "sweep",
    "workloads_from_module",
]
