"""Text tables and output folders for ``hiddenite simulate`` / ``hiddenite run`` (no argument
parsing here: the CLI calls these)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model import Report
from .plots import plot_energy_breakdown, plot_offchip_comparison

__all__ = [
    "MODELLED_NOTE",
    "SUMMARY_KEYS",
    "mask_source_note",
    "summary_totals",
    "totals_table",
    "write_simulation",
]

MODELLED_NOTE = (
    "modelled (analytical model, docs/hw-model.md: Horowitz energies scaled to 40 nm and "
    "calibrated against the Hiddenite chip, docs/hw-calibration.md; assumed buffer sizes and "
    "DRAM bandwidth), not measured"
)

# (totals key, label, scale, format)
_ROWS: tuple[tuple[str, str, float, str], ...] = (
    ("offchip_model_bytes", "off-chip model bytes", 1.0, "{:,.0f}"),
    ("offchip_activation_bytes", "off-chip activation bytes", 1.0, "{:,.0f}"),
    ("offchip_bytes", "off-chip bytes (total)", 1.0, "{:,.0f}"),
    ("cycles", "cycles", 1.0, "{:,.0f}"),
    ("latency_s", "latency (ms)", 1e3, "{:,.4f}"),
    ("energy_per_inference_pj", "energy per inference (uJ)", 1e-6, "{:,.3f}"),
    ("tops_per_watt", "TOPS/W (DRAM included)", 1.0, "{:,.2f}"),
    ("onchip_tops_per_watt", "TOPS/W (on chip, no DRAM)", 1.0, "{:,.2f}"),
    ("tops", "TOPS", 1.0, "{:,.3f}"),
    ("utilization", "PE utilization", 100.0, "{:.1f}%"),
    ("inferences_per_s", "inferences per second", 1.0, "{:,.1f}"),
)

SUMMARY_KEYS = (
    "offchip_model_bytes",
    "offchip_bytes",
    "offchip_activation_bytes",
    "macs",
    "cycles",
    "latency_s",
    "energy_pj",
    "energy_per_inference_pj",
    "tops",
    "tops_per_watt",
    "onchip_tops_per_watt",
    "inferences_per_s",
    "utilization",
)


def _fmt(fmt: str, value: Any, scale: float) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value * scale)


def totals_table(reports: Mapping[str, Report]) -> str:
    """The architectures' totals side by side (one column per report)."""
    names = list(reports)
    label_w = max(len(r[1]) for r in _ROWS)
    cells = {
        key: [_fmt(fmt, reports[n].totals.get(key), scale) for n in names]
        for key, _, scale, fmt in _ROWS
    }
    widths = [max(len(n), *(len(cells[k][i]) for k, *_ in _ROWS)) for i, n in enumerate(names)]
    head = f"{'':<{label_w}}  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))
    lines = [head, "-" * len(head)]
    for key, label, _, _ in _ROWS:
        row = "  ".join(c.rjust(w) for c, w in zip(cells[key], widths, strict=True))
        lines.append(f"{label:<{label_w}}  {row}")
    return "\n".join(lines)


def mask_source_note(meta: Mapping[str, Any]) -> str:
    """One line saying where the model-data sizes come from (and, when some layers keep their
    weights stored, how those layers are charged)."""
    how = meta.get("mask_bytes_source")
    if how == "model-file":
        note = (
            f"model data: the coded parts in {meta.get('path')} as stored (off-chip model bytes "
            "= coded masks + stored weights + per-channel parameters; the "
            f"{meta.get('header_bytes', 0):,}-byte file header with the seed is not counted)"
        )
    elif how == "smallest-codec":
        note = (
            "model data: each layer's parts coded with the smallest codec (packed, rle, "
            "entropy-grouped), as a model file stores them"
        )
    elif how == "coded":
        note = f"model data: each layer's parts coded with {meta.get('mask_codec')}"
    elif how == "entropy-bound":
        note = (
            f"mask sizes: ENTROPY BOUND ceil(H(k) n / 8) at k = {meta.get('density')} (no trained "
            "mask; a real code is a little larger)"
        )
    elif how == "packed-exact":
        note = f"mask sizes: PACKED ceil(n / 8) at k = {meta.get('density')} (no trained mask)"
    elif how == "plain-module":
        note = "a plain module: every conv/linear layer counted as hidden with a packed 1-bit mask"
    else:
        note = "mask sizes: as given by the workloads"
    stored = meta.get("stored_layers", 0)
    if stored:
        note += (
            f"; {stored} layer(s) keep stored weights (their method says so): charged as "
            "weight traffic and a full PE operation on Hiddenite too"
        )
    return note


def summary_totals(report: Report) -> dict[str, Any]:
    """The headline totals of a report (for report.json and --json output)."""
    return {k: report.totals[k] for k in SUMMARY_KEYS}


def write_simulation(
    reports: Mapping[str, Report],
    out_dir: str | os.PathLike[str],
    *,
    plotted: Mapping[str, Report] | None = None,
) -> list[str]:
    """Write ``<name>_layers.csv``, ``<name>.json`` and ``energy_<name>.png`` per report and
    ``offchip.png`` (the off-chip traffic of ``plotted``, default ``reports``, side by side) into
    ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for name, rep in reports.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        written.append(str(out / f"{safe}_layers.csv"))
        rep.to_csv(written[-1])
        written.append(str(out / f"{safe}.json"))
        rep.to_json(written[-1])
        written.append(plot_energy_breakdown(rep, out / f"energy_{safe}.png"))
    written.append(plot_offchip_comparison(dict(plotted or reports), out / "offchip.png"))
    return written
