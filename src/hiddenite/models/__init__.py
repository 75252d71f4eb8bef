"""The model zoo, looked up by name: ``create(name, config=None, **kwargs)``.

Every model is a plain ``nn.Module``; with a :class:`~hiddenite.SupermaskConfig` it is
converted by :func:`hiddenite.supermask_` into a hidden network (or its dense twin).

========================  ===========================================  ===================
name                      what                                         default input
========================  ===========================================  ===================
``mlp``                   784-300-100-10 fully connected               1 x 28 x 28
``conv2/4/6/8``           Frankle/Ramanujan Conv-n, no BN, no bias     1 x 28 x 28
``conv2/4/6/8-bn``        Conv-n + affine BN after every conv/hidden   1 x 28 x 28
``resnet20``              CIFAR-style ResNet-20 (16/32/64)             1 x 28 x 28
``resnet14``              CIFAR-style ResNet-14 (16/32/64, 2+2+2)      1 x 28 x 28
``se-resnet14``           ResNet-14 + binarized SE in every block      1 x 28 x 28
``se-conv2/4/6/8``        Conv-n + binarized SE after every conv       1 x 28 x 28
``resnet18``              CIFAR-style ResNet-18 (64..512)              1 x 28 x 28
``resnet20-folded``       ResNet-20, Hidden-Fold: shared blocks        1 x 28 x 28
``resnet18-folded``       ResNet-18, Hidden-Fold: shared blocks        1 x 28 x 28
``resnet18-imagenet``     ImageNet ResNet-18                           3 x 224 x 224
``resnet50``              ImageNet ResNet-50                           3 x 224 x 224
========================  ===========================================  ===================

Keyword arguments: ``in_channels``, ``image_size``, ``num_classes``, and ``width``
(channel multiplier) for conv and ResNet models, ``bn_affine`` for ResNets, ``hidden``
(tuple of layer widths) for the MLP.

The ``-folded`` ResNets (Hidden-Fold Networks, BMVC 2021) keep each stage's first block and
replace the other ``n - 1`` blocks by one block whose convolutions are shared and iterated,
with a batch norm per iteration; a converted model stores each shared convolution's mask
once. They take the ResNet arguments plus ``iterations`` (int >= 1, iterations of the shared
block in every stage; None: the unfolded block count minus one, the unfolded depth: 2 for
resnet20-folded, 1 for resnet18-folded, whose size then equals resnet18's).

The ``se-`` models (:mod:`hiddenite.models.attention`, seed 004) gate channels per input with
a binarized squeeze-and-excitation block; they take ``reduction`` (SE bottleneck, default 4)
and ``binary`` (sign-binarized convolution inputs), ``se-resnet14`` also ``se_position``
(``"mid"``: between the block's convolutions, default; ``"post"``: classic SE-ResNet).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convert import SupermaskConfig, can_materialize, materialize_, supermask_
from ..errors import ConfigError
from ..resources import check_weights, weight_count
from .attention import SEConvNet, se_resnet
from .resnet import BasicBlock, Bottleneck, ResNet
from .small import CONV_PLANS, MLP, ConvNet

__all__ = ["MODELS", "ModelInfo", "check_arguments", "create", "default_input_shape", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """A zoo entry: its builder, its default keyword arguments and a one-line description."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str


def _resnet(block, blocks, planes, imagenet_stem, folded=False):
    if folded:

        def build_folded(
            in_channels: int,
            image_size: int,
            num_classes: int,
            bn_affine: bool = False,
            width: float = 1.0,
            iterations: int | None = None,
        ) -> nn.Module:
            del image_size  # adaptive pooling: any size large enough for the strides
            return ResNet(
                block,
                blocks,
                planes,
                in_channels=in_channels,
                num_classes=num_classes,
                imagenet_stem=imagenet_stem,
                bn_affine=bn_affine,
                width=width,
                folded=True,
                iterations=iterations,
            )

        return build_folded

    def build(
        in_channels: int,
        image_size: int,
        num_classes: int,
        bn_affine: bool = False,
        width: float = 1.0,
    ) -> nn.Module:
        del image_size  # adaptive pooling: any size large enough for the strides
        return ResNet(
            block,
            blocks,
            planes,
            in_channels=in_channels,
            num_classes=num_classes,
            imagenet_stem=imagenet_stem,
            bn_affine=bn_affine,
            width=width,
        )

    return build


