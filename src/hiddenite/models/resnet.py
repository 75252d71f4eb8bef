"""ResNets: CIFAR-style ResNet-18/20 (any small input) and ImageNet-style ResNet-18/50.

Batch norm is non-affine by default (``bn_affine=False``), as in the edge-popup recipe for
hidden ResNets: no learned scale or shift, only running statistics. Convolutions have no
bias. Shortcuts that change shape use a 1x1 convolution and batch norm (option B).
"""

from __future__ import annotations

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

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


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

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet with a CIFAR stem (3x3, stride 1) or an ImageNet stem (7x7/2 + max-pool)."""

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
    ) -> None:
        super().__init__()
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
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(block(in_planes, p, stride, bn_affine))
                in_planes = p * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes, bias=False)

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(x.flatten(1))
