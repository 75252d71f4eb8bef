"""Design-space sweeps: the cost model over a grid of spec and workload settings.

Grid keys (each maps to a list of values; the sweep runs their Cartesian product):

- ``arch``: preset name, :class:`ArchSpec` or YAML path (default: ``base_spec``);
- any :class:`ArchSpec` field (``clock_mhz``, ``weight_sram_bytes``, ``pe_oc``, ...),
  ``pe_dims`` as ``(ic, oh, ow, oc)`` tuples, and ``energy.<field>`` energy-table entries;
- ``density``: kept fraction of every layer whose weights are regenerated (its mask becomes a
  1-bit edge-popup mask whose bytes are recomputed); a layer with stored weights (kept dense,
  binarized) keeps all of them and is unchanged;
- ``codec``: ``packed`` (exact ceil(n / 8)), ``rle`` / ``entropy`` / ``entropy-grouped`` (the
  entropy bound ceil(H(k) n / 8), as :func:`hiddenite.codecs.size_model` declares; not a
  real code: rows say ``mask_bytes_source = entropy-bound``), ``none``;
- ``skip_masked``, ``activations_on_chip``: model options.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import codecs
from .model import estimate, resolve_arch
from .plots import pareto_front, plot_pareto
from .spec import ArchSpec, SpecError, _atomic_write_text
from .workload import MASK_CODECS, LayerWorkload, WorkloadError, workloads_from_dicts

__all__ = ["sweep", "write_rows_csv"]

_WORKLOAD_KEYS = ("density", "codec")
_OPTION_KEYS = ("skip_masked", "activations_on_chip")
_TOTAL_KEYS = (
    "cycles",
    "latency_s",
    "inferences_per_s",
    "energy_pj",
    "energy_per_inference_pj",
    "energy_compute_pj",
    "energy_sram_pj",
    "energy_dram_pj",
    "energy_prng_pj",
    "energy_decoder_pj",
    "energy_leakage_pj",
    "offchip_bytes",
    "offchip_model_bytes",
    "offchip_activation_bytes",
    "model_bytes",
    "macs",
    "pe_ops",
    "tops",
    "tops_per_watt",
    "utilization",
)


def _adjust(
    workloads: Sequence[LayerWorkload], density: float | None, codec: str | None
) -> tuple[list[LayerWorkload], str]:
    """Workloads at ``density`` / ``codec`` and how their mask bytes were obtained."""
    if density is None and codec is None:
        return list(workloads), "given"
    if codec is not None and codec not in MASK_CODECS:
        raise WorkloadError(
            f"grid codec: unknown mask codec {codec!r}; use {', '.join(MASK_CODECS)}"
        )
    if density is not None and (
        isinstance(density, bool)
        or not isinstance(density, int | float)
        or not 0.0 < float(density) <= 1.0
    ):
        raise WorkloadError(f"grid density: the kept fraction must be in (0, 1], got {density!r}")
    out = []
    sources = set()
    for w in workloads:
        if w.weight_source == "stored":  # every weight stored: no mask to resize
            out.append(w)
            sources.add("given")
            continue
        c = codec if codec is not None else w.mask_codec
        if c not in MASK_CODECS:
            c = "entropy"  # e.g. "packed+entropy" of a multi-part layer: the bound of one mask
        k = w.density if density is None else float(density)
        out.append(w.with_density(k, c))
        if c == "none":
            sources.add("none")
        elif codecs.size_model(c) == "symbol-bits":
            sources.add("packed-exact")
        else:
            sources.add("entropy-bound")
    return out, "+".join(sorted(sources))


def _fmt(value: Any) -> Any:
    if isinstance(value, ArchSpec):
        return value.name
    if isinstance(value, tuple | list):
        return "x".join(str(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def sweep(
    workloads: Iterable[LayerWorkload | Mapping[str, Any]],
    base_spec: ArchSpec | str = "hiddenite",
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    skip_masked: bool = True,
    activations_on_chip: bool = False,
    csv_path: str | os.PathLike[str] | None = None,
    plot_path: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the cost model on every point of ``grid`` (see module docstring for keys).

    Returns one dict per point: the grid values, the spec's PE dims and buffer sizes,
    ``mask_bytes_source`` (``given`` | ``packed-exact`` | ``entropy-bound``, joined by ``+``
    when layers differ: a stored layer's bytes stay ``given``), the report totals
    (``latency_s``, ``energy_per_inference_pj``, ``offchip_model_bytes``, ``tops_per_watt``,
    ...) and ``pareto`` (True when no other point is both faster and cheaper in energy per
    inference). Optionally writes a CSV and a Pareto PNG (energy per inference vs latency).
    """
    wl = workloads_from_dicts(workloads)
    grid = dict(grid or {})
    keys = list(grid)
    for k in keys:
        vals = grid[k]
        if isinstance(vals, str | bytes) or not isinstance(vals, Iterable):
            raise SpecError(f"grid[{k!r}]: expected a list of values, got {vals!r}")
        grid[k] = list(vals)
        if not grid[k]:
            raise SpecError(f"grid[{k!r}]: empty list of values")
    base = resolve_arch(base_spec)
    spec_valid = set(ArchSpec.field_names()) | {"pe_dims", "arch"}
    for k in keys:
        if not (
            k in spec_valid or k in _WORKLOAD_KEYS or k in _OPTION_KEYS or k.startswith("energy.")
        ):
            raise SpecError(
                f"grid: unknown key {k!r}; use arch, spec fields, pe_dims, "
                "energy.<field>, density, codec, skip_masked or activations_on_chip"
            )

    for k in _OPTION_KEYS:
        for v in grid.get(k, ()):
            if not isinstance(v, bool):
                raise SpecError(f"grid[{k!r}]: expected true or false, got {v!r}")
    for k in _WORKLOAD_KEYS:  # every value checked before the first point runs
        for v in grid.get(k, ()):
            _adjust([], v if k == "density" else None, v if k == "codec" else None)

    spec_cache: dict[tuple[Any, ...], ArchSpec] = {}
    wl_cache: dict[tuple[Any, Any], tuple[list[LayerWorkload], str]] = {}
    rows: list[dict[str, Any]] = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))
        spec_over = {
            k: v
            for k, v in point.items()
            if k not in _WORKLOAD_KEYS and k not in _OPTION_KEYS and k != "arch"
        }
        arch = point.get("arch", base)
        skey = (
            id(arch) if isinstance(arch, ArchSpec) else arch,
            tuple((k, _fmt(v)) for k, v in spec_over.items()),
        )
        spec = spec_cache.get(skey)
        if spec is None:
            spec = resolve_arch(arch)
            if spec_over:
                spec = spec.replace(**spec_over)
            spec_cache[skey] = spec
        wkey = (point.get("density"), point.get("codec"))
        if wkey not in wl_cache:
            wl_cache[wkey] = _adjust(wl, *wkey)
        layers, source = wl_cache[wkey]
        report = estimate(
            layers,
            spec,
            skip_masked=point.get("skip_masked", skip_masked),
            activations_on_chip=point.get("activations_on_chip", activations_on_chip),
        )
        row: dict[str, Any] = {k: _fmt(v) for k, v in point.items()}
        row.update(
            arch=spec.name,
            pe_dims=_fmt(spec.pe_dims),
            num_pes=spec.num_pes,
            act_in_sram_bytes=spec.act_in_sram_bytes,
            act_out_sram_bytes=spec.act_out_sram_bytes,
            weight_sram_bytes=spec.weight_sram_bytes,
            mask_bytes_source=source,
        )
        t = report.totals
        row.update({k: t[k] for k in _TOTAL_KEYS})
        rows.append(row)

    _mark_pareto(rows)
    if csv_path is not None:
        write_rows_csv(rows, csv_path)
    if plot_path is not None:
        plot_pareto(rows, plot_path)
    return rows


def _mark_pareto(rows: list[dict[str, Any]]) -> None:
    front = set(pareto_front(rows))
    for i, r in enumerate(rows):
        r["pareto"] = i in front


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> str:
    """Write dict rows as CSV (header = union of keys in first-seen order), atomically."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue()
    _atomic_write_text(path, text)
    return text
