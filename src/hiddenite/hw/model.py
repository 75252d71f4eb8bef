"""The analytical per-layer cost model: mapping, cycles, traffic, energy (see docs/hw-model.md).

Mapping: a tile of ``pe_ic`` input channels x ``pe_oh`` x ``pe_ow`` output pixels x ``pe_oc``
output channels is computed per cycle for one kernel tap; the ``pe_ic`` products are reduced by
an adder tree and accumulated in the PE. Per layer the model picks, of three loop orders, the one
that moves the fewest off-chip bytes: ``oc_outer`` (oc-tile weights resident, outputs finished in
the PEs), ``pixel_outer`` (input streamed once in bands, weights re-read per band) and
``weight_stream`` (every weight fetched once, partial sums parked in the output buffer).

On a ``prng`` spec (Hiddenite) each layer is charged as its supermask method declares
(:class:`~hiddenite.methods.LayerCost`, carried by the workload): a regenerated layer loads its
coded parts and steps the PRNG, a stored layer (kept dense, binarized) loads its weights as
weight traffic; the PE op energy follows the layer's ``op`` and ``weight_bits``. The baselines
(``weight_source: dram``) model every layer as their own weights from DRAM.
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
from typing import Any

import torch

from .. import codecs, models
from ..convert import unwrap_model
from ..fileformat import load, read_header
from ..layers import SupermaskLayer
from ..masks import kept_count
from ..quant import ActQuantizer
from ..storage import FLOAT_BYTES
from ..train import load_trained
from ..validate import file_kind
from .spec import ArchSpec, SpecError, _atomic_write_text, get_preset
from .workload import (
    LayerWorkload,
    MaskBytesFn,
    WorkloadError,
    workloads_from_dicts,
    workloads_from_module,
    zoo_workloads,
)

__all__ = [
    "LayerEstimate",
    "Report",
    "compare",
    "estimate",
    "estimate_layer",
    "load_source",
    "load_workloads",
    "resolve_arch",
    "simulate",
]

ARCHS = ("hiddenite", "bnn", "int8")


@dataclass(frozen=True, slots=True)
class LayerEstimate:
    """Cost of one layer on one architecture (whole batch). Keys end in their unit: ``_cycles``,
    ``_bytes``, ``_pj``, ``_s``; keys without a unit are counts or fractions."""

    layer: str
    kind: str
    arch: str
    dataflow: str  # loop order: "oc_outer", "pixel_outer" or "weight_stream" (see docs)
    batch: int
    density: float
    mask_codec: str
    weight_source: str  # "prng" (regenerated on chip), "stored" (from memory), "dram" (baseline)
    op: str  # PE operation per kept weight: "add", "shift-add", "xnor" or "mac"
    weight_bits: int  # weight operand width of the PE (bits)
    datapath: str  # multiplier of a "mac": "exact" or "log" (Mitchell, the layer's operator)
    # mapping
    tiles_ic: int
    tiles_oh: int
    tiles_ow: int
    tiles_oc: int
    utilization: float  # macs / (compute_cycles x num_pes), includes edge effects
    # cycles
    compute_cycles: int
    dram_cycles: int
    decoder_cycles: int
    prng_cycles: int
    total_cycles: int  # max of the four (full overlap, double buffering)
    stall_cycles: int  # total - compute
    bound: str  # which of compute / dram / decoder / prng sets total_cycles
    # work
    macs: int  # dense MACs of the layer shape
    kept_macs: int  # MACs whose weight is kept by the mask
    pe_ops: int  # PE add/MAC events executed (kept_macs when masked weights are skipped)
    ops: int  # dense-equivalent ops, 2 per MAC (the TOPS convention)
    # on-chip SRAM traffic (bytes)
    ifmap_sram_read_bytes: int
    ifmap_sram_write_bytes: int
    ofmap_sram_read_bytes: int
    ofmap_sram_write_bytes: int
    filter_sram_read_bytes: int  # weights (stored / dram) or decoded symbols (regenerated)
    filter_sram_write_bytes: int
    param_sram_read_bytes: int
    param_sram_write_bytes: int
    # off-chip traffic (bytes)
    dram_weight_read_bytes: int
    dram_mask_read_bytes: int
    dram_param_read_bytes: int
    dram_ifmap_read_bytes: int
    dram_ofmap_write_bytes: int
    model_bytes: int  # model data the layer adds to the stored model (parts once, + params)
    offchip_model_bytes: int  # model data moved (what one call loads x refetches)
    offchip_bytes: int  # all off-chip traffic
    # model construction
    prng_steps: int
    decoder_bits: int
    # energy (pJ)
    energy_compute_pj: float
    energy_sram_pj: float
    energy_dram_pj: float
    energy_prng_pj: float
    energy_decoder_pj: float
    energy_leakage_pj: float  # static power x this layer's latency
    energy_pj: float
    latency_s: float

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (column order = field order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


ENERGY_COMPONENTS = ("compute", "sram", "dram", "prng", "decoder", "leakage")


@dataclass(frozen=True)
class _Costs:
    """Per-spec constants hoisted out of the per-layer loop (pJ per event / per byte)."""

    pe_op: float
    ifmap_r: float
    ifmap_w: float
    ofmap_r: float
    ofmap_w: float
    filt_r: float
    filt_w: float
    param_r: float
    param_w: float
    dram: float
    prng: float
    dec: float
    leak_pj_per_s: float
    ops: dict[tuple[str, int, str, int], float] = field(default_factory=dict)  # -> pJ

    def op(self, spec: ArchSpec, op: str, bits: int, datapath: str = "exact") -> float:
        """:func:`_op_pj`, memoised per (op, bits, datapath, activation bits)."""
        key = (op, bits, datapath, spec.act_bits)
        if key not in self.ops:
            self.ops[key] = _op_pj(spec, op, bits, datapath)
        return self.ops[key]

    @classmethod
    def of(cls, spec: ArchSpec) -> _Costs:
        e = spec.energy
        return cls(
            pe_op=spec.pe_op_pj,
            ifmap_r=e.sram_read(spec.act_in_sram_bytes),
            ifmap_w=e.sram_write(spec.act_in_sram_bytes),
            ofmap_r=e.sram_read(spec.act_out_sram_bytes),
            ofmap_w=e.sram_write(spec.act_out_sram_bytes),
            filt_r=e.sram_read(spec.weight_sram_bytes),
            filt_w=e.sram_write(spec.weight_sram_bytes),
            param_r=e.sram_read(spec.param_sram_bytes),
            param_w=e.sram_write(spec.param_sram_bytes),
            dram=e.dram_pj_per_byte,
            prng=e.prng_step_pj,
            dec=e.decoder_pj_per_bit,
            leak_pj_per_s=e.leakage_mw * 1e-3 * 1e12,
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _window_rows(out: int, pe: int, stride: int, k: int, dilation: int) -> int:
    """Input rows (or columns) read over all tiles of one axis: a tile of ``n`` outputs reads
    ``min((n - 1) * stride + span, n * k)`` rows (the sliding window is reused inside a tile)."""
    span = dilation * (k - 1) + 1
    full, rem = divmod(out, pe)

    def rows(n: int) -> int:
        return min((n - 1) * stride + span, n * k)

    return full * rows(pe) + (rows(rem) if rem else 0)


def _touched(out: int, stride: int, k: int, dilation: int, size: int) -> int:
    """Distinct input rows (or columns) read by some tap, at most the input size."""
    span = dilation * (k - 1) + 1
    rows = out * k if stride >= span else (out - 1) * stride + span
    return min(size, rows)


def _bits_to_bytes(n: int, bits: int) -> int:
    return _ceil_div(n * bits, 8)


def _op_pj(spec: ArchSpec, op: str, bits: int, datapath: str = "exact") -> float:
    """Energy of one PE operation (pJ) on ``spec`` for a weight operand of ``bits`` bits.

    ``add`` / ``xnor`` at 1 bit: an add of the activation into the accumulator
    (``add(accum_bits)``); ``shift-add`` (a small integer multiple, multicoat levels): the
    multiply becomes an add at the operand width, ``add(max(act_bits, bits)) + add(accum_bits)``;
    ``mac`` (and ``add`` / ``xnor`` with wider weights): ``mult(max(act_bits, bits)) +
    add(accum_bits)``; with the ``log`` datapath (a Mitchell operator) the multiply of a
    ``mac`` costs ``log_mult(max(act_bits, bits))`` instead (ops without a multiply are
    unchanged); ``bit-serial`` (weights as ``bits`` {-1,+1} digits accumulated one per
    cycle): ``bits x bit_serial_digit_pj``.
    """
    e = spec.energy
    if op == "bit-serial":  # one +-activation add per {-1,+1} digit, MSB first (ProgressiveNN)
        return bits * e.bit_serial_digit_pj
    if op in ("add", "xnor") and bits == 1:
        return e.add(spec.accum_bits)
    operand = max(spec.act_bits, bits)
    if op == "shift-add":
        return e.add(operand) + e.add(spec.accum_bits)
    if datapath == "log":
        return e.log_mult(operand) + e.add(spec.accum_bits)
    return e.mac(operand, spec.accum_bits)


def _estimate(
    w: LayerWorkload,
    spec: ArchSpec,
    c: _Costs,
    skip_masked: bool,
    input_on_chip: bool,
    output_on_chip: bool,
) -> LayerEstimate:
    if w.act_bits and w.act_bits != spec.act_bits:  # the model's quantizer sets the width
        spec = spec.replace(act_bits=w.act_bits)
        c = dataclasses.replace(c, pe_op=spec.pe_op_pj, ops={})
    pe_ic, pe_oh, pe_ow, pe_oc = spec.pe_ic, spec.pe_oh, spec.pe_ow, spec.pe_oc
    g = w.groups
    cg = w.in_channels // g
    ocg = w.out_channels // g
    taps = w.kernel_h * w.kernel_w
    t_ic = _ceil_div(cg, pe_ic)
    t_oh = _ceil_div(w.out_h, pe_oh)
    t_ow = _ceil_div(w.out_w, pe_ow)
    t_oc = _ceil_div(ocg, pe_oc)
    batch = w.batch
    compute = batch * g * t_oc * t_ic * t_oh * t_ow * taps
    weights = w.out_channels * cg * taps
    pix = batch * w.out_h * w.out_w
    macs = pix * weights
    kept_macs = pix * kept_count(weights, w.density)
    utilization = macs / (compute * spec.num_pes)
    prng_spec = spec.weight_source == "prng"
    masked = prng_spec and spec.mask_bits > 0
    pe_ops = kept_macs if (skip_masked and masked) else macs

    # model data: what one call loads, and what the layer adds to the stored model
    if prng_spec:
        # Hiddenite-class: the layer's method says where its weights come from
        regenerated = w.weight_source == "prng"
        source, op = w.weight_source, w.op
        bits = max(w.weight_bits, spec.weight_bits) if regenerated else w.weight_bits
        if op in ("add", "xnor") and bits > 1:
            op = "mac"
        if op == "bit-serial":  # digits accumulated serially: cycles grow with the digits
            compute *= w.weight_bits
        weight_bytes = w.weight_bytes
        mask_bytes = w.mask_bytes if masked else 0
        decoded = w.decoded_bits if masked else 0
        wb = (_ceil_div(decoded, weights) if decoded else 0) if regenerated else w.weight_bits
        op_pj = c.op(spec, op, bits, w.datapath)
    else:
        # a baseline: every layer's weights from DRAM at the spec's width
        source, op, bits = "dram", ("mac" if spec.weight_bits > 1 else "xnor"), spec.weight_bits
        weight_bytes = _bits_to_bytes(weights, spec.weight_bits)
        mask_bytes = 0
        decoded = 0
        wb = spec.weight_bits
        op_pj = c.op(spec, op, bits, w.datapath) if w.datapath == "log" else c.pe_op
    param_bytes = w.param_bytes
    load_bytes = weight_bytes + mask_bytes + param_bytes
    model_bytes = param_bytes + (weight_bytes + mask_bytes if w.call == 1 else 0)

    # reuse: the loop order (of three) that moves the fewest off-chip bytes
    ab = spec.act_bits
    sh, sw = w.stride_hw
    dh, dw = w.dilation_hw
    # only the input rows / columns some kernel tap touches are fetched (strided 1x1 convs)
    touched = _touched(w.out_h, sh, w.kernel_h, dh, w.in_h) * _touched(
        w.out_w, sw, w.kernel_w, dw, w.in_w
    )
    ifmap_bytes = _bits_to_bytes(batch * w.in_channels * touched, ab)
    ofmap_bytes = _bits_to_bytes(w.ofmap_elems, ab)
    wsram = spec.weight_sram_bytes
    filt_all = _bits_to_bytes(weights, wb)
    filt_slice = _bits_to_bytes(min(ocg, pe_oc) * cg * taps, wb)  # one oc tile of one group
    filt_block = _bits_to_bytes(min(ocg, pe_oc) * min(cg, pe_ic) * taps, wb)  # oc x ic tile
    passes = batch * t_oh * t_ow  # spatial passes over the weights
    in_dram = 0 if input_on_chip else ifmap_bytes
    in_fits = input_on_chip or ifmap_bytes <= spec.act_in_sram_bytes
    # A oc_outer: oc-tile weights resident, outputs accumulate in the PEs
    f_model = 1 if filt_slice <= wsram else passes
    f_in = 1 if in_fits else t_oc
    best = (load_bytes * f_model + in_dram * f_in, "oc_outer", f_model, f_in)
    # B pixel_outer: input streamed once in bands that fit; weights re-read per band
    bands = 1 if in_fits else min(passes, _ceil_div(ifmap_bytes, spec.act_in_sram_bytes))
    # (per band: oc tiles outer, so an oc slice must stay resident to serve the band's pixels)
    f_model = 1 if filt_all <= wsram else (bands if filt_slice <= wsram else passes)
    cand = (load_bytes * f_model + in_dram, "pixel_outer", f_model, 1)
    best = cand if cand[0] < best[0] else best
    # C weight_stream: each weight fetched once; partial sums of one oc tile over all pixels
    # wait in the output buffer between input-channel tiles
    psum_bytes = _bits_to_bytes(batch * w.out_h * w.out_w * min(ocg, pe_oc), spec.accum_bits)
    if filt_block <= wsram and psum_bytes <= spec.act_out_sram_bytes:
        cand = (
            load_bytes + in_dram * (1 if in_fits else t_oc),
            "weight_stream",
            1,
            1 if in_fits else t_oc,
        )
        best = cand if cand[0] < best[0] else best
    _, dataflow, f_model, f_in = best
    out_dram = 0 if output_on_chip else ofmap_bytes
    dram_weight = weight_bytes * f_model
    dram_mask = mask_bytes * f_model
    dram_param = param_bytes * f_model
    dram_in = in_dram * f_in
    offchip_model = load_bytes * f_model
    offchip = offchip_model + dram_in + out_dram

    # on-chip buffers
    rows = _window_rows(w.out_h, pe_oh, sh, w.kernel_h, dh)
    cols = _window_rows(w.out_w, pe_ow, sw, w.kernel_w, dw)
    # an input tile loaded into the PE registers serves act_reuse_oc_tiles oc tiles
    ifmap_passes = _ceil_div(t_oc, spec.act_reuse_oc_tiles)
    ifmap_r = _bits_to_bytes(batch * w.in_channels * ifmap_passes * rows * cols, ab)
    ifmap_w = dram_in
    ofmap_w = ofmap_bytes
    ofmap_r = out_dram
    if dataflow == "weight_stream" and t_ic > 1:  # partial sums spilled between ic tiles
        spill = (t_ic - 1) * _bits_to_bytes(w.ofmap_elems, spec.accum_bits)
        ofmap_w += spill
        ofmap_r += spill
    weight_uses = passes * weights
    filt_r = _bits_to_bytes(weight_uses, wb)
    filt_w = filt_all * f_model
    param_r = param_bytes * passes
    param_w = param_bytes * f_model

    # model construction
    streams = w.prng_streams if prng_spec else 0
    prng_steps = _ceil_div(weight_uses * streams, spec.weights_per_prng_step)
    prng_cycles = _ceil_div(prng_steps, spec.prng_lanes) if prng_steps else 0
    decoder_bits = decoded * f_model
    decoder_cycles = math.ceil(decoder_bits / spec.decoder_bits_per_cycle) if decoder_bits else 0
    dram_cycles = math.ceil(offchip / spec.dram_bytes_per_cycle)

    total = compute
    bound = "compute"
    for name, cyc in (("dram", dram_cycles), ("decoder", decoder_cycles), ("prng", prng_cycles)):
        if cyc > total:
            total, bound = cyc, name

    e_compute = pe_ops * op_pj
    e_sram = (
        ifmap_r * c.ifmap_r
        + ifmap_w * c.ifmap_w
        + ofmap_r * c.ofmap_r
        + ofmap_w * c.ofmap_w
        + filt_r * c.filt_r
        + filt_w * c.filt_w
        + param_r * c.param_r
        + param_w * c.param_w
    )
    e_dram = offchip * c.dram
    e_prng = prng_steps * c.prng
    e_dec = decoder_bits * c.dec
    latency_s = total / spec.clock_hz
    e_leak = c.leak_pj_per_s * latency_s
    return LayerEstimate(
        layer=w.name,
        kind=w.kind,
        arch=spec.name,
        dataflow=dataflow,
        batch=batch,
        density=w.density,
        mask_codec=w.mask_codec if masked else "none",
        weight_source=source,
        op=op,
        weight_bits=bits,
        datapath=w.datapath if op == "mac" else "exact",
        tiles_ic=t_ic,
        tiles_oh=t_oh,
        tiles_ow=t_ow,
        tiles_oc=t_oc,
        utilization=utilization,
        compute_cycles=compute,
        dram_cycles=dram_cycles,
        decoder_cycles=decoder_cycles,
        prng_cycles=prng_cycles,
        total_cycles=total,
        stall_cycles=total - compute,
        bound=bound,
        macs=macs,
        kept_macs=kept_macs,
        pe_ops=pe_ops,
        ops=2 * macs,
        ifmap_sram_read_bytes=ifmap_r,
        ifmap_sram_write_bytes=ifmap_w,
        ofmap_sram_read_bytes=ofmap_r,
        ofmap_sram_write_bytes=ofmap_w,
        filter_sram_read_bytes=filt_r,
        filter_sram_write_bytes=filt_w,
        param_sram_read_bytes=param_r,
        param_sram_write_bytes=param_w,
        dram_weight_read_bytes=dram_weight,
        dram_mask_read_bytes=dram_mask,
        dram_param_read_bytes=dram_param,
        dram_ifmap_read_bytes=dram_in,
        dram_ofmap_write_bytes=out_dram,
        model_bytes=model_bytes,
        offchip_model_bytes=offchip_model,
        offchip_bytes=offchip,
        prng_steps=prng_steps,
        decoder_bits=decoder_bits,
        energy_compute_pj=e_compute,
        energy_sram_pj=e_sram,
        energy_dram_pj=e_dram,
        energy_prng_pj=e_prng,
        energy_decoder_pj=e_dec,
        energy_leakage_pj=e_leak,
        energy_pj=e_compute + e_sram + e_dram + e_prng + e_dec + e_leak,
        latency_s=latency_s,
    )


def estimate_layer(
    workload: LayerWorkload | Mapping[str, Any],
    spec: ArchSpec | str,
    *,
    skip_masked: bool = True,
    activations_on_chip: bool = False,
) -> LayerEstimate:
    """Estimate one layer in isolation. With ``activations_on_chip`` its input and output stay
    on chip when they fit their buffers (as for a middle layer of a network); otherwise the input
    is read from and the output written to DRAM. ``skip_masked``: masked-out weights cost no PE
    energy (clock-gated; cycles are unchanged, the array runs in lock step)."""
    spec = resolve_arch(spec)
    (w,) = workloads_from_dicts([workload])
    ab = w.act_bits or spec.act_bits
    in_chip = activations_on_chip and _bits_to_bytes(w.ifmap_elems, ab) <= spec.act_in_sram_bytes
    out_chip = activations_on_chip and (
        _bits_to_bytes(w.ofmap_elems, ab) <= spec.act_out_sram_bytes
    )
    return _estimate(w, spec, _Costs.of(spec), skip_masked, in_chip, out_chip)


def _sum_rows(rows: Sequence[LayerEstimate], spec: ArchSpec) -> dict[str, Any]:
    keys = [
        "macs",
        "kept_macs",
        "pe_ops",
        "ops",
        "compute_cycles",
        "stall_cycles",
        "model_bytes",
        "offchip_model_bytes",
        "offchip_bytes",
        "dram_weight_read_bytes",
        "dram_mask_read_bytes",
        "dram_param_read_bytes",
        "dram_ifmap_read_bytes",
        "dram_ofmap_write_bytes",
        "prng_steps",
        "decoder_bits",
        "energy_compute_pj",
        "energy_sram_pj",
        "energy_dram_pj",
        "energy_prng_pj",
        "energy_decoder_pj",
        "energy_leakage_pj",
        "energy_pj",
    ]
    t: dict[str, Any] = {k: sum(getattr(r, k) for r in rows) for k in keys}
    sram_keys = [f.name for f in fields(LayerEstimate) if "_sram_" in f.name]
    t["sram_bytes"] = sum(getattr(r, k) for r in rows for k in sram_keys)
    cycles = sum(r.total_cycles for r in rows)
    batch = rows[0].batch if rows else 1
    latency = cycles / spec.clock_hz
    energy = t["energy_pj"]
    t.update(
        arch=spec.name,
        layers=len(rows),
        batch=batch,
        cycles=cycles,
        clock_mhz=spec.clock_mhz,
        num_pes=spec.num_pes,
        offchip_activation_bytes=t["dram_ifmap_read_bytes"] + t["dram_ofmap_write_bytes"],
        utilization=(
            t["macs"] / (t["compute_cycles"] * spec.num_pes) if t["compute_cycles"] else 0.0
        ),
        utilization_with_stalls=t["macs"] / (cycles * spec.num_pes) if cycles else 0.0,
        latency_s=latency,
        energy_per_inference_pj=energy / batch,
        inferences_per_s=batch / latency if latency else math.inf,
        tops=t["ops"] / latency / 1e12 if latency else math.inf,
        power_w=energy * 1e-12 / latency if latency else 0.0,
        tops_per_watt=t["ops"] / energy if energy else math.inf,
        onchip_energy_pj=energy - t["energy_dram_pj"],
        onchip_tops_per_watt=(
            t["ops"] / (energy - t["energy_dram_pj"]) if energy > t["energy_dram_pj"] else math.inf
        ),
    )
    return t


@dataclass
class Report:
    """Per-layer estimates and totals for one architecture.

    ``rows``: one :class:`LayerEstimate` per layer. ``totals``: sums and whole-network figures,
    keys named with their units (``energy_pj``, ``latency_s``, ``offchip_model_bytes``,
    ``tops_per_watt`` (= dense ops per pJ, DRAM included), ``onchip_tops_per_watt`` (DRAM
    excluded, as chip papers report), ``inferences_per_s``, ...).
    """

    spec: ArchSpec
    rows: list[LayerEstimate]
    totals: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        """Name of the spec the report was computed for."""
        return self.spec.name

    def row_dicts(self) -> list[dict[str, Any]]:
        """Rows as plain dicts."""
        return [r.as_dict() for r in self.rows]

    def columns(self) -> list[str]:
        """CSV column names (with units)."""
        return [f.name for f in fields(LayerEstimate)]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """CSV text: a header line and one row per layer; written atomically to ``path`` if
        given."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow(r.as_dict())
        text = buf.getvalue()
        if path is not None:
            _atomic_write_text(path, text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``arch``, ``spec``, ``options``, ``totals``, ``layers``."""
        return {
            "arch": self.arch,
            "spec": self.spec.to_dict(),
            "options": dict(self.options),
            "totals": dict(self.totals),
            "layers": self.row_dicts(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text of :meth:`to_dict`; written atomically to ``path`` if given."""
        text = json.dumps(_json_safe(self.to_dict()), indent=2) + "\n"
        if path is not None:
            _atomic_write_text(path, text)
        return text

    def to_text(self) -> str:
        """A short human-readable per-layer table with totals."""
        head = (
            f"{'layer':<28} {'cycles':>12} {'util':>6} {'offchip_B':>12} {'model_B':>10} "
            f"{'energy_uJ':>10} {'bound':>8}"
        )
        lines = [f"arch: {self.arch}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.layer[:28]:<28} {r.total_cycles:>12,} {r.utilization:>6.1%} "
                f"{r.offchip_bytes:>12,} {r.offchip_model_bytes:>10,} "
                f"{r.energy_pj / 1e6:>10.3f} {r.bound:>8}"
            )
        t = self.totals
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<28} {t['cycles']:>12,} {t['utilization']:>6.1%} "
            f"{t['offchip_bytes']:>12,} {t['offchip_model_bytes']:>10,} "
            f"{t['energy_pj'] / 1e6:>10.3f}"
        )
        lines.append(
            f"latency {t['latency_s'] * 1e3:.3f} ms, {t['inferences_per_s']:.1f} inf/s, "
            f"{t['tops']:.3f} TOPS, {t['tops_per_watt']:.2f} TOPS/W, "
            f"{t['energy_per_inference_pj'] / 1e6:.2f} uJ/inference"
        )
        return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def estimate(
    workloads: Iterable[LayerWorkload | Mapping[str, Any]],
    spec: ArchSpec | str,
    *,
    skip_masked: bool = True,
    activations_on_chip: bool = False,
) -> Report:
    """Estimate a network (layers run one after another, in list order).

    With ``activations_on_chip`` a layer's output stays on chip when it fits the output buffer,
    and the next layer then reads it from there (ping-pong buffers, no copy) when it also fits the
    input buffer; the first input and the last output always cross DRAM. Branches (residual adds,
    concatenations) are not modelled beyond the conv/linear layers themselves.
    """
    spec = resolve_arch(spec)
    wl = workloads_from_dicts(workloads)
    costs = _Costs.of(spec)
    rows: list[LayerEstimate] = []
    prev_kept = False
    for i, w in enumerate(wl):
        ab = w.act_bits or spec.act_bits
        in_chip = (
            activations_on_chip
            and prev_kept
            and _bits_to_bytes(w.ifmap_elems, ab) <= spec.act_in_sram_bytes
        )
        out_chip = (
            activations_on_chip
            and i < len(wl) - 1
            and _bits_to_bytes(w.ofmap_elems, ab) <= spec.act_out_sram_bytes
        )
        rows.append(_estimate(w, spec, costs, skip_masked, in_chip, out_chip))
        prev_kept = out_chip
    options = {"skip_masked": skip_masked, "activations_on_chip": activations_on_chip}
    return Report(spec=spec, rows=rows, totals=_sum_rows(rows, spec), options=options)


