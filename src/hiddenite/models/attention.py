"""Binarized squeeze-and-excitation (SE) attention: every channel on or off, per input.

Seed 004 (Yamauchi et al., JSPS 21K11818; Wu and Yamauchi 2024) prunes channels per input
with an SE block whose excitation is *binarized*: the channels it switches off are zero, so
a computing-in-memory macro never computes them (:mod:`hiddenite.hw.cim`). Here:

``BinarySE(channels, reduction)``: squeeze ``z = mean_{h,w} x`` (B x C), excitation
``e = fc2(relu(fc1(z)))`` (C -> C / reduction -> C, ``fc2`` with a bias), gate
``g = 1[e > 0]`` (a hard threshold of ``sigmoid(e)`` at 0.5) and output ``x * g``.

Straight-through estimator (the *sigmoid STE*): the forward pass uses the hard gate, the
backward pass the derivative of the soft gate ``sigmoid(e)``, i.e.
``g = hard + (sigmoid(e) - sigmoid(e).detach())`` (exactly ``hard`` in value, since
``s - s.detach()`` is 0; ``dg/de = sigmoid(e) (1 - sigmoid(e))``). Unlike the identity STE
(``dg/de = 1``) the gradient fades for logits far from the threshold, so a decided channel
is stable; unlike a clipped STE it is never exactly zero, so no channel is stuck.

The gate is its own submodule (:class:`BinaryGate`), whose output is the B x C 0/1 gate: a
forward hook on it records which channels each input switched off, without any state kept
on the module (:func:`channel_off_fraction`).

Models (zoo names in :mod:`hiddenite.models`): ``resnet14`` (CIFAR-style, three stages of two
basic blocks, 16/32/64 channels: 1 + 3 x 2 x 2 + 1 = 14 weight layers, the compact ResNet-14
of the seed), ``se-resnet14`` (an SE block in every basic block) and ``se-conv2/4/6/8`` (an SE
block after every convolution of the Conv-n nets).

Placement (``se_position``): ``"mid"`` (default) gates the block's intermediate feature map,
between its two 3x3 convolutions, so a switched-off channel is an all-zero *input channel* of
the second convolution (what a CIM macro can power down); ``"post"`` is the classic SE-ResNet
(Hu et al., CVPR 2018): the gate scales the residual branch before the sum with the shortcut,
where the zeros are lost in the sum (the channel-off statistic is the same kind of number, but
the next layer's inputs are not zero).

Binarized mode (``binary=True``, "as in the seed", which assumes 1-bit networks): the inputs
of the blocks' convolutions (``se-resnet14``; the block input goes through a batch norm first,
XNOR-Net's order, since it is non-negative after the ReLU) or of every convolution after the
first (``se-conv``) are binarized by ``sign`` with the clipped straight-through estimator of
BinaryConnect / XNOR-Net (``d sign(x)/dx := 1[|x| <= 1]``; ``sign(0) := +1``); the gate is
applied after the binarization, so an off channel stays exactly zero (ternary {-1, 0, +1}
inputs). The stem convolution, the 1x1 shortcuts and the classifier keep real inputs (usual
BNN practice). 1-bit *weights* come from the ``binarized`` supermask method (the one seam for
weight binarization): ``create("se-resnet14", SupermaskConfig(method="binarized"),
binary=True)`` is the fully binarized network; hidden (``edge-popup``) and dense conversions
work the same way. The SE layers are ordinary ``nn.Linear`` layers, so :func:`supermask_`
converts them with the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .resnet import BasicBlock, ResNet, _bn
from .small import ConvNet

__all__ = [
    "SE_POSITIONS",
    "BinaryGate",
    "BinarySE",
    "SEBasicBlock",
    "SEConvNet",
    "SignActivation",
    "channel_off_fraction",
    "gate_records",
    "se_resnet",
]

SE_POSITIONS = ("mid", "post")


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class SignActivation(nn.Module):
    """``sign(x)`` in {-1, +1} (``sign(0) := +1``) with the clipped STE ``1[|x| <= 1]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(x)


