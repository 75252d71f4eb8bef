"""ProgressiveNN on whole networks: convert a trained model, sweep its precision, write results.

The method itself (digit planes, per-precision statistics, the :func:`precision` context
manager, :func:`recalibrate_bn`, :func:`retrain_bn`) is :mod:`hiddenite.methods.progressive`;
this module adds what needs the conversion machinery and the hardware model:

- :func:`to_progressive`: a converted copy of any trained network (plain, a dense twin, or a
  hidden network, whose *effective* weights are taken) with every conv/linear layer a
  ``progressive`` layer holding N {-1,+1} digits per weight;
- :func:`as_progressive`: the model itself (a copy) when it already holds progressive layers
  (trained with ``--method progressive``, e.g. at any precision), else :func:`to_progressive`;
- :func:`tune`: a copy with per-precision statistics recalibrated on training data and,
  optionally, only the per-precision batch-norm gamma/beta retrained at each precision;
- :func:`sweep`: test accuracy at every precision, with and without per-precision
  statistics recalibrated on training data (and retrained batch norm), the relative compute
  ``n / N`` of a bit-serial PE and the modelled energy per inference from :mod:`hiddenite.hw`;
- :func:`write_sweep`: CSV, JSON and a PNG plot, each written atomically.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write, atomic_write_text
from .convert import SupermaskConfig, supermask_, to_dense
from .data import Dataset, iterate_batches
from .errors import ConfigError
from .hw import estimate
from .hw.workload import at_precision, workloads_from_module
from .layers import SupermaskLayer
from .methods.progressive import (
    ProgressiveConfig,
    precision,
    progressive_layers,
    recalibrate_bn,
    retrain_bn,
)
from .train import evaluate

__all__ = [
    "ProgressiveConfig",
    "as_progressive",
    "precision",
    "recalibrate_bn",
    "sweep",
    "to_progressive",
    "tune",
    "write_sweep",
]


def to_progressive(model: nn.Module, config: ProgressiveConfig | int = 8) -> nn.Module:
    """A copy of the trained ``model`` whose conv/linear layers are ``progressive`` layers.

    ``config``: a :class:`ProgressiveConfig` or N (bits). Each layer's latent weight is the
    trained effective weight (``to_dense`` of a hidden network), so at N bits the copy is the
    N-bit quantized network; biases, batch norms and everything else are copied unchanged.
    """
    if isinstance(config, int) and not isinstance(config, bool):
        config = ProgressiveConfig(bits=config)
    if not isinstance(config, ProgressiveConfig):
        raise ConfigError(f"to_progressive: expected a ProgressiveConfig or bits, got {config!r}")
    has_supermask = any(isinstance(m, SupermaskLayer) for m in model.modules())
    out = to_dense(model) if has_supermask else copy.deepcopy(model)
    trained = {
        name: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
        for name, m in out.named_modules()
        if type(m) in (nn.Conv2d, nn.Linear)
    }
    cfg = SupermaskConfig(method=config, density=1.0, scale_by_density=False)
    supermask_(out, cfg, init_state=False)
    with torch.no_grad():
        for name, layer in progressive_layers(out):
            weight, bias = trained[name]
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
    return out.eval()


def as_progressive(model: nn.Module, config: ProgressiveConfig) -> nn.Module:
    """A copy of ``model`` as it is when it already holds progressive layers (their digits,
    per-precision statistics and config are kept; ``config`` is not used), else
    :func:`to_progressive` with ``config``."""
    if progressive_layers(model):
        return copy.deepcopy(model).eval()
    return to_progressive(model, config)


def tune(
    model: nn.Module,
    calibration: Dataset,
    bits: Sequence[int],
    *,
    retrain_epochs: int = 0,
    lr: float = 1e-2,
    calibration_batches: int | None = None,
    batch_size: int = 500,
) -> nn.Module:
    """A copy of the progressive ``model`` with the per-precision statistics of ``bits``
    recalibrated on ``calibration`` (training data, in order) and, with ``retrain_epochs``,
    then only the per-precision batch-norm gamma/beta of each n in ``bits`` retrained for
    that many epochs (:func:`~hiddenite.methods.progressive.retrain_bn`; the layers need
    ``affine=True``)."""
    if isinstance(retrain_epochs, bool) or not isinstance(retrain_epochs, int):
        raise ConfigError(f"retrain epochs must be an integer >= 0, got {retrain_epochs!r}")
    if retrain_epochs < 0:
        raise ConfigError(f"retrain epochs must be an integer >= 0, got {retrain_epochs}")
    out = copy.deepcopy(model)
    batches = list(
        iterate_batches(calibration, batch_size, shuffle=False, generator=None, augment=False)
    )
    recalibrate_bn(out, [x for x, _ in batches], bits, max_batches=calibration_batches)
    if retrain_epochs:
        for n in sorted(set(bits)):
            retrain_bn(
                out, batches, n, epochs=retrain_epochs, lr=lr, max_batches=calibration_batches
            )
    return out.eval()


def _accuracy(model: nn.Module, dataset: Dataset, batch_size: int, device) -> float:
    return evaluate(model, dataset, batch_size, device)["accuracy"]


def sweep(
    model: nn.Module,
    test: Dataset,
    bits: Sequence[int] | None = None,
    *,
    calibration: Dataset | None = None,
    calibration_batches: int | None = None,
    retrain_epochs: int = 0,
    retrain_lr: float = 1e-2,
    batch_size: int = 500,
    arch: str = "hiddenite",
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """One row per precision n: ``bits``, ``accuracy`` (stored statistics, as converted or
    trained), ``accuracy_recalibrated`` (per-precision statistics measured on
    ``calibration``; None without it), ``accuracy_retrained`` (recalibrated, then only the
    per-precision batch-norm gamma/beta retrained ``retrain_epochs`` on ``calibration``, see
    :func:`tune`; None without it), ``relative_compute`` (n / N: digits accumulated by a
    bit-serial PE) and ``energy_pj`` (modelled energy of one inference on ``arch``, batch 1).

    ``model`` must hold progressive layers (see :func:`to_progressive`); it is not changed.
    """
    found = progressive_layers(model)
    if not found:
        raise ConfigError("sweep: the model has no progressive layers; use to_progressive first")
    top = max(layer.method_config.bits for _, layer in found)
    bits = list(range(1, top + 1)) if bits is None else sorted(set(bits))
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= top:
            raise ConfigError(f"--bits: {b!r} is outside 1..{top} (the stored N)")
    shape = (1, test.in_channels, test.image_size, test.image_size)
    workloads = workloads_from_module(model, shape)
    if retrain_epochs and calibration is None:
        raise ConfigError("sweep: retraining batch norm needs calibration (training) data")
    plain = copy.deepcopy(model)
    variants: dict[str, nn.Module] = {}
    if calibration is not None:
        options = {"calibration_batches": calibration_batches, "batch_size": batch_size}
        variants["recalibrated"] = tune(model, calibration, bits, **options)
        if retrain_epochs:
            variants["retrained"] = tune(
                model, calibration, bits, retrain_epochs=retrain_epochs, lr=retrain_lr, **options
            )
    rows = []
    for n in bits:
        with precision(plain, n):
            acc = _accuracy(plain, test, batch_size, device)
        tuned: dict[str, float | None] = {"recalibrated": None, "retrained": None}
        for key, net in variants.items():
            with precision(net, n):
                tuned[key] = _accuracy(net, test, batch_size, device)
        report = estimate(at_precision(workloads, n), arch)
        rows.append(
            {
                "bits": n,
                "accuracy": acc,
                "accuracy_recalibrated": tuned["recalibrated"],
                "accuracy_retrained": tuned["retrained"],
                "relative_compute": n / top,
                "energy_pj": report.totals["energy_pj"],
                "energy_compute_pj": sum(r.energy_compute_pj for r in report.rows),
            }
        )
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain text table (a ``retrained`` column when batch norm was retrained)."""
    retrained = any(r.get("accuracy_retrained") is not None for r in rows)
    head = f"{'bits':>4}  {'accuracy':>9}  {'recalibrated':>12}  "
    head += f"{'retrained':>10}  " if retrained else ""
    lines = [head + f"{'compute':>8}  {'energy/inf':>11}"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    for r in rows:
        line = f"{r['bits']:>4}  {100 * r['accuracy']:>7.2f} %  "
        line += f"{pct(r['accuracy_recalibrated']):>12}  "
        line += f"{pct(r.get('accuracy_retrained')):>10}  " if retrained else ""
        lines.append(line + f"{r['relative_compute']:>8.3f}  {r['energy_pj'] / 1e6:>8.3f} uJ")
    return "\n".join(lines)


def write_sweep(
    rows: list[dict[str, Any]], out_dir: str | os.PathLike, title: str = ""
) -> list[str]:
    """``progressive.csv``, ``progressive.json`` and ``progressive.png`` in ``out_dir``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "progressive.csv", buf.getvalue())
    atomic_write_text(out / "progressive.json", json.dumps(rows, indent=2) + "\n")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r["bits"] for r in rows]
    ax.plot(xs, [100 * r["accuracy"] for r in rows], "o-", label="accuracy (stored statistics)")
    if rows[0]["accuracy_recalibrated"] is not None:
        ys = [100 * r["accuracy_recalibrated"] for r in rows]
        ax.plot(xs, ys, "s-", label="accuracy (recalibrated)")
    if rows[0].get("accuracy_retrained") is not None:
        ys = [100 * r["accuracy_retrained"] for r in rows]
        ax.plot(xs, ys, "^-", label="accuracy (batch norm retrained)")
    ax.set_xlabel("bits (digits accumulated, MSB first)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(xs)
    right = ax.twinx()
    right.plot(xs, [r["relative_compute"] for r in rows], "k--", label="relative compute")
    right.set_ylabel("relative compute (n / N)")
    right.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "ProgressiveNN: accuracy and compute against precision")
    atomic_write(out / "progressive.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return [str(out / f"progressive.{ext}") for ext in ("csv", "json", "png")]
