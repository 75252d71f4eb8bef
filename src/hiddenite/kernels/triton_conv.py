"""The hidden ``Conv2d`` forward without its weights in memory (Triton, implicit GEMM).

A convolution is a matrix product: the weight ``(out, in, kh, kw)`` flattened row-major is the
``out x (in * kh * kw)`` matrix whose flat index is exactly the index the multi-lane Xorshift
of :mod:`hiddenite.prng` numbers the weights by, so the hidden-``Linear`` kernel of
:mod:`hiddenite.kernels.triton_linear` regenerates it unchanged. :func:`pack_conv2d` packs
the layer (lane seeds, mask and sign bits, bias; no weight) with
:func:`~hiddenite.kernels.triton_linear.pack_linear`, and :func:`hidden_conv2d` computes the
product of that matrix with the input's patches, one GEMM row per output pixel:

- by default with an *implicit-GEMM* kernel (``hidden_conv2d_kernel`` of
  :mod:`hiddenite.kernels._triton_impl`): the Linear kernel's weight generation, with each
  column ``c`` of a row decoded to (channel, kernel row, kernel column) and the input value
  gathered from the NCHW input (zero outside it, which is the padding), the partial sums
  added straight into the NCHW output; no patch buffer exists;
- with ``im2col=True``, through a patch buffer and the Linear kernel itself: a 1x1
  convolution without padding reads the channels-last view of the (strided) input, any other
  ``kh x kw`` ``F.unfold``'s columns (channel-major, then kernel row, then kernel column:
  the weight's own flat order), and the rows are folded back to ``(N, out, H_out, W_out)``.
  The buffer holds ``kh * kw`` copies of the input; the path is kept to compare against.

Grouped convolutions (``groups > 1``) are refused with a ``UserError``.

Backends as :func:`~hiddenite.kernels.triton_linear.hidden_linear`: ``"triton"`` (CUDA input,
or any input with ``TRITON_INTERPRET=1``), ``"reference"`` (regenerate the weights with
:func:`~hiddenite.init.frozen_weights`, times the factor, then ``F.conv2d``) and ``"auto"``.
This module imports without triton. The kernel's output is the float32 sum of the same
products as ``F.conv2d`` in another order: equal to float rounding, not bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..layers import SupermaskConv2d
from . import triton_linear
from .triton_linear import (
    PackedLinear,
    check_backend,
    hidden_linear,
    pack_linear,
    reference_weights,
    resolve_backend,
)

__all__ = ["conv_output_size", "gemm_rows", "hidden_conv2d", "pack_conv2d"]


def pack_conv2d(layer: SupermaskConv2d, device: torch.device | str | None = None) -> PackedLinear:
    """Pack a hidden ``Conv2d`` once (lane seeds and factor bits, no weights): its weight as
    the ``out x (in * kh * kw)`` matrix the linear kernel regenerates."""
    if not isinstance(layer, SupermaskConv2d):
        raise UserError(
            f"pack_conv2d takes a SupermaskConv2d, got {type(layer).__name__}; convert the "
            "model with hiddenite.supermask_ first"
        )
    if layer.groups != 1:
        raise UserError(
            f"layer {layer!r} has groups={layer.groups}; the weight-free convolution computes "
            "groups=1 only: use F.conv2d on layer.effective_weight()"
        )
    return pack_linear(layer, device)


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(f"{what} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of one spatial axis, as ``F.conv2d`` computes it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_geometry(stride, padding, dilation) -> tuple[tuple, tuple | str, tuple]:
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise UserError(f"stride and dilation must be >= 1, got {stride} and {dilation}")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise UserError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise UserError("padding='same' needs stride 1 (as F.conv2d); give the padding")
    else:
        padding = _pair(padding, "padding")
        if min(padding) < 0:
            raise UserError(f"padding must be >= 0, got {padding}")
    return stride, padding, dilation


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int]):
    """``x`` zero-padded as ``F.conv2d(padding='same')`` pads it (the odd one on the right)."""
    pads = []
    for k, d in zip(reversed(kernel), reversed(dilation), strict=True):  # F.pad: last dim first
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _output_size(x: torch.Tensor, kernel, stride, padding, dilation) -> tuple[int, int]:
    kh, kw = kernel
    h_out = conv_output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise UserError(
            f"the input's {x.shape[2]}x{x.shape[3]} pixels (padded by {padding}) are fewer "
            f"than the {kh}x{kw} kernel with dilation {dilation} spans"
        )
    return h_out, w_out


def gemm_rows(x: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """The GEMM rows of an ``(N, in, H, W)`` input: one row of ``in * kh * kw`` values per
    output pixel (batch-major, then output rows, then columns), in the weight's flat column
    order (channel, kernel row, kernel column); ints for the geometry."""
    if tuple(kernel) == (1, 1) and tuple(padding) == (0, 0):
        picked = x[:, :, :: stride[0], :: stride[1]]
        return picked.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    cols = F.unfold(x, tuple(kernel), dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _kernel_conv2d(
    x: torch.Tensor,
    packed: PackedLinear,
    stride: tuple[int, int],
    top_left: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
    block_steps: int | None,
) -> torch.Tensor:
    """The implicit-GEMM kernel's float32 ``(N, out, H_out, W_out)`` (no bias): the patches
    gathered inside the kernel, zero outside the input (``top_left``: the top and left
    padding; the bottom and right follow from ``out_size``)."""
    lin = triton_linear  # the launch geometry and arguments are the Linear kernel's
    device = x.device
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = packed.spec["shape"]
    rows = batch * out_size[0] * out_size[1]
    out = torch.zeros((batch, out_channels, *out_size), dtype=torch.float32, device=device)
    if rows == 0:
        return out
    lane_block, per_program, programs, nbits = lin._launch_shape(packed, block_steps)
    batch_block = 1 << (min(rows, lin._MAX_BATCH_BLOCK) - 1).bit_length()
    scale, mask, invert, flags = lin._kernel_args(packed, device, False)
    jumps = lin._jump_tensor(nbits, device)
    chunk = lin._MAX_BATCH_PROGRAMS * batch_block
    x = x.contiguous()
    for first in range(0, rows, chunk):
        count = min(chunk, rows - first)
        grid = (-(-packed.lanes // lane_block), programs, -(-count // batch_block))
        lin._impl().hidden_conv2d_kernel[grid](
            x,
            out,
            packed.seeds,
            jumps,
            scale,
            mask,
            invert,
            packed.n,
            packed.lanes,
            packed.in_features,
            out_channels,
            first,
            first + count,
            packed.steps,
            channels,
            height,
            width,
            out_size[0],
            out_size[1],
            stride[0],
            stride[1],
            top_left[0],
            top_left[1],
            dilation[0],
            dilation[1],
            KH=kh,
            KW=kw,
            NBITS=nbits,
            R=per_program,
            BL=lane_block,
            BB=batch_block,
            **flags,
        )
    return out


def hidden_conv2d(
    packed: PackedLinear,
    x: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    *,
    backend: str = "auto",
    block_steps: int | None = None,
    im2col: bool = False,
) -> torch.Tensor:
    """``F.conv2d(x, W * f, bias, stride, padding, dilation)`` without the weights in memory.

    ``packed`` comes from :func:`pack_conv2d`; ``x`` is ``(N, in, H, W)`` or unbatched
    ``(in, H, W)``; ``padding`` is ints or ``"same"`` / ``"valid"`` (zeros; a layer's other
    padding modes pad the input first). ``backend`` and ``block_steps`` as
    :func:`~hiddenite.kernels.triton_linear.hidden_linear`. The kernel gathers the input
    patches itself (implicit GEMM); ``im2col=True`` builds them with ``F.unfold`` (or takes a
    1x1's channels-last view) and runs the Linear kernel on them instead. No gradient
    flows."""
    check_backend(backend)
    if not isinstance(packed, PackedLinear) or len(packed.spec["shape"]) != 4:
        raise UserError(
            f"hidden_conv2d takes a convolution packed by pack_conv2d, got {type(packed).__name__}"
            + (f" of shape {packed.spec['shape']}" if isinstance(packed, PackedLinear) else "")
        )
    out_channels, in_channels, kh, kw = packed.spec["shape"]
    stride, padding, dilation = _check_geometry(stride, padding, dilation)
    if x.dim() not in (3, 4) or x.shape[-3] != in_channels:
        raise UserError(
            f"the input of shape {tuple(x.shape)} is not (N, {in_channels}, H, W) or "
            f"({in_channels}, H, W): the layer takes {in_channels} channels"
        )
    if x.dim() == 3:
        return hidden_conv2d(
            packed,
            x.unsqueeze(0),
            stride,
            padding,
            dilation,
            backend=backend,
            block_steps=block_steps,
            im2col=im2col,
        ).squeeze(0)
    backend = resolve_backend(backend, packed, x)
    top_left = padding
    if padding == "same":  # F.conv2d's split: the odd pixel on the bottom / right
        top_left = tuple(d * (k - 1) // 2 for k, d in zip((kh, kw), dilation, strict=True))
        if backend == "reference" or im2col:
            x, padding = _pad_same(x, (kh, kw), dilation), (0, 0)
    elif padding == "valid":
        padding = top_left = (0, 0)
    if padding == "same":
        out_size = (x.shape[2], x.shape[3])  # stride 1: the input's size
    else:
        out_size = _output_size(x, (kh, kw), stride, padding, dilation)
    with torch.no_grad():
        if backend == "reference":
            weights = reference_weights(packed, x.device).to(x.dtype)
            bias = None if packed.bias is None else packed.bias.to(x.dtype)
            return F.conv2d(x, weights, bias, stride, padding, dilation)
        if im2col:
            rows = gemm_rows(x, (kh, kw), stride, padding, dilation)
            y = hidden_linear(rows, packed, backend="triton", block_steps=block_steps)
            y = y.reshape(x.shape[0], *out_size, out_channels)
            return y.permute(0, 3, 1, 2).contiguous()
        triton_linear._check_kernel(packed, x)
        y = _kernel_conv2d(x, packed, stride, top_left, dilation, out_size, block_steps)
        y = y.to(x.dtype)
        if packed.bias is not None:
            y += packed.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return y
