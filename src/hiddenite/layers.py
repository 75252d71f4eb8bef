"""Supermask layers: frozen seed-regenerated weights, learned state owned by a method.

``SupermaskConv2d`` and ``SupermaskLinear`` subclass ``nn.Conv2d`` and ``nn.Linear`` (so
shape-walking tools, ONNX export and hardware workload extraction see ordinary layers). A
layer keeps its geometry, the model seed, its layer index, the init, its density (kept
fraction) and its *method* (:mod:`hiddenite.methods`): the method registers every learned
tensor on the layer and builds the effective weight of the forward pass.

``.weight`` is a non-persistent buffer regenerated from (seed, layer_index) and never saved,
unless the method trains the weights (``dense``, ``binarized``): then it is an ordinary
parameter initialised from the same seed. A bias, when the layer has one, is a learned
per-channel parameter (zero at the start, or uniform from the ``bias`` stream for a layer
that trains its weights). ``scale_by_density`` divides the frozen weights by the square root
of the density the method names (:meth:`~hiddenite.methods.Method.scale_density`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .init import INITS, RELU_GAIN, frozen_weights, uniform_values
from .methods import MethodConfig, get_method, method_config
from .ops import OperatorLayer, conv2d_forward
from .prng import DEFAULT_LANES, lanes_torch, stream_id

__all__ = ["SupermaskConv2d", "SupermaskLayer", "SupermaskLinear", "is_supermask"]


class SupermaskLayer(OperatorLayer):
    """Behaviour shared by the supermask twins of ``nn.Conv2d`` and ``nn.Linear``; the forward
    multiplies with the layer's operator (:mod:`hiddenite.ops`, exact unless one is set)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def _setup_supermask(
        self,
        *,
        density: float,
        init: str,
        seed: int,
        layer_index: int,
        method: str | MethodConfig,
        scale_by_density: bool,
        gain: float,
        n_lanes: int,
        init_state: bool = True,
    ) -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density (kept fraction) must be in (0, 1], got {density}")
        self.method_config = method_config(method)
        self.method = get_method(self.method_config.method)
        self.density = float(density)
        self.init = init
        self.seed = int(seed)
        self.layer_index = int(layer_index)
        self.scale_by_density = bool(scale_by_density)
        self.gain = float(gain)
        self.n_lanes = int(n_lanes)
        self.conversion = None  # the SupermaskConfig of the supermask_ call that made it
        device = self.weight.device
        shape = tuple(self.weight.shape)
        del self.weight  # the Parameter nn.Conv2d/nn.Linear made (torch-random): replaced
        if device.type == "meta":  # a layout without memory: nothing to draw
            weights = torch.empty(shape, device=device)
        else:
            weights = self._regenerate(shape, device)
        if self.trains_weights:
            self.weight = nn.Parameter(weights)
        else:
            self.register_buffer("weight", weights, persistent=False)
        self.method.setup(self)
        if init_state and device.type != "meta":
            self._initialize()

    def _initialize(self) -> None:
        self.method.initialize(self)
        if self.bias is not None:
            with torch.no_grad():
                if self.trains_weights:
                    bound = 1.0 / math.sqrt(self.fan_in)
                    self.bias.copy_(self.uniform(self.bias.shape, bound, "bias"))
                else:
                    self.bias.zero_()

    def materialize_(self, device=None) -> None:
        """Fill a layer that ``Module.to_empty`` just gave memory (its tensors hold whatever
        the allocator left): the weights regenerated from the seed on ``device`` (default: the
        weight's own, so the weight itself may still be on ``meta`` when ``device`` is given)
        and the method's learned state registered afresh (zero-filled), as building it on that
        device with ``init_state=False`` leaves it. The bias is left for the caller to load.
        Links made by :meth:`~hiddenite.methods.Method.link` are the caller's to make again."""
        device = self.weight.device if device is None else torch.device(device)
        weights = self._regenerate(tuple(self.weight.shape), device)
        self.weight = nn.Parameter(weights) if self.trains_weights else weights
        self.method.setup(self)

    def reset_parameters(self) -> None:
        """Re-draw the learned state (and trained weights) and the bias from the seed.

        Called by the ``nn.Conv2d``/``nn.Linear`` constructor before the supermask settings
        exist: then it does nothing (no torch-random draw that would be thrown away).
        """
        if not hasattr(self, "method"):
            return
        if self.trains_weights:
            with torch.no_grad():
                self.weight.copy_(self._regenerate(tuple(self.weight.shape), self.weight.device))
        self._initialize()

    @property
    def fan_in(self) -> int:
        """Inputs per output unit (in_channels/groups x kernel area, or in_features)."""
        return math.prod(self.weight.shape[1:])

    @property
    def trains_weights(self) -> bool:
        """True when the method trains the weights (they are stored, not regenerated)."""
        return self.method.trains_weights

    def frozen_spec(self, shape: tuple[int, ...] | None = None) -> dict:
        """The keyword arguments of :func:`~hiddenite.init.frozen_weights` (less ``device``)
        that regenerate this layer's frozen weights (of ``shape``, default the layer's)."""
        shape = tuple(self.weight.shape) if shape is None else tuple(shape)
        scale_density = self.method.scale_density(self.method_config, self.density)
        return {
            "shape": shape,
            "init": self.init,
            "seed": self.seed,
            "layer_index": self.layer_index,
            "fan_in": math.prod(shape[1:]),
            "gain": self.gain,
            "density": 1.0 if scale_density is None else scale_density,
            "scale_by_density": self.scale_by_density and scale_density is not None,
            "n_lanes": self.n_lanes,
        }

    def _regenerate(self, shape: tuple[int, ...], device) -> torch.Tensor:
        return frozen_weights(**self.frozen_spec(shape), device=device)

    def words(self, n: int, stream: str) -> torch.Tensor:
        """``n`` PRNG words (int64 in [0, 2**32)) of this layer's named ``stream``."""
        device = self.weight.device
        return lanes_torch(self.seed, self.layer_index, n, self.n_lanes, stream_id(stream), device)

    def uniform(self, shape, bound: float, stream: str) -> torch.Tensor:
        """float32 ``U(-bound, bound)`` of ``shape`` from this layer's named ``stream``."""
        return uniform_values(
            tuple(shape),
            bound,
            seed=self.seed,
            layer_index=self.layer_index,
            stream=stream_id(stream),
            n_lanes=self.n_lanes,
            device=self.weight.device,
        )

    def regenerate_weights_(self) -> None:
        """Rebuild the frozen weights from the seed on the layer's current device."""
        if self.trains_weights:
            raise RuntimeError(
                "regenerate_weights_ is for frozen weights; this layer's weights are trained"
            )
        self.weight = self._regenerate(tuple(self.weight.shape), self.weight.device)

    def support(self) -> torch.Tensor:
        """Boolean, weight-shaped: the positions whose effective weight is used."""
        return self.method.support(self)

    def mask(self) -> torch.Tensor:
        """The support as a float 0/1 tensor (weight-shaped); all ones for a dense layer."""
        return self.support().to(self.weight.dtype)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses, built by the method (straight-through gradient)."""
        return self.method.weight(self)

    def effective_bias(self) -> torch.Tensor | None:
        """The bias the forward pass uses (the method's; usually the layer's own)."""
        return self.method.bias(self)

    def supermask_repr(self) -> str:
        return (
            f"{self.method.describe(self)}, init={self.init}, seed={self.seed}, "
            f"layer_index={self.layer_index}"
        )


class SupermaskConv2d(SupermaskLayer, nn.Conv2d):
    """``nn.Conv2d`` whose weights are frozen random (seeded) and masked by learned scores."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        *,
        density: float = 0.5,
        init: str = "signed-constant",
        seed: int = 0,
        layer_index: int = 0,
        method: str | MethodConfig = "edge-popup",
        scale_by_density: bool = False,
        gain: float = RELU_GAIN,
        n_lanes: int = DEFAULT_LANES,
        init_state: bool = True,
        device=None,
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
        )
        self._setup_supermask(
            density=density,
            init=init,
            seed=seed,
            layer_index=layer_index,
            method=method,
            scale_by_density=scale_by_density,
            gain=gain,
            n_lanes=n_lanes,
            init_state=init_state,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv2d_forward(self, x, self.effective_weight(), self.effective_bias())
        return self.method.output(self, y)

    def extra_repr(self) -> str:
        return nn.Conv2d.extra_repr(self) + ", " + self.supermask_repr()


class SupermaskLinear(SupermaskLayer, nn.Linear):
    """``nn.Linear`` whose weights are frozen random (seeded) and masked by learned scores."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        density: float = 0.5,
        init: str = "signed-constant",
        seed: int = 0,
        layer_index: int = 0,
        method: str | MethodConfig = "edge-popup",
        scale_by_density: bool = False,
        gain: float = RELU_GAIN,
        n_lanes: int = DEFAULT_LANES,
        init_state: bool = True,
        device=None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device)
        self._setup_supermask(
            density=density,
            init=init,
            seed=seed,
            layer_index=layer_index,
            method=method,
            scale_by_density=scale_by_density,
            gain=gain,
            n_lanes=n_lanes,
            init_state=init_state,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.active_operator().linear(x, self.effective_weight(), self.effective_bias())
        return self.method.output(self, y)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ", " + self.supermask_repr()


def is_supermask(module: nn.Module) -> bool:
    """True for a supermask layer (any method)."""
    return isinstance(module, SupermaskLayer)