def resolve_arch(arch: ArchSpec | str | os.PathLike[str]) -> ArchSpec:
    """An :class:`ArchSpec` from a spec, a preset name, or a YAML file path."""
    if isinstance(arch, ArchSpec):
        return arch
    if isinstance(arch, os.PathLike) or (
        isinstance(arch, str) and (arch.endswith((".yaml", ".yml")) or os.sep in arch)
    ):
        return ArchSpec.from_yaml(arch)
    if isinstance(arch, str):
        return get_preset(arch)
    raise SpecError(
        f"arch: expected a preset name ({', '.join(ARCHS)}), an ArchSpec or a YAML "
        f"path, got {arch!r}"
    )


def _per_channel_bytes(model: Any, bytes_per_value: int = 4) -> dict[str, int]:
    """Bytes of the per-channel tensors a model file stores for ``model`` (at
    ``bytes_per_value`` per value): every ``state_dict`` entry except what the supermask
    layers' methods export as parts, the batch-norm counters and the activation quantizers'
    buffers (the file declares those in its header)."""

    skip = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, SupermaskLayer):
            skip.update(f"{name}.{key}" for key in m.method.owned_state(m))
        if isinstance(m, ActQuantizer):
            skip.update(f"{name}.{key}" for key, _ in m.named_buffers())
    return {
        key: bytes_per_value * value.numel()
        for key, value in model.state_dict().items()
        if key not in skip and key.rpartition(".")[2] != "num_batches_tracked"
    }


