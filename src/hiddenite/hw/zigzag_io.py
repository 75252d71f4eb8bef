"""Export a spec and workloads as ZigZag (``zigzag-dse``) inputs, for cross-checking the model.

Nothing here imports ZigZag: the functions build the plain dicts / YAML files its
``get_hardware_performance_zigzag(workload, accelerator, mapping)`` API reads. The accelerator is
the same 4D array (``D1..D4`` = input channel, output row, output column, output channel, with the
spatial mapping fixed to ``C, OY, OX, K``), the same SRAM capacities and DRAM bandwidth, and
per-access energies taken from our energy table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import yaml

from .spec import ArchSpec, _atomic_write_text
from .workload import LayerWorkload

__all__ = ["write_zigzag_inputs", "zigzag_accelerator", "zigzag_layer", "zigzag_mapping"]


def zigzag_layer(w: LayerWorkload, spec: ArchSpec, layer_id: int) -> dict[str, Any]:
    """One ZigZag ``Conv`` layer (linear layers as 1x1 convs); operands sourced from the layer
    itself, so each layer is evaluated independently (inputs start in DRAM)."""
    if w.groups != 1:
        raise ValueError(f"{w.name}: grouped convolutions are not exported to ZigZag")
    sh, sw = w.stride_hw
    ph, pw = w.padding_hw
    dh, dw = w.dilation_hw
    return {
        "id": layer_id,
        "name": w.name,
        "operator_type": "Conv",
        "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
        "dimension_relations": [f"ix={sw}*ox+{dw}*fx", f"iy={sh}*oy+{dh}*fy"],
        "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
        "loop_sizes": [
            w.batch,
            w.out_channels,
            w.in_channels,
            w.out_h,
            w.out_w,
            w.kernel_h,
            w.kernel_w,
        ],
        "pr_loop_dims": ["IY", "IX"],
        "pr_loop_sizes": [w.in_h, w.in_w],
        "padding": [[ph, ph], [pw, pw]],
        "operand_precision": {
            "W": spec.weight_bits,
            "I": spec.act_bits,
            "O": spec.accum_bits,
            "O_final": spec.act_bits,
        },
        "operand_source": {"I": layer_id, "W": layer_id},
    }


def _mem(
    size_bits: int,
    bw_bits: int,
    pj_per_byte: float,
    operands: list[str],
    served: list[str],
    *,
    output: bool = False,
    dram: bool = False,
) -> dict[str, Any]:
    cost = pj_per_byte * bw_bits / 8  # ZigZag charges per access of bandwidth_max bits
    if dram:
        alloc = [
            f"{op}, {d}"
            for op in operands
            for d in (("fh", "tl", "fl", "th") if op == "O" else ("fh", "tl"))
        ]
        ports = [
            {
                "name": "rw_port_1",
                "type": "read_write",
                "bandwidth_min": bw_bits,
                "bandwidth_max": bw_bits,
                "allocation": alloc,
            }
        ]
    else:
        rd = [f"{op}, tl" for op in operands] + (["O, th"] if output else [])
        wr = [f"{op}, fh" for op in operands] + (["O, fl"] if output else [])
        ports = [
            {
                "name": "r_port_1",
                "type": "read",
                "bandwidth_min": bw_bits,
                "bandwidth_max": bw_bits,
                "allocation": rd,
            },
            {
                "name": "w_port_1",
                "type": "write",
                "bandwidth_min": bw_bits,
                "bandwidth_max": bw_bits,
                "allocation": wr,
            },
        ]
    return {
        "size": int(size_bits),
        "r_cost": float(cost),
        "w_cost": float(cost),
        "area": 0.0,
        "latency": 1,
        "operands": operands,
        "ports": ports,
        "served_dimensions": served,
    }


def zigzag_accelerator(spec: ArchSpec) -> dict[str, Any]:
    """ZigZag accelerator description of ``spec``: a ``pe_ic x pe_oh x pe_ow x pe_oc`` array
    (``D1..D4``) with per-PE registers (weight shared over D2/D3, input over D4, output reduced
    over D1), weight / input / output SRAMs of the spec's sizes, and DRAM at the spec's
    bandwidth."""
    e = spec.energy
    ab, wb, acc = spec.act_bits, spec.weight_bits, spec.accum_bits
    pe_ic, pe_oh, pe_ow, pe_oc = spec.pe_dims
    dram_bw = max(8, round(spec.dram_bytes_per_cycle * 8))
    return {
        "name": f"{spec.name}_4d",
        "operational_array": {
            "unit_energy": float(spec.pe_op_pj),
            "unit_area": 1.0,
            "dimensions": ["D1", "D2", "D3", "D4"],
            "sizes": [pe_ic, pe_oh, pe_ow, pe_oc],
        },
        "memories": {
            "rf_w": _mem(wb, wb, 0.0, ["I2"], ["D2", "D3"]),
            "rf_i": _mem(ab, ab, 0.0, ["I1"], ["D4"]),
            "rf_o": _mem(acc, acc, 0.0, ["O"], ["D1"], output=True),
            "sram_w": _mem(
                spec.weight_sram_bytes * 8,
                pe_ic * pe_oc * wb,
                e.sram_read(spec.weight_sram_bytes),
                ["I2"],
                ["D1", "D2", "D3", "D4"],
            ),
            "sram_i": _mem(
                spec.act_in_sram_bytes * 8,
                pe_ic * pe_oh * pe_ow * ab,
                e.sram_read(spec.act_in_sram_bytes),
                ["I1"],
                ["D1", "D2", "D3", "D4"],
            ),
            "sram_o": _mem(
                spec.act_out_sram_bytes * 8,
                pe_oh * pe_ow * pe_oc * acc,
                e.sram_read(spec.act_out_sram_bytes),
                ["O"],
                ["D1", "D2", "D3", "D4"],
                output=True,
            ),
            "dram": _mem(
                10**12,
                dram_bw,
                e.dram_pj_per_byte,
                ["I1", "I2", "O"],
                ["D1", "D2", "D3", "D4"],
                dram=True,
            ),
        },
    }


def zigzag_mapping(spec: ArchSpec) -> list[dict[str, Any]]:
    """ZigZag mapping: spatial unrolling C, OY, OX, K over D1..D4 (temporal order left to
    ZigZag's LOMA search)."""
    pe_ic, pe_oh, pe_ow, pe_oc = spec.pe_dims
    return [
        {
            "name": "default",
            "spatial_mapping": {
                "D1": [f"C, {pe_ic}"],
                "D2": [f"OY, {pe_oh}"],
                "D3": [f"OX, {pe_ow}"],
                "D4": [f"K, {pe_oc}"],
            },
            "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
        }
    ]


def write_zigzag_inputs(
    workloads: Sequence[LayerWorkload], spec: ArchSpec, folder: str | os.PathLike[str]
) -> tuple[list[dict[str, Any]], str, str]:
    """Write ``accelerator.yaml`` and ``mapping.yaml`` into ``folder``; return
    ``(workload_layers, accelerator_path, mapping_path)`` for ZigZag's API."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    hw_path = os.path.join(folder, "accelerator.yaml")
    map_path = os.path.join(folder, "mapping.yaml")
    _atomic_write_text(hw_path, yaml.safe_dump(zigzag_accelerator(spec), sort_keys=False))
    _atomic_write_text(map_path, yaml.safe_dump(zigzag_mapping(spec), sort_keys=False))
    layers = [zigzag_layer(w, spec, i) for i, w in enumerate(workloads)]
    return layers, hw_path, map_path
