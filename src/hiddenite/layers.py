"""Supermask layers: frozen seed-regenerated weights, a learned score per weight.

``SupermaskConv2d`` and ``SupermaskLinear`` subclass ``nn.Conv2d`` and ``nn.Linear`` (so
shape-walking tools, ONNX export and hardware workload extraction see ordinary layers) and
work in one of two modes:

- ``"hidden"``: ``.weight`` is a non-persistent buffer regenerated from
  (seed, layer_index) and never saved; ``.scores`` is the learned parameter; the forward
  pass uses ``weight * mask`` where ``mask`` keeps the top ``density`` fraction of
  ``|scores|`` (per layer, or against a shared :class:`~hiddenite.masks.GlobalThreshold`),
  and the gradient reaches the scores straight through the mask.
- ``"dense"``: the dense twin for baselines: ``.weight`` is an ordinary trained parameter,
  initialised from the same seed, and there are no scores.

A bias, when the layer has one, is a learned per-channel parameter in both modes
(initialised to zero in hidden mode). ``scale_by_density`` (divide the frozen weights by
sqrt(density)) applies to hidden mode only: a dense layer keeps all its weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .init import INITS, RELU_GAIN, frozen_weights, words_to_unit_interval
from .masks import GlobalThreshold, masked_weight, top_fraction_mask
from .prng import DEFAULT_LANES, STREAM_SCORES, lanes_torch

MODES = ("hidden", "dense")

__all__ = ["MODES", "SupermaskConv2d", "SupermaskLayer", "SupermaskLinear", "is_supermask"]


class SupermaskLayer:
    """Behaviour shared by the supermask twins of ``nn.Conv2d`` and ``nn.Linear``."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def _setup_supermask(
        self,
        *,
        density: float,
        init: str,
        seed: int,
        layer_index: int,
        mode: str,
        scale_by_density: bool,
        gain: float,
        n_lanes: int,
        init_scores: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density (kept fraction) must be in (0, 1], got {density}")
        self.density = float(density)
        self.init = init
        self.seed = int(seed)
        self.layer_index = int(layer_index)
        self.mode = mode
        self.scale_by_density = bool(scale_by_density)
        self.gain = float(gain)
        self.n_lanes = int(n_lanes)
        self._mask_group: GlobalThreshold | None = None
        device = self.weight.device
        shape = tuple(self.weight.shape)
        del self.weight  # the Parameter nn.Conv2d/nn.Linear made (torch-random): replaced
        weights = self._regenerate(shape, device)
        if mode == "hidden":
            self.register_buffer("weight", weights, persistent=False)
            scores = (
                self._initial_scores(shape, device)
                if init_scores
                else torch.zeros(shape, device=device)  # to be loaded (e.g. from a model file)
            )
            self.scores = nn.Parameter(scores)
            if self.bias is not None:
                with torch.no_grad():
                    self.bias.zero_()
        else:
            self.weight = nn.Parameter(weights)
            self.register_parameter("scores", None)
            if self.bias is not None:
                with torch.no_grad():
                    bound = 1.0 / math.sqrt(self.fan_in)
                    self.bias.copy_(self._uniform(self.bias.shape, bound, device, stream=2))

    def reset_parameters(self) -> None:
        """Re-draw the scores (hidden) or weights (dense) and bias from the seed.

        Called by the ``nn.Conv2d``/``nn.Linear`` constructor before the supermask settings
        exist: then it does nothing (no torch-random draw that would be thrown away).
        """
        if not hasattr(self, "mode"):
            return
        device = self.weight.device
        shape = tuple(self.weight.shape)
        with torch.no_grad():
            if self.hidden:
                self.scores.copy_(self._initial_scores(shape, device))
                if self.bias is not None:
                    self.bias.zero_()
            else:
                self.weight.copy_(self._regenerate(shape, device))
                if self.bias is not None:
                    bound = 1.0 / math.sqrt(self.fan_in)
                    self.bias.copy_(self._uniform(self.bias.shape, bound, device, stream=2))

    @property
    def fan_in(self) -> int:
        """Inputs per output unit (in_channels/groups x kernel area, or in_features)."""
        return math.prod(self.weight.shape[1:])

    @property
    def hidden(self) -> bool:
        return self.mode == "hidden"

    def _regenerate(self, shape: tuple[int, ...], device) -> torch.Tensor:
        return frozen_weights(
            shape,
            init=self.init,
            seed=self.seed,
            layer_index=self.layer_index,
            fan_in=math.prod(shape[1:]),
            gain=self.gain,
            density=self.density,
            # a dense layer keeps every weight: nothing to compensate
            scale_by_density=self.scale_by_density and self.mode == "hidden",
            n_lanes=self.n_lanes,
            device=device,
        )

    def _uniform(self, shape, bound: float, device, stream: int) -> torch.Tensor:
        n = math.prod(shape)
        words = lanes_torch(self.seed, self.layer_index, n, self.n_lanes, stream, device=device)
        u = words_to_unit_interval(words)
        return ((u * 2.0 - 1.0) * bound).to(torch.float32).reshape(shape)

    def _initial_scores(self, shape, device) -> torch.Tensor:
        # edge-popup's kaiming_uniform(a=sqrt(5)) bound, 1/sqrt(fan_in), drawn from the PRNG
        return self._uniform(shape, 1.0 / math.sqrt(math.prod(shape[1:])), device, STREAM_SCORES)

    def regenerate_weights_(self) -> None:
        """Rebuild the frozen weights from the seed on the layer's current device."""
        if not self.hidden:
            raise RuntimeError(
                "regenerate_weights_ is for hidden layers; dense weights are trained"
            )
        self.weight = self._regenerate(tuple(self.weight.shape), self.weight.device)

    def set_mask_group(self, group: GlobalThreshold | None) -> None:
        """Use a shared global threshold (global top-k) instead of the per-layer one."""
        self._mask_group = group

    def _mask_bool(self, in_forward: bool = False) -> torch.Tensor:
        group = self._mask_group
        if group is None:
            return top_fraction_mask(self.scores, self.density)
        # global scope: the first layer of the group refreshes the threshold once per pass
        return group.layer_mask(self, refresh=in_forward and group.is_first(self))

    def mask(self) -> torch.Tensor:
        """The current binary mask (float 0/1, weight-shaped); all ones in dense mode."""
        if not self.hidden:
            return torch.ones_like(self.weight)
        return self._mask_bool().to(self.weight.dtype)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``weight * mask``.

        The gradient passes straight through the mask to ``|scores|``, hence to the scores
        as ``sign(score) * weight * upstream``.
        """
        if not self.hidden:
            return self.weight
        return masked_weight(self.weight, self.scores, self._mask_bool(True))

    def supermask_repr(self) -> str:
        if not self.hidden:
            return f"mode=dense, init={self.init}, seed={self.seed}, layer_index={self.layer_index}"
        scope = "global" if self._mask_group is not None else "layer"
        return (
            f"mode=hidden, density={self.density:g} ({scope}), init={self.init}, "
            f"seed={self.seed}, layer_index={self.layer_index}"
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
        mode: str = "hidden",
        scale_by_density: bool = False,
        gain: float = RELU_GAIN,
        n_lanes: int = DEFAULT_LANES,
        init_scores: bool = True,
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
            mode=mode,
            scale_by_density=scale_by_density,
            gain=gain,
            n_lanes=n_lanes,
            init_scores=init_scores,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

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
        mode: str = "hidden",
        scale_by_density: bool = False,
        gain: float = RELU_GAIN,
        n_lanes: int = DEFAULT_LANES,
        init_scores: bool = True,
        device=None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device)
        self._setup_supermask(
            density=density,
            init=init,
            seed=seed,
            layer_index=layer_index,
            mode=mode,
            scale_by_density=scale_by_density,
            gain=gain,
            n_lanes=n_lanes,
            init_scores=init_scores,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ", " + self.supermask_repr()


def is_supermask(module: nn.Module) -> bool:
    """True for a supermask layer (either mode)."""
    return isinstance(module, SupermaskLayer)
