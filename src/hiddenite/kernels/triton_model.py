"""A whole hidden model run weight-free: its eligible layers swapped for packed kernels.

:func:`weight_free_` replaces, in place, every hidden ``Linear`` / ``Conv2d`` that the
kernels of :mod:`hiddenite.kernels.triton_linear` / :mod:`~hiddenite.kernels.triton_conv`
can compute by a :class:`WeightFreeLinear` / :class:`WeightFreeConv2d` holding only the lane
seeds, the mask (and sign) bits and the bias, so the model's frozen weights are dropped: once
nothing else refers to the old layers their memory is freed, and moving the model to CUDA
afterwards moves seeds and bits, never those weights::

    model = hiddenite.load("model.hnn").eval()
    swapped = weight_free_(model)        # names of the swapped layers
    model.cuda()                         # the swapped layers carry seeds + bits only
    y = model(x.cuda())                  # their products: the Triton kernel

A layer is swapped when the layer and its method declare it computable
(:func:`weight_free_problem` returns None): frozen weights (the method does not train them),
an init the kernel regenerates (:data:`~hiddenite.kernels.triton_linear.KERNEL_INITS`), a
method whose effective weight is the frozen weight times a factor
(:meth:`~hiddenite.methods.Method.weight_factor` is not None), an inference operator on the
``exact`` datapath, and for a convolution ``groups == 1``. Everything else is left as it was.

The swapped layers compute the eval-mode forward with no gradient (the inference path) from
the mask and bias the layer had when it was swapped: save the model before, since the swap
drops the learned scores. On a CPU input (or without triton) ``backend="auto"`` takes the
reference path, which regenerates a layer's weights for each call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..layers import SupermaskConv2d, SupermaskLinear, is_supermask
from ..ops import operator_choice
from .triton_conv import hidden_conv2d
from .triton_linear import (
    KERNEL_INITS,
    PackedLinear,
    check_backend,
    hidden_linear,
    packed_from_factor,
)

__all__ = ["WeightFreeConv2d", "WeightFreeLinear", "weight_free_", "weight_free_problem"]


class _WeightFree(nn.Module):
    """The packed layer as module buffers (so ``.to(device)`` moves seeds and bits)."""

    def __init__(self, packed: PackedLinear, backend: str, block_steps: int | None) -> None:
        super().__init__()
        check_backend(backend)
        self.spec = dict(packed.spec)
        self.lanes = packed.lanes
        self.steps = packed.steps
        self.scale = packed.scale
        self.backend = backend
        self.block_steps = block_steps
        # runtime state, not a model file's: the .hnn file of the original model is the record
        self.register_buffer("seeds", packed.seeds, persistent=False)
        self.register_buffer("mask_bits", packed.mask, persistent=False)
        self.register_buffer("invert_bits", packed.invert, persistent=False)
        self.register_buffer("bias", packed.bias, persistent=False)

    def packed(self) -> PackedLinear:
        """The :class:`~hiddenite.kernels.triton_linear.PackedLinear` the kernel reads."""
        return PackedLinear(
            self.spec,
            self.lanes,
            self.steps,
            self.scale,
            self.seeds,
            self.mask_bits,
            self.invert_bits,
            self.bias,
        )

    def extra_repr(self) -> str:
        spec = self.spec
        kept = "all kept" if self.mask_bits is None else "mask bits"
        signs = ", sign bits" if self.invert_bits is not None else ""
        return (
            f"shape={tuple(spec['shape'])}, init={spec['init']}, seed={spec['seed']}, "
            f"layer_index={spec['layer_index']}, lanes={self.lanes}, {kept}{signs}, "
            f"bias={self.bias is not None}, backend={self.backend}"
        )


class WeightFreeLinear(_WeightFree):
    """A hidden ``Linear`` that regenerates its weights inside the kernel at each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hidden_linear(x, self.packed(), backend=self.backend, block_steps=self.block_steps)


class WeightFreeConv2d(_WeightFree):
    """A hidden ``Conv2d`` (groups 1) that regenerates its weights inside the kernel."""

    def __init__(
        self,
        packed: PackedLinear,
        layer: nn.Conv2d,
        backend: str,
        block_steps: int | None,
    ) -> None:
        super().__init__(packed, backend, block_steps)
        self.stride = tuple(layer.stride)
        self.padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        self.dilation = tuple(layer.dilation)
        self.padding_mode = layer.padding_mode
        self.mode_padding = tuple(layer._reversed_padding_repeated_twice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad with the mode, then convolve
            x, padding = F.pad(x, self.mode_padding, mode=self.padding_mode), 0
        return hidden_conv2d(
            self.packed(),
            x,
            self.stride,
            padding,
            self.dilation,
            backend=self.backend,
            block_steps=self.block_steps,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, padding_mode={self.padding_mode}"
        )


def _eligibility(module: nn.Module) -> tuple[str | None, torch.Tensor | None]:
    """(why ``module`` cannot run weight-free or None, the method's weight factor)."""
    if not isinstance(module, SupermaskLinear | SupermaskConv2d):
        return "it is not a hidden Linear or Conv2d", None
    if module.trains_weights:
        return "its method trains the weights (stored, not regenerated)", None
    if module.init not in KERNEL_INITS:
        return f"the kernel does not regenerate {module.init!r} weights", None
    if isinstance(module, SupermaskConv2d) and module.groups != 1:
        return f"it is a grouped convolution (groups={module.groups})", None
    if module.weight.device.type == "meta":
        return "it has no memory yet (meta device): materialize the model first", None
    operator = operator_choice(module).for_phase(False)
    if operator.datapath != "exact":
        return f"its inference operator {operator.name!r} does not compute exact products", None
    factor = module.method.weight_factor(module)
    if factor is None:
        return "its method's effective weight is not the frozen weight times a mask", None
    return None, factor


def weight_free_problem(module: nn.Module) -> str | None:
    """Why :func:`weight_free_` leaves ``module`` as it is, or None when it swaps it."""
    return _eligibility(module)[0]


def weight_free_(
    model: nn.Module, *, backend: str = "auto", block_steps: int | None = None
) -> list[str]:
    """Swap every eligible hidden layer of ``model`` (in place) for its weight-free twin.

    Returns the qualified names of the swapped layers (a layer reachable under two names is
    swapped under both, for one twin). ``backend`` / ``block_steps``: as
    :func:`~hiddenite.kernels.triton_linear.hidden_linear`, for every swapped layer. The
    model itself must be a container: a lone hidden layer is packed with
    :func:`~hiddenite.kernels.triton_linear.pack_linear` /
    :func:`~hiddenite.kernels.triton_conv.pack_conv2d` instead."""
    check_backend(backend)
    if is_supermask(model):
        raise UserError(
            "weight_free_ swaps the layers inside a model and cannot replace the model itself; "
            "wrap the layer (nn.Sequential(layer)) or pack it with pack_linear / pack_conv2d"
        )
    twins: dict[int, nn.Module] = {}
    swapped = []
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name:
            continue
        twin = twins.get(id(module))
        if twin is None:
            problem, factor = _eligibility(module)
            if problem is not None:
                continue
            with torch.no_grad():
                packed = packed_from_factor(module, factor)
            if isinstance(module, SupermaskConv2d):
                twin = WeightFreeConv2d(packed, module, backend, block_steps)
            else:
                twin = WeightFreeLinear(packed, backend, block_steps)
            twins[id(module)] = twin
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, twin)
        swapped.append(name)
    return swapped
