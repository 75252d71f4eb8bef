"""PNG plots and the output folder of ``hiddenite cim``: the fraction of gating units switched
off per layer (by weight sparsity and by zero input channels) and the energy breakdown of the
macro with and without gating. Same drawing rules as :mod:`hiddenite.hw.plots` (Agg canvas per
figure, nothing at import, atomic saves)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .cim import COMPONENTS, CimReport
from .plots import _figure, _save_png, _width

__all__ = ["plot_cim_energy", "plot_cim_gated", "write_cim"]

_COLORS = ("#4C72B0", "#55A868", "#C44E52", "#8172B2", "#CCB974", "#64B5CD", "#937860", "#DA8BC3")


def plot_cim_gated(reports: Sequence[CimReport], path: str | os.PathLike[str]) -> str:
    """Grouped bars per layer, one group member per granularity: the fraction of mapped gating
    units switched off, solid = weight sparsity, hatched = zero input channels."""
    names = [r.layer for r in reports[0].layers]
    n, k = len(names), len(reports)
    fig = _figure(_width(n) + 1.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / k
    for j, rep in enumerate(reports):
        color = _COLORS[j % len(_COLORS)]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        w = [r.fraction("weight") for r in rep.layers]
        a = [r.fraction("input") for r in rep.layers]
        label = f"unit {rep.spec.granularity}"
        ax.bar(xs, w, width=width, color=color, label=f"{label}: weights")
        ax.bar(
            xs,
            a,
            width=width,
            bottom=w,
            color=color,
            alpha=0.4,
            hatch="//",
            label=f"{label}: zero inputs",
        )
    ax.set_xticks(list(range(n)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("gating units off (fraction of unit-cycles)")
    ax.set_title(f"{reports[0].spec.name}: gated fraction per layer (modelled)")
    ax.legend(fontsize=7, ncol=2)
    return _save_png(fig, path)


def plot_cim_energy(reports: Sequence[CimReport], path: str | os.PathLike[str]) -> str:
    """Stacked energy by component: the ungated macro, then the gated macro per granularity."""
    bars = [("no gating", reports[0].totals, "baseline")]
    bars += [(f"unit {r.spec.granularity}", r.totals, "gated") for r in reports]
    fig = _figure(max(5.0, 1.2 * len(bars) + 3.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    bottom = [0.0] * len(bars)
    for c, comp in enumerate(COMPONENTS):
        vals = [t[f"{which}_{comp}_pj"] / max(1, t["inputs"]) / 1e6 for _, t, which in bars]
        if not any(vals):
            continue
        ax.bar(range(len(bars)), vals, bottom=bottom, color=_COLORS[c % len(_COLORS)], label=comp)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(list(range(len(bars))), [b[0] for b in bars], rotation=30, ha="right")
    ax.set_ylabel("energy per input (uJ)")
    ax.set_title(f"{reports[0].spec.name}: energy by component (modelled)")
    ax.legend(fontsize=7)
    return _save_png(fig, path)


def write_cim(reports: Sequence[CimReport], out_dir: str | os.PathLike[str]) -> list[str]:
    """``cim_<granularity>_layers.csv`` and ``cim_<granularity>.json`` per report, then
    ``cim_gated.png`` and ``cim_energy.png``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for rep in reports:
        g = rep.spec.granularity
        written.append(str(out / f"cim_{g}_layers.csv"))
        rep.to_csv(written[-1])
        written.append(str(out / f"cim_{g}.json"))
        rep.to_json(written[-1])
    written.append(plot_cim_gated(reports, out / "cim_gated.png"))
    written.append(plot_cim_energy(reports, out / "cim_energy.png"))
    return written
