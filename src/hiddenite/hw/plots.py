"""PNG plots of cost reports: energy per layer by component, off-chip traffic per architecture,
and the energy-latency Pareto front of a sweep.

Figures are drawn with matplotlib's Agg canvas created inside each function (no pyplot, no global
backend switch, nothing at import) and saved atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..atomic import atomic_write
from .model import ENERGY_COMPONENTS, Report

__all__ = ["plot_energy_breakdown", "plot_offchip_comparison", "plot_pareto"]

_COLORS = {
    "compute": "#4C72B0",
    "sram": "#55A868",
    "dram": "#C44E52",
    "prng": "#8172B2",
    "decoder": "#CCB974",
    "leakage": "#8C8C8C",
}


_AXES = {
    "latency_s": (1e3, "latency (ms)"),
    "energy_per_inference_pj": (1e-6, "energy per inference (uJ)"),
    "energy_pj": (1e-6, "energy (uJ)"),
    "offchip_bytes": (1e-6, "off-chip traffic (MB)"),
}


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return os.fspath(path)


def _width(n: int) -> float:
    return min(24.0, max(6.0, 0.25 * n + 3.0))


def plot_energy_breakdown(
    report: Report, path: str | os.PathLike[str], *, title: str | None = None
) -> str:
    """Stacked bars of energy per layer (uJ) by component (compute, SRAM, DRAM, PRNG, decoder,
    leakage);
    returns the PNG path."""
    rows = report.rows
    n = len(rows)
    fig = _figure(_width(n), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    bottom = [0.0] * n
    for comp in ENERGY_COMPONENTS:
        vals = [getattr(r, f"energy_{comp}_pj") / 1e6 for r in rows]
        if not any(vals):
            continue
        ax.bar(xs, vals, bottom=bottom, label=comp, color=_COLORS[comp], width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(xs, [r.layer for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("energy per layer (uJ, whole batch)")
    t = report.totals
    ax.set_title(
        title
        or (
            f"{report.arch}: {t['energy_pj'] / 1e6:.1f} uJ, "
            f"{t['tops_per_watt']:.2f} TOPS/W (modelled)"
        )
    )
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_offchip_comparison(
    reports: Mapping[str, Report] | Sequence[Report],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> str:
    """Off-chip traffic of several architectures side by side: per layer (left, grouped bars,
    model data solid and activations hatched) and in total (right); returns the PNG path."""
    reps = list(reports.values()) if isinstance(reports, Mapping) else list(reports)
    if not reps:
        raise ValueError("plot_offchip_comparison needs at least one report")
    names = [r.rows[i].layer for r in reps[:1] for i in range(len(r.rows))]
    n = len(names)
    k = len(reps)
    fig = _figure(_width(n) + 3.0, 4.5)
    gs = fig.add_gridspec(1, 2, width_ratios=[max(3, n), max(2, k)])
    ax = fig.add_subplot(gs[0, 0])
    ax_tot = fig.add_subplot(gs[0, 1])
    width = 0.8 / k
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2", "#937860"]
    for j, rep in enumerate(reps):
        color = palette[j % len(palette)]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rep.rows))]
        model = [r.offchip_model_bytes / 1e3 for r in rep.rows]
        acts = [(r.offchip_bytes - r.offchip_model_bytes) / 1e3 for r in rep.rows]
        ax.bar(xs, model, width=width, color=color, label=f"{rep.arch} model data")
        ax.bar(
            xs,
            acts,
            width=width,
            bottom=model,
            color=color,
            alpha=0.35,
            hatch="//",
            label=f"{rep.arch} activations",
        )
        tm = rep.totals["offchip_model_bytes"] / 1e6
        ta = (rep.totals["offchip_bytes"] - rep.totals["offchip_model_bytes"]) / 1e6
        ax_tot.bar([j], [tm], color=color)
        ax_tot.bar([j], [ta], bottom=[tm], color=color, alpha=0.35, hatch="//")
        ax_tot.annotate(f"{tm:.2f}", (j, tm), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(range(n)), names, rotation=90, fontsize=7)
    ax.set_ylabel("off-chip bytes per layer (kB)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "off-chip traffic per layer (modelled)")
    ax_tot.set_xticks(list(range(k)), [r.arch for r in reps], rotation=45, ha="right", fontsize=8)
    ax_tot.set_ylabel("total off-chip (MB); label = model data")
    return _save_png(fig, path)


def pareto_front(
    rows: Sequence[Mapping[str, Any]], x: str = "latency_s", y: str = "energy_per_inference_pj"
) -> list[int]:
    """Indices of the rows not dominated in (``x``, ``y``), both minimised, sorted by ``x``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][x], rows[i][y]))
    front: list[int] = []
    best = float("inf")
    for i in order:
        if rows[i][y] < best:
            front.append(i)
            best = rows[i][y]
    return front


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    x: str = "latency_s",
    y: str = "energy_per_inference_pj",
    color_by: str = "arch",
    title: str | None = None,
) -> str:
    """Scatter of a sweep (default: energy per inference in uJ vs latency in ms) with its Pareto
    front (both minimised); points are coloured by ``color_by``. Returns the PNG path."""
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    xs_scale, xs_label = _AXES.get(x, (1.0, x))
    ys_scale, ys_label = _AXES.get(y, (1.0, y))
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get(color_by, "")), []).append(i)
    for label, idx in groups.items():
        ax.scatter(
            [rows[i][x] * xs_scale for i in idx],
            [rows[i][y] * ys_scale for i in idx],
            s=12,
            alpha=0.6,
            label=label or None,
        )
    front = pareto_front(rows, x, y)
    if front:
        ax.plot(
            [rows[i][x] * xs_scale for i in front],
            [rows[i][y] * ys_scale for i in front],
            "k-o",
            markersize=3,
            linewidth=1,
            label="Pareto front",
        )
    ax.set_xlabel(xs_label)
    ax.set_ylabel(ys_label)
    ax.set_title(title or f"sweep: {len(rows)} points (modelled)")
    ax.legend(fontsize=8)
    return _save_png(fig, path)
