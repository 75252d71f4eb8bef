"""Small models of the edge-popup papers: the MLP and the Conv-2/4/6/8 family.

Shapes follow Frankle & Carbin / Ramanujan et al.: 3x3 convolutions with padding 1, ReLU,
2x2 max-pooling after every pair, then two 256-unit fully connected layers; no batch norm
and no biases. The first fully connected layer's width adapts to the input size.

``batch_norm=True`` (the zoo's ``conv2-bn`` .. ``conv8-bn``) adds a batch norm after every
convolution and every hidden fully connected layer, before its ReLU (affine, as in the
quantized-network papers; the edge-popup Conv-n have none). It is off by default.
"""

from __future__ import annotations

from torch import nn

CONV_PLANS = {
    "conv2": (64, 64, "M"),
    "conv4": (64, 64, "M", 128, 128, "M"),
    "conv6": (64, 64, "M", 128, 128, "M", 256, 256, "M"),
    "conv8": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"),
}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class MLP(nn.Module):
    """784-300-100-10 (for 28x28x1) fully connected ReLU network without biases."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        hidden: tuple[int, ...] = (300, 100),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for units in hidden:
            layers += [nn.Linear(width, units, bias=False), nn.ReLU(inplace=True)]
            width = units
        layers.append(nn.Linear(width, num_classes, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvNet(nn.Module):
    """Conv-2/4/6/8: VGG-like blocks then 256-256-classes fully connected layers."""

    def __init__(
        self,
        plan: tuple,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        width: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                out = _scaled(item, width)
                layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=False))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU(inplace=True))
                channels = out
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(plan)} layers")
        self.features = nn.Sequential(*layers)
        fc = _scaled(256, width)
        head: list[nn.Module] = [nn.Flatten()]
        for width_in in (channels * size * size, fc):
            head.append(nn.Linear(width_in, fc, bias=False))
            if batch_norm:
                head.append(nn.BatchNorm1d(fc))
            head.append(nn.ReLU(inplace=True))
        head.append(nn.Linear(fc, num_classes, bias=False))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))
