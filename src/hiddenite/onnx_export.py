"""ONNX export of a hidden network as the plain dense model it computes.

Every supermask layer becomes an ordinary convolution / linear layer holding
``weight * mask`` (:func:`hiddenite.to_dense`), so any ONNX runtime runs the file without
hiddenite. The graph takes one float32 input ``input`` of shape (batch, C, H, W), the batch
dimension dynamic, and returns ``logits`` of shape (batch, classes).

Activation quantizers (:mod:`hiddenite.quant`) are exported with their layer: each frozen
input quantizer becomes ``Mul(Clip(Round(Div(x, scale)), qmin, qmax), scale)`` in front of the
layer's ``Conv`` / ``MatMul`` / ``Gemm``, any bit width, signed or unsigned (the zero point is
0). ONNX ``Div``, ``Round`` (half to even, as ``torch.round``), ``Clip`` and ``Mul`` are the
float32 operations :func:`hiddenite.quant.fake_quantize` performs, so onnxruntime quantizes
bit for bit as torch does on the same input. The matrix products are not bit for bit (their
summation order differs, about 1 ulp), so the outputs of a model agree to float32 rounding,
except where a value lies within that rounding of a quantizer's decision boundary.
A quantizer that is still observing (not calibrated) is refused with a ``UserError``.
(``QuantizeLinear`` / ``DequantizeLinear`` would not do: at opset 17 they know 8-bit codes only,
and int8 clips to -128..127 where a signed quantizer's codes are symmetric, -127..127.)

Operators (:mod:`hiddenite.ops`): ONNX has exact float products only. A model one of whose
layers computes, in inference, with an operator whose declared datapath is not exact (e.g.
``mitchell``, the logarithmic multiplier) is refused with a ``UserError`` naming the first such
layer, unless ``exact_operators=True`` (CLI ``export --onnx PATH --exact-operators``): then the
file holds the exact-multiplier network, on purpose, and :class:`OnnxExport` says which layers
were changed.

The TorchScript-based exporter (``dynamo=False``) is used: it needs no extra package and no
network; torch's newer exporter needs ``onnxscript``. It inlines the quantizer's
``autograd.Function`` into the ONNX operations above.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write_bytes
from .convert import to_dense
from .errors import UserError
from .ops import OperatorChoice, operator_choices, set_operator_choices_
from .quant import input_quantizers

DEFAULT_OPSET = 17

__all__ = ["DEFAULT_OPSET", "OnnxExport", "check_exportable", "export_onnx", "onnx_bytes"]


@dataclass(frozen=True)
class OnnxExport:
    """What an ONNX file holds beyond the plain dense layers.

    size: the file's bytes. quantizers: ``(layer, bits, signed)`` of every activation
    quantizer exported in front of its layer. exact_in_place_of: ``(layer, operator)`` of every
    layer whose inference operator was approximate and is exported with exact products
    (``exact_operators=True``).
    """

    size: int
    quantizers: tuple[tuple[str, int, bool], ...] = ()
    exact_in_place_of: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """One clause for the CLI's success line ("" for a plain float model)."""
        parts = []
        if self.quantizers:
            bits = "/".join(str(b) for b in sorted({b for _, b, _ in self.quantizers}))
            n = len(self.quantizers)
            parts.append(f"activation quantizers: {n} layer{'s' * (n != 1)} at {bits} bits")
        if self.exact_in_place_of:
            ops = "/".join(sorted({op for _, op in self.exact_in_place_of}))
            n = len(self.exact_in_place_of)
            parts.append(
                f"exact products in place of {ops} on {n} layer{'s' * (n != 1)} (--exact-operators)"
            )
        return "; ".join(parts)


def _approximate_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, operator)`` for every layer whose inference operator's datapath is not exact,
    in ``named_modules`` order."""
    out = []
    for name, choice in operator_choices(model).items():
        op = choice.for_phase(training=False)
        if op.datapath != "exact":
            out.append((name, op.name))
    return out


def check_exportable(model: nn.Module, exact_operators: bool = False) -> None:
    """``UserError`` unless :func:`onnx_bytes` can export ``model``: every inference operator
    exact (or ``exact_operators``) and every activation quantizer calibrated."""
    _checked(model, exact_operators)


def _checked(model: nn.Module, exact_operators: bool) -> list[tuple[str, str]]:
    """The checks of :func:`check_exportable`; returns the approximate layers."""
    approximate = _approximate_layers(model)
    if approximate and not exact_operators:
        layer, op = approximate[0]
        raise UserError(
            f"layer {layer!r} multiplies with the {op!r} operator in inference"
            f"{f' (and {len(approximate) - 1} more layers)' if len(approximate) > 1 else ''}, "
            "which ONNX cannot express; pass exact_operators=True (CLI: --exact-operators) to "
            "export the exact-multiplier network instead"
        )
    quantized = input_quantizers(model)
    for layer, q in quantized:
        if not q.frozen:
            raise UserError(
                f"the activation quantizer of layer {layer!r} is still observing (not "
                "calibrated); run hiddenite.quant.calibrate(model, batches) before exporting"
            )
    return approximate


def _dense_for_onnx(model: nn.Module, exact_operators: bool) -> tuple[nn.Module, OnnxExport]:
    """``to_dense(model)`` in eval mode on the CPU, its input quantizers in place and every
    operator exact; and what it holds (``size`` 0)."""
    approximate = _checked(model, exact_operators)
    quantized = input_quantizers(model)
    dense = to_dense(model).to("cpu").eval()  # keeps each layer's quantizer and operator
    exported = [(layer, q.bits, q.bounds[0] < 0) for layer, q in input_quantizers(dense)]
    if [e[0] for e in exported] != [layer for layer, _ in quantized]:
        raise RuntimeError(
            f"onnx export: the dense copy's quantized layers {[e[0] for e in exported]} differ "
            f"from the model's {[layer for layer, _ in quantized]}"
        )
    # plain layers keep their operator through the copy: make every one exact (the default)
    set_operator_choices_(dense, {name: OperatorChoice() for name in operator_choices(dense)})
    return dense, OnnxExport(0, tuple(exported), tuple(approximate))


def _export(
    model: nn.Module, input_shape: tuple[int, ...], opset: int, exact_operators: bool
) -> tuple[bytes, OnnxExport]:
    dense, info = _dense_for_onnx(model, exact_operators)
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            dense,
            (example,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            autograd_inlining=True,  # the quantizers' fake_quantize as Div/Round/Clip/Mul
        )
    data = buf.getvalue()
    return data, OnnxExport(len(data), info.quantizers, info.exact_in_place_of)


def onnx_bytes(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    opset: int = DEFAULT_OPSET,
    exact_operators: bool = False,
) -> bytes:
    """The ONNX model (bytes) of ``to_dense(model)`` in eval mode with its activation
    quantizers, input (batch, *input_shape).

    ``UserError`` for a layer whose inference operator is approximate (unless
    ``exact_operators``: exported with exact products) and for an uncalibrated quantizer.
    """
    return _export(model, input_shape, opset, exact_operators)[0]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    *,
    opset: int = DEFAULT_OPSET,
    exact_operators: bool = False,
) -> OnnxExport:
    """Write :func:`onnx_bytes` to ``path`` atomically; returns what the file holds (its
    ``size`` in bytes, the exported quantizers, the layers made exact)."""
    data, info = _export(model, input_shape, opset, exact_operators)
    atomic_write_bytes(Path(path), data)
    return info