def _batch_shape(shape: Sequence[int] | None, default: Sequence[int]) -> tuple[int, ...]:
    s = tuple(int(v) for v in (default if shape is None else shape))
    return (1, *s) if len(s) == 3 else s


def _module_input_shape(module: Any, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` (batch first; C,H,W gets batch 1), else a zoo model's own input size."""

    if input_shape is not None:
        return _batch_shape(input_shape, ())
    arch = getattr(module, "hiddenite_arch", None)
    if arch is None:
        raise WorkloadError(
            "input_shape (batch first, e.g. (1, 3, 32, 32)) is required when simulating an "
            "nn.Module built outside the zoo"
        )
    name, kwargs = arch
    return _batch_shape(None, models.default_input_shape(name, **kwargs))


def _source_counts(workloads: Sequence[LayerWorkload]) -> dict[str, Any]:
    """How many layers regenerate their weights and how many store them (first calls)."""
    first = [w for w in workloads if w.call == 1]
    return {
        "regenerated_layers": sum(w.weight_source == "prng" for w in first),
        "stored_layers": sum(w.weight_source == "stored" for w in first),
        "repeated_calls": len(workloads) - len(first),
    }


def _from_module(
    module: Any,
    input_shape: Sequence[int] | None,
    *,
    codec: str | None,
    mask_bytes_fn: MaskBytesFn | None = None,
) -> tuple[list[LayerWorkload], dict[str, Any]]:

    if codec is not None and codec not in codecs.CODECS:
        raise WorkloadError(
            f"codec: unknown mask codec {codec!r}; use {', '.join(codecs.CODECS)} (or None: the "
            "smallest per part)"
        )
    shape = _module_input_shape(module, input_shape)
    arch = getattr(module, "hiddenite_arch", None)
    meta: dict[str, Any] = {
        "kind": "module",
        "model": arch[0] if arch else type(module).__name__,
        "input_shape": list(shape),
    }
    if any(isinstance(m, SupermaskLayer) for m in module.modules()):
        wl = workloads_from_module(
            module,
            shape,
            codec=codec,
            mask_bytes_fn=mask_bytes_fn,
            param_bytes_of=_per_channel_bytes(module),
        )
        if codec is None:
            meta["mask_bytes_source"] = "smallest-codec"
        else:
            meta.update(mask_bytes_source="coded", mask_codec=codec)
    else:
        wl = workloads_from_module(module, shape, mask_bytes_fn=mask_bytes_fn)
        meta["mask_bytes_source"] = "plain-module"
    meta.update(_source_counts(wl))
    return wl, meta


def _from_model_file(
    path: str, input_shape: Sequence[int] | None
) -> tuple[list[LayerWorkload], dict[str, Any]]:

    info = read_header(path)
    if info.arch is None:
        raise WorkloadError(
            f"{path}: the file holds a module built outside the zoo; rebuild it with "
            "hiddenite.load(path, model=module) and simulate that module with its input_shape"
        )
    name, kwargs = info.arch
    shape = _batch_shape(input_shape, models.default_input_shape(name, **kwargs))
    module = load(path, check_masks=False)  # geometry and support; sha256 still checked
    wl = workloads_from_module(
        module,
        shape,
        stored_parts={e.name: e.parts for e in info.entries},
        param_bytes_of=info.param_bytes(),
        param_bytes_per_value=FLOAT_BYTES[info.meta["param_dtype"]],
    )
    t = info.totals()
    meta = {
        "kind": "model-file",
        "path": path,
        "model": name,
        "mask_bytes_source": "model-file",
        "methods": t["methods"],
        "file_bytes": t["file_bytes"],
        "header_bytes": t["header_bytes"],
        "file_mask_bytes": t["mask_bytes"],
        "file_float_part_bytes": t["float_part_bytes"],
        "file_param_bytes": t["param_bytes"],
        "input_shape": list(shape),
        **_source_counts(wl),
    }
    return wl, meta


def _from_checkpoint(
    path: str, input_shape: Sequence[int] | None
) -> tuple[list[LayerWorkload], dict[str, Any]]:

    module, config = load_trained(path)
    wl, meta = _from_module(module, input_shape, codec=None)
    meta.update(kind="checkpoint", path=path, model=config.model)
    return wl, meta


def load_source(
    source: Any,
    input_shape: tuple[int, ...] | None = None,
    *,
    mask_bytes_fn: MaskBytesFn | None = None,
    density: float | None = None,
    codec: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[LayerWorkload], dict[str, Any]]:
    """:func:`load_workloads` plus a description of the source (``kind``,
    ``mask_bytes_source``, the counts of regenerated and stored layers and, for a model file,
    its byte counts)."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path) or (os.path.isfile(path) and not path.endswith(".hnn")):
            return _from_checkpoint(path, input_shape)
        if os.path.isfile(path):
            return _from_model_file(path, input_shape)

        if isinstance(source, str) and source in models.MODELS:
            if density is None:
                raise WorkloadError(
                    f"{source!r} is a zoo model name: give the density (kept fraction) of its "
                    "masks for an estimate of the untrained network, e.g. density=0.3"
                )
            codec = "entropy" if codec is None else codec
            wl = zoo_workloads(
                source, density, codec=codec, input_shape=input_shape, **dict(model_kwargs or {})
            )
            how = (
                "packed-exact"
                if codec in codecs.CODECS and codecs.size_model(codec) == "symbol-bits"
                else "entropy-bound"
            )
            meta = {
                "kind": "zoo",
                "model": source,
                "density": float(density),
                "mask_codec": codec,
                "mask_bytes_source": how,
                **_source_counts(wl),
            }
            return wl, meta
        if os.path.exists(path):
            raise WorkloadError(f"{path}: is {file_kind(os.stat(path).st_mode)}, not a model file")
        raise WorkloadError(
            f"{path}: no such model file, checkpoint or run folder (nor a zoo model name)"
        )
    if isinstance(source, torch.nn.Module):
        return _from_module(
            unwrap_model(source), input_shape, codec=codec, mask_bytes_fn=mask_bytes_fn
        )
    if isinstance(source, LayerWorkload | Mapping):
        return workloads_from_dicts([source]), {"kind": "workloads"}
    if isinstance(source, Iterable):
        return workloads_from_dicts(source), {"kind": "workloads"}
    raise TypeError(
        f"cannot build workloads from {type(source).__name__}; pass a .hnn path, a checkpoint, "
        "an nn.Module or a list of LayerWorkload"
    )


def load_workloads(
    source: Any,
    input_shape: tuple[int, ...] | None = None,
    *,
    mask_bytes_fn: MaskBytesFn | None = None,
    density: float | None = None,
    codec: str | None = None,
) -> list[LayerWorkload]:
    """Workloads from a source; each layer's weight source, PE op and weight bits come from its
    supermask method's declared cost (:meth:`hiddenite.methods.Method.cost`):

    - a ``.hnn`` model file (``str`` / ``PathLike``): rebuilt with :func:`hiddenite.load` and
      traced with the input size of its architecture (``in_channels``, ``image_size``) unless
      ``input_shape`` is given; each layer's parts are charged exactly as the file stores them
      (a regenerated layer's coded symbol parts as ``mask_bytes``, a stored layer's parts as
      ``weight_bytes``) and ``param_bytes`` are the per-channel tensors exactly as stored
      (float32 or float16). The file header (architecture, seed, shapes: JSON metadata) is not
      model data the chip loads and is not counted;
    - a training checkpoint or run folder: rebuilt with :func:`hiddenite.train.load_trained`
      and coded as ``hiddenite export`` writes it by default (the smallest codec per part,
      per-channel parameters at float32);
    - a zoo model name with ``density`` (an untrained network, every conv/linear layer hidden
      with a 1-bit mask: ``codec`` ``packed`` exact or ``entropy`` (default) the entropy bound;
      see :func:`~hiddenite.hw.workload.zoo_workloads`);
    - a ``torch.nn.Module``: a converted model is coded as a model file would store it
      (:func:`hiddenite.storage.encode_layer` with ``codec``; None: the smallest codec per
      part); ``input_shape`` (batch first) is needed unless it is a zoo model
      (``model.hiddenite_arch``), which knows its input size. In a plain module every
      conv/linear layer counts as hidden with a 1-bit mask (see
      :func:`~hiddenite.hw.workload.workloads_from_module`);
    - a list of :class:`LayerWorkload` / dicts.

    User errors (a missing path, a zoo name without density, an input shape that does not fit)
    raise :class:`~hiddenite.hw.workload.WorkloadError`.
    """
    return load_source(
        source, input_shape, mask_bytes_fn=mask_bytes_fn, density=density, codec=codec
    )[0]


def simulate(
    source: Any,
    arch: ArchSpec | str | os.PathLike[str] = "hiddenite",
    input_shape: tuple[int, ...] | None = None,
    *,
    skip_masked: bool = True,
    activations_on_chip: bool = False,
    mask_bytes_fn: MaskBytesFn | None = None,
    density: float | None = None,
    codec: str | None = None,
) -> Report:
    """Estimate ``source`` on ``arch`` (``"hiddenite"`` | ``"bnn"`` | ``"int8"``, an
    :class:`ArchSpec`, or a YAML path). ``source``: a ``.hnn`` model file, a checkpoint or run
    folder, a zoo model name with ``density``, an ``nn.Module`` (``input_shape`` unless a zoo
    model), or a list of workloads (see :func:`load_workloads`). ``codec``: the mask codec of a
    module's parts (None: the smallest per part) or of a zoo estimate (None: the entropy
    bound). ``report.options["source"]`` says where the sizes came from."""
    workloads, meta = load_source(
        source, input_shape, mask_bytes_fn=mask_bytes_fn, density=density, codec=codec
    )
    report = estimate(
        workloads, arch, skip_masked=skip_masked, activations_on_chip=activations_on_chip
    )
    report.options["source"] = meta
    return report


def compare(
    source: Any,
    archs: Iterable[ArchSpec | str] = ARCHS,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> dict[str, Report]:
    """:func:`simulate` on several architectures (workloads extracted once); keyed by spec
    name."""
    workloads, meta = load_source(
        source,
        input_shape,
        mask_bytes_fn=options.pop("mask_bytes_fn", None),
        density=options.pop("density", None),
        codec=options.pop("codec", None),
    )
    out: dict[str, Report] = {}
    for a in archs:
        report = estimate(workloads, a, **options)
        report.options["source"] = meta
        out[report.arch] = report
    return out
