"""``binarized``: the baseline every hidden network is judged against (BinaryConnect / XNOR-Net).

A binarized network of the same architecture. The layer's ``weight`` is an ordinary trained
latent float Parameter, initialised from the seed like the frozen weights (``trains_weights``;
density is always 1.0 and the init is never scaled by it). The forward pass uses

    effective weight = alpha_c * sign(w),   sign(w) = +1 if w >= 0 else -1   (sign(0) := +1)

with one scale per output channel ``c``, ``alpha_c = mean(|w|)`` over the channel (XNOR-Net,
Rastegari et al., ECCV 2016). ``alpha_c`` is computed as a float64 mean rounded once to float32:
a float64 sum of identical float32 values is exact (fewer than 2**29 of them), so a channel
whose latent weights all have the magnitude ``s`` gets ``alpha_c == s`` bit for bit. That is
how :meth:`Binarized.restore` rebuilds a layer exactly: latent ``w := scale_c * (+-1)``.

Gradient (the clipped straight-through estimator of BinaryConnect, Courbariaux et al. 2015,
and XNOR-Net): ``d sign(w) / dw := 1`` where ``|w| <= 1``, else 0; the scale's own path,
``d alpha_c / d w = d|w|/dw / n_c``, is differentiated exactly by autograd (``d|w|/dw`` is
``sign(w)``, and 0 at ``w = 0``), so the latent gradient is
``g * alpha_c * [|w| <= 1] + d|w|/dw * mean_c(g * sign(w))`` (XNOR-Net's rule).
Latent weights are not clipped by the method: an optimiser that wants BinaryConnect's
``clip(w, -1, 1)`` applies it; the gradient is already zero outside ``[-1, 1]``.

``scale=False`` drops the learned per-channel scale: the effective weight is ``c * sign(w)``
with the fixed per-layer constant ``c = gain / sqrt(fan_in)`` (the signed Kaiming constant,
rounded once to float32; not stored, a function of the geometry), so that networks without
batch norm still train; BinaryConnect's plain ``+-1`` is this up to one per-layer factor.

Stored: ``signs`` (n bits, 1 = non-negative) and, with ``scale``, ``scales`` (one float per
output channel). Hardware: 1-bit weights shipped from memory, an XNOR-popcount per weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import LayerCost, LayerItem, Method, MethodConfig, Part, register_method

__all__ = ["Binarized", "BinarizedConfig", "binary_sign", "channel_scale", "sign_ste"]


@dataclass(frozen=True)
class BinarizedConfig(MethodConfig):
    """scale: a learned per-output-channel scale ``mean(|w|)`` (XNOR-Net); off: the fixed
    per-layer constant ``gain / sqrt(fan_in)`` instead, and no ``scales`` part."""

    method = "binarized"
    scale: bool = True


def binary_sign(w: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``w >= 0`` (zero included), ``-1`` elsewhere, in ``w``'s dtype."""
    one = torch.ones((), dtype=w.dtype, device=w.device)
    return torch.where(w >= 0, one, -one)


class _SignSTE(torch.autograd.Function):
    """Forward: :func:`binary_sign`. Backward: the clipped straight-through estimator."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return binary_sign(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def sign_ste(w: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` (sign(0) = +1) whose gradient passes unchanged where ``|w| <= 1``."""
    return _SignSTE.apply(w)


def channel_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ``mean(|w|)`` (shape ``(out, 1, ...)``), a float64 mean rounded once
    to ``w``'s dtype; differentiable (``d/dw = sign(w) / n``, 0 at ``w = 0``)."""
    dims = tuple(range(1, w.dim()))
    return w.abs().to(torch.float64).mean(dim=dims, keepdim=True).to(w.dtype)


def fixed_scale(layer: Any) -> float:
    """The constant of ``scale=False``: ``gain / sqrt(fan_in)`` rounded to float32."""
    return float(np.float32(layer.gain / math.sqrt(layer.fan_in)))


class Binarized(Method):
    name = "binarized"
    config_type = BinarizedConfig
    trains_weights = True
    # latent weights under a sign: SGD at 0.1 reached 66 % on the MLP, Adam at 0.01 trains
    # (BENCHMARKS.md "Supermask methods")
    default_optimizer = ("adam", 0.01)

    def layer_configs(self, shapes, config, density):
        return [(config, 1.0) for _ in shapes]  # every weight is used (and stored, as a bit)

    def scale_density(self, config, density) -> float | None:
        return None  # nothing is pruned: nothing to compensate

    def weight(self, layer: Any) -> torch.Tensor:
        w = layer.weight
        if layer.method_config.scale:
            return channel_scale(w) * sign_ste(w)
        return fixed_scale(layer) * sign_ste(w)

    def support(self, layer: Any) -> torch.Tensor:
        return torch.ones_like(layer.weight, dtype=torch.bool)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("weight",)

    def parts(self, shape, config, density) -> list[Part]:
        parts = [Part("signs", math.prod(shape), 2)]
        if config.scale:
            parts.append(Part("scales", shape[0], None))
        return parts

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        w = layer.weight.detach().to("cpu", torch.float32)
        arrays = {"signs": (w >= 0).reshape(-1).numpy().copy()}
        if layer.method_config.scale:
            arrays["scales"] = channel_scale(w).reshape(-1).numpy().copy()
        return arrays

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        shape = tuple(layer.weight.shape)
        bits = torch.from_numpy(np.asarray(arrays["signs"], dtype=np.bool_).copy())
        signs = torch.where(bits, 1.0, -1.0).to(torch.float32).reshape(shape)
        if layer.method_config.scale:
            scales = np.asarray(arrays["scales"], dtype=np.float32).copy()
            values = torch.from_numpy(scales).reshape((shape[0],) + (1,) * (len(shape) - 1))
        else:
            values = torch.tensor(fixed_scale(layer), dtype=torch.float32)
        with torch.no_grad():  # every latent weight of a channel has the magnitude scale_c
            layer.weight.copy_((values * signs).to(layer.weight))

    def check_layer(self, item: LayerItem) -> None:
        n = math.prod(item.shape)
        signs = np.asarray(item.arrays["signs"])
        if signs.size != n:
            raise ValueError(f"layer {item.name!r} stores {signs.size} signs, expected {n}")
        if not item.config.scale:
            return
        scales = np.asarray(item.arrays["scales"], dtype=np.float32)
        if scales.size != item.shape[0]:
            raise ValueError(
                f"layer {item.name!r} stores {scales.size} scales, expected {item.shape[0]}"
            )
        bad = ~(np.isfinite(scales) & (scales >= 0))
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"layer {item.name!r}: channel {c} has scale {scales[c]!r}, but a mean of "
                f"|w| is finite and non-negative"
            )

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("stored", 1, "xnor", ())

    def describe(self, layer: Any) -> str:
        scale = "per-channel mean|w|" if layer.method_config.scale else "fixed gain/sqrt(fan_in)"
        return f"method=binarized (scale: {scale})"


register_method(Binarized())
