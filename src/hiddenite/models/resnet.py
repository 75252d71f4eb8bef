"""ResNets: CIFAR-style ResNet-18/20 (any small input) and ImageNet-style ResNet-18/50,
and their folded twins (Hidden-Fold Networks).

Batch norm is non-affine by default (``bn_affine=False``), as in the edge-popup recipe for
hidden ResNets: no learned scale or shift, only running statistics. Convolutions have no
bias. Shortcuts that change shape use a 1x1 convolution and batch norm (option B).

Folding (Lopez Garcia-Arias et al., "Hidden-Fold Networks", BMVC 2021): in each stage the
first block (the one that may change shape) stays; the other ``n - 1`` blocks become ONE
:class:`FoldedBlock` whose convolutions are applied ``iterations`` times, each time with
its own batch norms. The shared convolutions are registered once in the module tree, so a
conversion turns each into one supermask layer (one seed-derived weight tensor, one mask)
and the model file stores it once; the batch norms are per iteration (statistics, and the
affine terms with ``bn_affine``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _bn(channels: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes, affine)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes, affine)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), _bn(planes, affine)
            )

    def branch(self, x, norms: Sequence[nn.Module]):
        """The residual branch with batch norms ``norms`` (in place of ``bn1``, ``bn2``)."""
        out = self.relu(norms[0](self.conv1(x)))
        return norms[1](self.conv2(out))

    def forward(self, x):
        return self.relu(self.branch(x, (self.bn1, self.bn2)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, affine: bool) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = _bn(planes, affine)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes, affine)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = _bn(out_planes, affine)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), _bn(out_planes, affine)
            )

    def branch(self, x, norms: Sequence[nn.Module]):
        """The residual branch with batch norms ``norms`` (in place of ``bn1``..``bn3``)."""
        out = self.relu(norms[0](self.conv1(x)))
        out = self.relu(norms[1](self.conv2(out)))
        return norms[2](self.conv3(out))

    def forward(self, x):
        return self.relu(self.branch(x, (self.bn1, self.bn2, self.bn3)) + self.shortcut(x))


_NORMS = {BasicBlock: ("bn1", "bn2"), Bottleneck: ("bn1", "bn2", "bn3")}


class FoldedBlock(nn.Module):
    """One shape-keeping residual block applied ``iterations`` times (Hidden-Fold Networks).

    Iteration ``i`` computes ``x = relu(branch_i(x) + x)``, where every ``branch_i`` uses the
    same convolutions (``conv1``, ``conv2`` [, ``conv3``], registered once) and its own batch
    norms ``bn1[i]``, ``bn2[i]`` [, ``bn3[i]``] (``nn.ModuleList``s, one entry per iteration).
    So it equals ``iterations`` unfolded blocks whose convolution weights are identical.
    Module order (hence supermask layer numbering) is that of ``block``: conv1, bn1, conv2, ...
    """

    def __init__(self, block: type[nn.Module], planes: int, iterations: int, affine: bool):
        super().__init__()
        if block not in _NORMS:
            raise ValueError(f"cannot fold {block.__name__}; foldable: BasicBlock, Bottleneck")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        self.block = block
        self.iterations = iterations
        template = block(planes * block.expansion, planes, 1, affine)  # identity shortcut
        for name, child in template.named_children():
            if name in _NORMS[block]:
                norms = [_bn(child.num_features, affine) for _ in range(iterations)]
                setattr(self, name, nn.ModuleList(norms))
            elif name != "shortcut":
                setattr(self, name, child)  # conv1, conv2 [, conv3], relu: shared

    def extra_repr(self) -> str:
        return f"block={self.block.__name__}, iterations={self.iterations}"

    def forward(self, x):
        for i in range(self.iterations):
            norms = [getattr(self, name)[i] for name in _NORMS[self.block]]
            # the block class's own branch code, run on this module's shared convolutions
            x = self.relu(self.block.branch(self, x, norms) + x)
        return x


class ResNet(nn.Module):
    """A ResNet with a CIFAR stem (3x3, stride 1) or an ImageNet stem (7x7/2 + max-pool).

    ``folded=True`` makes each stage its first block followed by one :class:`FoldedBlock`
    iterated ``iterations`` times (None: the stage's block count minus one, the depth of the
    unfolded net; a stage of one block then has no folded block). ``stages[s][0]`` is the
    stage's first block either way; ``stages[s][1]`` the folded block.
    """

    def __init__(
        self,
        block: type[nn.Module],
        blocks: tuple[int, ...],
        planes: tuple[int, ...],
        *,
        in_channels: int,
        num_classes: int,
        imagenet_stem: bool,
        bn_affine: bool,
        width: float = 1.0,
        folded: bool = False,
        iterations: int | None = None,
    ) -> None:
        super().__init__()
        if iterations is not None and not folded:
            raise ValueError("iterations is for a folded ResNet (folded=True)")
        planes = tuple(max(1, round(p * width)) for p in planes)
        stem = planes[0]
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False),
                _bn(stem, bn_affine),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
                _bn(stem, bn_affine),
                nn.ReLU(inplace=True),
            )
        stages = []
        in_planes = stem
        for stage, (count, p) in enumerate(zip(blocks, planes, strict=True)):
            layers = []
            stride = 2 if stage > 0 else 1
            if folded:
                layers.append(block(in_planes, p, stride, bn_affine))
                repeats = count - 1 if iterations is None else iterations
                if repeats or iterations is not None:  # iterations=0 is refused by the block
                    layers.append(FoldedBlock(block, p, repeats, bn_affine))
                in_planes = p * block.expansion
            else:
                for i in range(count):
                    layers.append(block(in_planes, p, stride if i == 0 else 1, bn_affine))
                    in_planes = p * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes, bias=False)

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(x.flatten(1))