def _conv(plan, batch_norm: bool = False):
    def build(in_channels: int, image_size: int, num_classes: int, width: float = 1.0):
        return ConvNet(plan, in_channels, image_size, num_classes, width, batch_norm)

    return build


def _se_conv(plan):
    def build(
        in_channels: int,
        image_size: int,
        num_classes: int,
        width: float = 1.0,
        reduction: int = 4,
        binary: bool = False,
    ):
        return SEConvNet(plan, in_channels, image_size, num_classes, width, reduction, binary)

    return build


def _se_resnet14(
    in_channels: int,
    image_size: int,
    num_classes: int,
    bn_affine: bool = False,
    width: float = 1.0,
    reduction: int = 4,
    binary: bool = False,
    se_position: str = "mid",
) -> nn.Module:
    del image_size  # adaptive pooling
    return se_resnet(
        in_channels=in_channels,
        num_classes=num_classes,
        bn_affine=bn_affine,
        width=width,
        reduction=reduction,
        binary=binary,
        se_position=se_position,
    )


def _mlp(in_channels: int, image_size: int, num_classes: int, hidden=(300, 100)):
    return MLP(in_channels, image_size, num_classes, tuple(hidden))


_SMALL = {"in_channels": 1, "image_size": 28, "num_classes": 10}
_IMAGENET = {"in_channels": 3, "image_size": 224, "num_classes": 1000}

MODELS: dict[str, ModelInfo] = {
    "mlp": ModelInfo("mlp", _mlp, dict(_SMALL), "784-300-100-10 MLP, no biases"),
    **{
        name: ModelInfo(name, _conv(plan), dict(_SMALL), f"{name[4:]}-conv-layer VGG-like net")
        for name, plan in CONV_PLANS.items()
    },
    **{
        f"{name}-bn": ModelInfo(
            f"{name}-bn",
            _conv(plan, batch_norm=True),
            dict(_SMALL),
            f"{name[4:]}-conv-layer VGG-like net with batch norm",
        )
        for name, plan in CONV_PLANS.items()
    },
    "resnet20": ModelInfo(
        "resnet20",
        _resnet(BasicBlock, (3, 3, 3), (16, 32, 64), False),
        dict(_SMALL),
        "CIFAR-style ResNet-20",
    ),
    "resnet14": ModelInfo(
        "resnet14",
        _resnet(BasicBlock, (2, 2, 2), (16, 32, 64), False),
        dict(_SMALL),
        "CIFAR-style ResNet-14 (three stages of two blocks)",
    ),
    "se-resnet14": ModelInfo(
        "se-resnet14", _se_resnet14, dict(_SMALL), "ResNet-14 with binarized SE attention"
    ),
    **{
        f"se-{name}": ModelInfo(
            f"se-{name}", _se_conv(plan), dict(_SMALL), f"{name} with binarized SE attention"
        )
        for name, plan in CONV_PLANS.items()
    },
    "resnet18": ModelInfo(
        "resnet18",
        _resnet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), False),
        dict(_SMALL),
        "CIFAR-style ResNet-18",
    ),
    "resnet20-folded": ModelInfo(
        "resnet20-folded",
        _resnet(BasicBlock, (3, 3, 3), (16, 32, 64), False, folded=True),
        dict(_SMALL),
        "CIFAR-style ResNet-20, folded (Hidden-Fold Network)",
    ),
    "resnet18-folded": ModelInfo(
        "resnet18-folded",
        _resnet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), False, folded=True),
        dict(_SMALL),
        "CIFAR-style ResNet-18, folded (Hidden-Fold Network)",
    ),
    "resnet18-imagenet": ModelInfo(
        "resnet18-imagenet",
        _resnet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), True),
        dict(_IMAGENET),
        "ImageNet ResNet-18",
    ),
    "resnet50": ModelInfo(
        "resnet50",
        _resnet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), True),
        dict(_IMAGENET),
        "ImageNet ResNet-50",
    ),
}