class BinaryGate(nn.Module):
    """Hard 0/1 gate of excitation logits with the sigmoid straight-through gradient."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(logits)
        hard = (logits > 0).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly hard in value


class BinarySE(nn.Module):
    """Squeeze-and-excitation with a binarized excitation: ``x * g``, ``g`` in {0, 1}^(B x C)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be an integer >= 1, got {reduction!r}")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=True)
        self.gate = BinaryGate()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The B x C gate of ``x`` (B x C x H x W or B x C)."""
        z = x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x
        return self.gate(self.fc2(self.relu(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)
        return x * g.reshape(*g.shape, *([1] * (x.ndim - 2)))


def _activation(binary: bool) -> nn.Module:
    return SignActivation() if binary else nn.ReLU(inplace=True)


class SEBasicBlock(BasicBlock):
    """A ResNet basic block with a :class:`BinarySE` (placement ``position``, see the module
    docstring) and optionally binarized convolution inputs."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        affine: bool,
        *,
        reduction: int = 4,
        binary: bool = False,
        position: str = "mid",
    ) -> None:
        super().__init__(in_planes, planes, stride, affine)
        if position not in SE_POSITIONS:
            raise ValueError(f"se_position must be one of {SE_POSITIONS}, got {position!r}")
        if not isinstance(binary, bool):
            raise ValueError(f"binary must be true or false, got {binary!r}")
        self.position = position
        self.binary = binary
        self.se = BinarySE(planes, reduction)
        # XNOR-Net order, batch norm then sign: the block input is non-negative (after ReLU),
        # and sign of a non-negative tensor is all +1
        self.act_in = (
            nn.Sequential(_bn(in_planes, affine), SignActivation()) if binary else (nn.Identity())
        )
        self.act_mid = _activation(binary)

    def branch(self, x, norms: Sequence[nn.Module]):
        out = self.act_mid(norms[0](self.conv1(self.act_in(x))))
        if self.position == "mid":
            return norms[1](self.conv2(self.se(out)))
        return self.se(norms[1](self.conv2(out)))


def se_resnet(
    *,
    in_channels: int,
    num_classes: int,
    bn_affine: bool,
    width: float,
    reduction: int,
    binary: bool,
    se_position: str,
    blocks: tuple[int, ...] = (2, 2, 2),
    planes: tuple[int, ...] = (16, 32, 64),
) -> ResNet:
    """A CIFAR-style ResNet (default: ResNet-14, three stages of two blocks) of
    :class:`SEBasicBlock`."""
    block = functools.partial(
        SEBasicBlock, reduction=reduction, binary=binary, position=se_position
    )
    block.expansion = 1  # what ResNet reads from a block type
    return ResNet(
        block,
        blocks,
        planes,
        in_channels=in_channels,
        num_classes=num_classes,
        imagenet_stem=False,
        bn_affine=bn_affine,
        width=width,
    )


class SEConvNet(ConvNet):
    """Conv-2/4/6/8 with a :class:`BinarySE` after every convolution's activation
    (``binary``: ``sign`` instead of ReLU after every convolution but the last, whose output
    feeds the real-valued classifier)."""

    def __init__(
        self,
        plan: tuple,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        width: float = 1.0,
        reduction: int = 4,
        binary: bool = False,
    ) -> None:
        super().__init__(plan, in_channels, image_size, num_classes, width)
        if not isinstance(binary, bool):
            raise ValueError(f"binary must be true or false, got {binary!r}")
        layers: list[nn.Module] = []
        convs = sum(isinstance(m, nn.Conv2d) for m in self.features)
        seen, channels = 0, in_channels
        for m in self.features:
            if isinstance(m, nn.ReLU):
                last = seen == convs
                layers += [_activation(binary and not last), BinarySE(channels, reduction)]
                continue
            if isinstance(m, nn.Conv2d):
                seen += 1
                channels = m.out_channels
            layers.append(m)
        self.features = nn.Sequential(*layers)


def gate_records(model: nn.Module) -> list[tuple[str, BinarySE]]:
    """The model's SE blocks as ``(qualified name, module)`` in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinarySE)]


def _inputs(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError("channel_off_fraction: the loader must yield tensors or (inputs, ...) tuples")


def channel_off_fraction(
    model: nn.Module, loader: Iterable, *, max_batches: int | None = None
) -> dict[str, float]:
    """Per SE block (by qualified name, module order): the fraction of its channels switched
    off, averaged over every input the ``loader`` yields (tensors or ``(inputs, labels)``
    batches). Runs the model in eval mode without gradients; restores its mode."""
    blocks = gate_records(model)
    if not blocks:
        raise ValueError("channel_off_fraction: the model has no BinarySE block")
    off = {name: 0.0 for name, _ in blocks}
    total = {name: 0 for name, _ in blocks}

    def hook_for(name: str):
        def hook(_mod, _inputs, gate):
            off[name] += float((gate == 0).sum())
            total[name] += gate.numel()

        return hook

    handles = [se.gate.register_forward_hook(hook_for(name)) for name, se in blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                model(_inputs(batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not any(total.values()):
        raise ValueError("channel_off_fraction: the loader yielded no input")
    return {name: off[name] / total[name] if total[name] else float("nan") for name in off}
