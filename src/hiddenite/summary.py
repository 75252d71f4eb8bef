"""Per-layer size table, in the spirit of larq's ``summary``.

For every weight layer: its shape, weight count, density (kept fraction), learned bits and
the bytes the layer's model data takes as float32, INT8, a binarized network (1 bit per
weight) and a hidden network (1 mask bit per weight, packed; the weights come from the
seed). Per-channel parameters (batch norm statistics and affine terms, biases) are stored as
float32 by every format and are counted in each column. A dense-mode or plain layer stores
float32 weights even in the "hidden" column. The hidden total adds 8 bytes for the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from torch import nn

from .layers import SupermaskLayer
from .texttable import text_table

SEED_BYTES = 8

__all__ = ["LayerSize", "ModelSummary", "summary"]


@dataclass(frozen=True)
class LayerSize:
    """One row of the summary; byte columns are bytes, bits are bits."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    density: float
    learned_bits: int
    param_count: int
    float32_bytes: float
    int8_bytes: float
    binarized_bytes: float
    hidden_bytes: float


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
            "shape",
            "weights",
            "density",
            "learned bits",
            "float32 kB",
            "int8 kB",
            "binary kB",
            "hidden kB",
        )
        lines = []
        for r in self.rows:
            lines.append(
                (
                    r.name,
                    r.kind,
                    "x".join(map(str, r.shape)) or "-",
                    f"{r.weights:,}",
                    f"{r.density:.3f}" if r.weights else "-",
                    f"{r.learned_bits:,}",
                    f"{r.float32_bytes / 1e3:,.2f}",
                    f"{r.int8_bytes / 1e3:,.2f}",
                    f"{r.binarized_bytes / 1e3:,.2f}",
                    f"{r.hidden_bytes / 1e3:,.2f}",
                )
            )
        t = self.totals
        lines.append(
            (
                "total",
                "",
                "",
                f"{t['weights']:,}",
                f"{t['density']:.3f}",
                f"{t['learned_bits']:,}",
                f"{t['float32_bytes'] / 1e3:,.2f}",
                f"{t['int8_bytes'] / 1e3:,.2f}",
                f"{t['binarized_bytes'] / 1e3:,.2f}",
                f"{t['hidden_bytes'] / 1e3:,.2f}",
            )
        )
        out = [*text_table(head, lines[:-1], lines[-1], left=(0, 1, 2)), ""]
        out.append(
            f"compression vs float32: int8 {t['ratio_int8']:.1f}x, binarized "
            f"{t['ratio_binarized']:.1f}x, hidden {t['ratio_hidden']:.1f}x "
            f"(hidden = packed mask bits + float32 per-channel parameters + {SEED_BYTES}-byte seed)"
        )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _stored_tensors(module: nn.Module) -> int:
    """Per-channel values a module stores besides its weights (bias, BN stats and affine)."""
    count = sum(
        p.numel()
        for name, p in module.named_parameters(recurse=False)
        if name not in ("weight", "scores") or not isinstance(module, (nn.Conv2d, nn.Linear))
    )
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
        count += module.running_mean.numel() + module.running_var.numel()
    return count


def _row(name: str, module: nn.Module) -> LayerSize | None:
    extra = _stored_tensors(module)
    extra_bytes = 4.0 * extra
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        n = module.weight.numel()
        hidden = isinstance(module, SupermaskLayer) and module.hidden
        density = float(module.mask().mean()) if hidden else 1.0
        kind = type(module).__name__ + (" (hidden)" if hidden else "")
        return LayerSize(
            name=name,
            kind=kind,
            shape=tuple(module.weight.shape),
            weights=n,
            density=density,
            learned_bits=(n if hidden else 32 * n) + 32 * extra,
            param_count=extra,
            float32_bytes=4.0 * n + extra_bytes,
            int8_bytes=1.0 * n + extra_bytes,
            binarized_bytes=math.ceil(n / 8) + extra_bytes,
            hidden_bytes=(math.ceil(n / 8) if hidden else 4.0 * n) + extra_bytes,
        )
    if extra == 0:
        return None
    return LayerSize(
        name=name,
        kind=type(module).__name__,
        shape=(),
        weights=0,
        density=1.0,
        learned_bits=32 * extra,
        param_count=extra,
        float32_bytes=extra_bytes,
        int8_bytes=extra_bytes,
        binarized_bytes=extra_bytes,
        hidden_bytes=extra_bytes,
    )


def summary(model: nn.Module, print_fn=print) -> ModelSummary:
    """Per-layer sizes of ``model``; prints the table with ``print_fn`` (None: silent).

    Returns a :class:`ModelSummary` (``.rows``, ``.totals``, ``.to_json()``).
    """
    rows = tuple(row for name, module in model.named_modules() if (row := _row(name, module)))
    weights = sum(r.weights for r in rows)
    kept = sum(r.weights * r.density for r in rows)
    totals = {
        "layers": sum(1 for r in rows if r.weights),
        "weights": weights,
        "kept_weights": round(kept),
        "density": kept / weights if weights else 1.0,
        "learned_bits": sum(r.learned_bits for r in rows),
        "param_count": sum(r.param_count for r in rows),
        "float32_bytes": sum(r.float32_bytes for r in rows),
        "int8_bytes": sum(r.int8_bytes for r in rows),
        "binarized_bytes": sum(r.binarized_bytes for r in rows),
        "hidden_bytes": sum(r.hidden_bytes for r in rows) + SEED_BYTES,
    }
    for key in ("int8", "binarized", "hidden"):
        size = totals[f"{key}_bytes"]
        totals[f"ratio_{key}"] = totals["float32_bytes"] / size if size else math.inf
    result = ModelSummary(rows=rows, totals=totals)
    if print_fn is not None:
        print_fn(result.table())
    return result