def model_info(name: str) -> ModelInfo:
    """The zoo entry called ``name`` (ValueError listing the valid names otherwise)."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def _arguments(info: ModelInfo, kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(info.builder).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(
            f"model {info.name!r} takes no argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    return {**info.defaults, **kwargs}


def default_input_shape(name: str, **kwargs: Any) -> tuple[int, int, int]:
    """(channels, height, width) of one input for model ``name`` with these arguments."""
    args = _arguments(model_info(name), kwargs)
    return (args["in_channels"], args["image_size"], args["image_size"])


# Bounds on the zoo's keyword arguments (the memory bound comes after, from the layout).
_INT_ARGS = {"in_channels": 4096, "image_size": 16384, "num_classes": 1_000_000, "iterations": 64}
_MAX_WIDTH = 4096.0
_MAX_HIDDEN = (64, 1 << 40)  # layers, units per layer (the weight cap binds first)


def _check_values(args: dict[str, Any]) -> None:
    """ValueError naming the first argument whose value no zoo model accepts."""
    for key, value in args.items():
        if key in _INT_ARGS and not (key == "iterations" and value is None):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer, got {value!r}")
            if not 1 <= value <= _INT_ARGS[key]:
                raise ValueError(f"{key} must be in [1, {_INT_ARGS[key]}], got {value}")
        elif key == "width":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"width must be a number, got {value!r}")
            if not 0 < value <= _MAX_WIDTH:
                raise ValueError(f"width (a channel multiplier) must be in (0, {_MAX_WIDTH}]")
        elif key == "hidden":
            if not isinstance(value, list | tuple) or len(value) > _MAX_HIDDEN[0]:
                raise ValueError(f"hidden must be a list of at most {_MAX_HIDDEN[0]} widths")
            for units in value:
                if isinstance(units, bool) or not isinstance(units, int):
                    raise ValueError(f"hidden widths must be integers, got {units!r}")
                if not 1 <= units <= _MAX_HIDDEN[1]:
                    raise ValueError(f"hidden widths must be in [1, {_MAX_HIDDEN[1]}]")
        elif key == "bn_affine" and not isinstance(value, bool):
            raise ValueError(f"bn_affine must be true or false, got {value!r}")


def check_arguments(name: str, **kwargs: Any) -> None:
    """Raise ValueError if model ``name`` cannot be built with ``kwargs`` (wrong names,
    types or values) or would exceed :data:`hiddenite.resources.MAX_MODEL_WEIGHTS`; builds
    the plain model on the ``meta`` device, so it is cheap."""
    info = model_info(name)
    args = _arguments(info, kwargs)
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        _check_values(args)
        with torch.device("meta"):
            plain = info.builder(**args)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model {name!r} cannot be built with {given or 'defaults'}: {first}"
        ) from None
    check_weights(weight_count(plain), f"model {name!r} with {given or 'defaults'}")


def create(
    name: str, config: SupermaskConfig | None = None, *, init_state: bool = True, **kwargs: Any
) -> nn.Module:
    """Build zoo model ``name``; with ``config``, convert it with :func:`supermask_`.

    The model remembers how it was built in ``model.hiddenite_arch = (name, kwargs)``, the
    full keyword arguments included, so :func:`hiddenite.save` can record it.
    ``init_state=False`` leaves the learned state at zero, for a caller that loads it.
    """
    info = model_info(name)
    args = _arguments(info, kwargs)
    device = torch.get_default_device()
    if config is not None and not init_state and device.type != "meta":
        # built on meta and given memory: no torch init of the layers conversion replaces
        with torch.device("meta"):
            model = info.builder(**args)
            supermask_(model, config, init_state=False)
        if can_materialize(model):
            materialize_(model, device)
            model.hiddenite_arch = (name, dict(args))
            return model
    model = info.builder(**args)
    if config is not None:
        supermask_(model, config, init_state=init_state)
    model.hiddenite_arch = (name, dict(args))
    return model
