"""ONNX export of a hidden network as the plain dense model it computes.

Every supermask layer becomes an ordinary convolution / linear layer holding
``weight * mask`` (:func:`hiddenite.to_dense`), so any ONNX runtime runs the file without
hiddenite. The graph takes one float32 input ``input`` of shape (batch, C, H, W), the batch
dimension dynamic, and returns ``logits`` of shape (batch, classes).

The TorchScript-based exporter (``dynamo=False``) is used: it needs no extra package and no
network; torch's newer exporter needs ``onnxscript``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write_bytes
from .convert import to_dense

DEFAULT_OPSET = 17

__all__ = ["DEFAULT_OPSET", "export_onnx", "onnx_bytes"]


def onnx_bytes(
    model: nn.Module, input_shape: tuple[int, ...], *, opset: int = DEFAULT_OPSET
) -> bytes:
    """The ONNX model (bytes) of ``to_dense(model)`` in eval mode, input (batch, *input_shape)."""
    dense = to_dense(model).to("cpu").eval()
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
        )
    return buf.getvalue()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    *,
    opset: int = DEFAULT_OPSET,
) -> int:
    """Write the ONNX model of ``to_dense(model)`` to ``path`` atomically; returns its bytes."""
    data = onnx_bytes(model, input_shape, opset=opset)
    atomic_write_bytes(Path(path), data)
    return len(data)
