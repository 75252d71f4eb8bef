"""Per-layer size table, in the spirit of larq's ``summary``.

For every weight layer: its shape, weight count, method, density (the fraction of weights in
use), the parts its method stores (:mod:`hiddenite.methods`) coded exactly as the model file
codes them (:mod:`hiddenite.storage`), and the bytes the layer takes as float32, INT8, a
binarized network (1 bit per weight) and as stored here. Per-channel parameters (batch norm
statistics and affine terms, biases) are counted at float32 in every column. A plain
``nn.Conv2d``/``nn.Linear`` stores float32 weights. The stored total adds 8 bytes for the seed.
The ``part_bytes`` of a model equal the coded parts of its ``.hnn`` file with the same codec.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from torch import nn

from .convert import unwrap_model
from .layers import SupermaskLayer
from .storage import encode_layer
from .texttable import text_table

SEED_BYTES = 8

__all__ = ["LayerSize", "ModelSummary", "summary"]


@dataclass(frozen=True)
class PartSize:
    """One stored part of a layer: symbols over ``alphabet`` (None: floats), coded bytes."""

    name: str
    n: int
    alphabet: int | None
    codec: str | None
    bytes: int


@dataclass(frozen=True)
class LayerSize:
    """One row of the summary; byte columns are bytes."""

    name: str
    kind: str
    method: str | None
    shape: tuple[int, ...]
    weights: int
    density: float
    parts: tuple[PartSize, ...]
    part_bytes: int
    param_count: int
    float32_bytes: float
    int8_bytes: float
    binarized_bytes: float
    stored_bytes: float


@dataclass(frozen=True)
class ModelSummary:
    """The per-layer rows and the totals (``totals`` keys name their units)."""

    rows: tuple[LayerSize, ...]
    totals: dict

    def to_dict(self) -> dict:
        return {"layers": [asdict(row) for row in self.rows], "totals": dict(self.totals)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """The table as text, one line per layer, then totals and compression ratios."""
        head = (
            "layer",
            "kind",
            "method",
            "shape",
            "weights",
            "density",
            "parts",
            "part bytes",
            "float32 kB",
            "int8 kB",
            "binary kB",
            "stored kB",
        )
        lines = []
        for r in self.rows:
            parts = " ".join(f"{p.name}:{p.codec or 'float32'}" for p in r.parts)
            lines.append(
                (
                    r.name,
                    r.kind,
                    r.method or "-",
                    "x".join(map(str, r.shape)) or "-",
                    f"{r.weights:,}",
                    f"{r.density:.3f}" if r.weights else "-",
                    parts or "-",
                    f"{r.part_bytes:,}",
                    f"{r.float32_bytes / 1e3:,.2f}",
                    f"{r.int8_bytes / 1e3:,.2f}",
                    f"{r.binarized_bytes / 1e3:,.2f}",
                    f"{r.stored_bytes / 1e3:,.2f}",
                )
            )
        t = self.totals
        lines.append(
            (
                "total",
                "",
                "",
                "",
                f"{t['weights']:,}",
                f"{t['density']:.3f}",
                "",
                f"{t['part_bytes']:,}",
                f"{t['float32_bytes'] / 1e3:,.2f}",
                f"{t['int8_bytes'] / 1e3:,.2f}",
                f"{t['binarized_bytes'] / 1e3:,.2f}",
                f"{t['stored_bytes'] / 1e3:,.2f}",
            )
        )
        out = [*text_table(head, lines[:-1], lines[-1], left=(0, 1, 2, 3, 6)), ""]
        out.append(
            f"compression vs float32: int8 {t['ratio_int8']:.1f}x, binarized "
            f"{t['ratio_binarized']:.1f}x, stored {t['ratio_stored']:.1f}x "
            f"(stored = coded parts + float32 per-channel parameters + {SEED_BYTES}-byte seed)"
        )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _stored_tensors(module: nn.Module) -> int:
    """Per-channel values a module stores besides its weights and its method's parts."""
    owned: set[str] = {"weight"} if isinstance(module, (nn.Conv2d, nn.Linear)) else set()
    if isinstance(module, SupermaskLayer):
        owned |= set(module.method.owned_state(module))
    count = sum(
        p.numel() for name, p in module.named_parameters(recurse=False) if name not in owned
    )
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
        count += module.running_mean.numel() + module.running_var.numel()
    return count


def _row(name: str, module: nn.Module, codec: str | None) -> LayerSize | None:
    extra = _stored_tensors(module)
    extra_bytes = 4.0 * extra
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        n = module.weight.numel()
        if isinstance(module, SupermaskLayer):
            stored = encode_layer(module, codec)
            parts = tuple(
                PartSize(s.part.name, s.part.n, s.part.alphabet, s.codec, s.nbytes) for s in stored
            )
            density = float(module.support().float().mean()) if n else 1.0
            method = module.method.name
        else:
            parts = (PartSize("weight", n, None, None, 4 * n),)
            density, method = 1.0, None
        part_bytes = sum(p.bytes for p in parts)
        return LayerSize(
            name=name,
            kind=type(module).__name__,
            method=method,
            shape=tuple(module.weight.shape),
            weights=n,
            density=density,
            parts=parts,
            part_bytes=part_bytes,
            param_count=extra,
            float32_bytes=4.0 * n + extra_bytes,
            int8_bytes=1.0 * n + extra_bytes,
            binarized_bytes=math.ceil(n / 8) + extra_bytes,
            stored_bytes=part_bytes + extra_bytes,
        )
    if extra == 0:
        return None
    return LayerSize(
        name=name,
        kind=type(module).__name__,
        method=None,
        shape=(),
        weights=0,
        density=1.0,
        parts=(),
        part_bytes=0,
        param_count=extra,
        float32_bytes=extra_bytes,
        int8_bytes=extra_bytes,
        binarized_bytes=extra_bytes,
        stored_bytes=extra_bytes,
    )


def summary(model: nn.Module, print_fn=print, *, codec: str | None = None) -> ModelSummary:
    """Per-layer sizes of ``model``; prints the table with ``print_fn`` (None: silent).

    ``codec``: the mask codec for every symbol part, as :func:`hiddenite.save` takes it (None:
    the smallest per part). Returns a :class:`ModelSummary` (``.rows``, ``.totals``,
    ``.to_json()``).
    """
    model = unwrap_model(model)
    rows = tuple(
        row for name, module in model.named_modules() if (row := _row(name, module, codec))
    )
    weights = sum(r.weights for r in rows)
    used = sum(r.weights * r.density for r in rows)
    totals = {
        "layers": sum(1 for r in rows if r.weights),
        "weights": weights,
        "used_weights": round(used),
        "density": used / weights if weights else 1.0,
        "part_bytes": sum(r.part_bytes for r in rows),
        "param_count": sum(r.param_count for r in rows),
        "float32_bytes": sum(r.float32_bytes for r in rows),
        "int8_bytes": sum(r.int8_bytes for r in rows),
        "binarized_bytes": sum(r.binarized_bytes for r in rows),
        "stored_bytes": sum(r.stored_bytes for r in rows) + SEED_BYTES,
    }
    for key in ("int8", "binarized", "stored"):
        size = totals[f"{key}_bytes"]
        totals[f"ratio_{key}"] = totals["float32_bytes"] / size if size else math.inf
    result = ModelSummary(rows=rows, totals=totals)
    if print_fn is not None:
        print_fn(result.table())
    return result
