"""``analog``: the reusable analog mode (seed 001), the inverse of a supermask.

A supermask learns *which* connections of fixed random weights to keep. An analog or photonic
device is the other way round: its connections are wired once (the topology cannot change
without re-fabrication), but the value each connection carries can be re-programmed. This
method models that device:

- **topology** (fixed, never learned): exactly ``kept_count(n, density)`` connections per
  layer, the positions of the largest words of the layer's ``"analog-topology"`` PRNG stream
  (ties to the lowest index). It is a pure function of (seed, layer index, density, shape,
  lanes), regenerated like the frozen weights and never stored; retraining on another task
  (re-programming the device) never changes it.
- **value** per connection: a learned sign and a ``bits``-bit magnitude level. Each layer
  holds a latent real value ``v`` per position (``latent``, weight-shaped; only the
  connections matter). The quantizer, with ``L = 2**bits`` levels::

      m    = clamp(round(|v| / step), 1, L)       level 1..L, never 0: the connection exists
      w    = topology * sign(v) * m * step        sign(v) = +1 if v >= 0 else -1
      step = gain / sqrt(fan_in * density) / ((L + 1) / 2)

  ``step`` is a fixed per-layer constant (float64, rounded once to float32): the mean level
  ``(L + 1) / 2`` times ``step`` is the Kaiming magnitude of a layer whose units see
  ``fan_in * density`` inputs. Quantization-aware training: the gradient passes straight
  through sign and rounding (``dw/dv = 1`` on connections with ``|v| <= L * step``, 0 beyond
  the top level and off the topology), the clipped STE of quantized training.
- **initial values**: the sign of the layer's frozen seed weight (``"weights"`` stream) and a
  level drawn uniformly from 1..L by the ``"analog-magnitude"`` stream (``|v| = step * u``,
  ``u`` uniform in (0.5, L + 0.5)).

Stored: ``signs`` (one bit per connection, 1 = non-negative) and ``magnitudes`` (``m - 1``,
one symbol of ``2**bits`` per connection), connections in row-major order; the topology costs
nothing. :meth:`Analog.restore` writes ``v = sign * m * step`` (which re-quantizes to ``m``
exactly), so the rebuilt weights are bit-identical.

Programming noise: with ``noise > 0`` a layer in eval mode multiplies each programmed
magnitude by ``1 + noise * z``, ``z`` standard normal from a CPU ``torch.Generator`` seeded
from (``noise_seed``, layer index): reproducible, the same on every forward pass and device,
and deliberately different from the file's exact values (conformance uses ``noise = 0``).
Training mode never adds noise. :func:`hiddenite.device_noise.with_noise` sets it on a copy
of a model; :func:`hiddenite.device_noise.edge_popup_with_device_noise` is the comparison the
seed argues from: an edge-popup network programmed on an analog device, whose pruned zeros
become noisy non-zeros.

Hardware (:meth:`Analog.cost`): the device stores each connection's value in its cells
(``"stored"``, ``1 + bits`` bits, a multiply-accumulate per connection) and the topology is
wired from the ``"analog-topology"`` stream. The Hiddenite accelerator model (1-bit weights
regenerated on chip, add-only PEs) does not fit an analog array well: its figures for this
method are a digital stand-in, not an analog device's energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..init import words_to_unit_interval
from ..masks import kept_count, top_fraction_mask
from ..prng import register_stream, splitmix64
from .base import LayerCost, LayerItem, Method, MethodConfig, Part, register_method

register_stream("analog-topology", 9)
register_stream("analog-magnitude", 10)

MAX_BITS = 8
_NOISE_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1

__all__ = [
    "Analog",
    "AnalogConfig",
    "level_step",
    "noise_generator",
    "topology",
]


@dataclass(frozen=True)
class AnalogConfig(MethodConfig):
    """bits: magnitude bits per connection (1..8; levels 1..2**bits).
    noise: relative Gaussian programming noise on each magnitude, eval mode only (0: none).
    noise_seed: seed of the noise generator (with the layer index)."""

    method = "analog"
    bits: int = 2
    noise: float = 0.0
    noise_seed: int = 0

    def check(self) -> None:
        if not 1 <= self.bits <= MAX_BITS:
            self.fail("bits", f"must be in 1..{MAX_BITS}, got {self.bits}")
        if not (math.isfinite(self.noise) and self.noise >= 0.0):
            self.fail("noise", f"must be a finite number >= 0, got {self.noise}")
        if not 0 <= self.noise_seed < 2**64:
            self.fail("noise_seed", f"must be in [0, 2**64), got {self.noise_seed}")


def level_step(fan_in: int, density: float, bits: int, gain: float = math.sqrt(2.0)) -> float:
    """The per-layer quantizer step: ``gain / sqrt(fan_in * density) / ((2**bits + 1) / 2)``,
    rounded once to float32."""
    mean_level = (2**bits + 1) / 2.0
    return float(np.float32(gain / math.sqrt(fan_in * density) / mean_level))


def topology(layer: Any) -> torch.Tensor:
    """The layer's fixed connections (bool, weight-shaped): the ``kept_count(n, density)``
    largest words of its ``"analog-topology"`` stream, ties to the lowest index."""
    shape = tuple(layer.weight.shape)
    words = layer.words(math.prod(shape), "analog-topology").to(torch.float64)  # exact
    return top_fraction_mask(words, layer.density).reshape(shape)


def noise_generator(seed: int, layer_index: int) -> torch.Generator:
    """A CPU generator for (noise seed, layer index): independent layers, reproducible."""
    mixed = splitmix64((seed + _NOISE_MIX * (layer_index + 1)) & _MASK64)
    return torch.Generator().manual_seed(mixed)


def _noise(shape: tuple[int, ...], seed: int, layer_index: int, device) -> torch.Tensor:
    z = torch.randn(shape, generator=noise_generator(seed, layer_index), dtype=torch.float32)
    return z.to(device)


class _Quantize(torch.autograd.Function):
    """Forward: ``topology * sign(v) * clamp(round(|v|/step), 1, L) * step``.
    Backward: straight through on connections with ``|v| <= L * step``."""

    @staticmethod
    def forward(ctx, latent, connections, step: float, levels: int):
        ctx.save_for_backward(latent, connections)
        ctx.limit = levels * step
        m = torch.clamp(torch.round(latent.abs() / step), 1, levels)
        signed = torch.where(latent >= 0, m, -m)
        return torch.where(connections, signed * step, torch.zeros((), dtype=latent.dtype))

    @staticmethod
    def backward(ctx, grad):
        latent, connections = ctx.saved_tensors
        passes = connections & (latent.abs() <= ctx.limit)
        return grad * passes.to(grad.dtype), None, None, None


class Analog(Method):
    name = "analog"
    config_type = AnalogConfig
    streams = ("analog-topology", "analog-magnitude")

    def scale_density(self, config, density) -> float | None:
        return None  # the frozen weights only give the initial signs

    def setup(self, layer: Any) -> None:
        layer.latent = nn.Parameter(torch.zeros_like(layer.weight))
        if layer.weight.device.type == "meta":
            wiring = torch.empty(layer.weight.shape, dtype=torch.bool, device="meta")
        else:
            wiring = topology(layer)
        layer.register_buffer("topology", wiring, persistent=False)

    def _step(self, layer: Any) -> float:
        bits = layer.method_config.bits
        return level_step(layer.fan_in, layer.density, bits, layer.gain)

    def initialize(self, layer: Any) -> None:
        levels = 2**layer.method_config.bits
        shape = tuple(layer.weight.shape)
        u = words_to_unit_interval(layer.words(math.prod(shape), "analog-magnitude"))
        magnitude = (0.5 + u * levels) * self._step(layer)  # level uniform in 1..L
        sign = torch.where(layer.weight.reshape(-1) >= 0, 1.0, -1.0).to(torch.float64)
        values = (sign * magnitude).to(torch.float32).reshape(shape)
        with torch.no_grad():
            layer.latent.copy_(torch.where(layer.topology, values, 0.0))

    def weight(self, layer: Any) -> torch.Tensor:
        config = layer.method_config
        w = _Quantize.apply(layer.latent, layer.topology, self._step(layer), 2**config.bits)
        if config.noise > 0 and not layer.training:
            z = _noise(tuple(w.shape), config.noise_seed, layer.layer_index, w.device)
            w = w * (1.0 + config.noise * z)
        return w

    def support(self, layer: Any) -> torch.Tensor:
        return layer.topology

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("latent",)

    def parts(self, shape, config, density) -> list[Part]:
        n = kept_count(math.prod(shape), density)
        return [Part("signs", n, 2), Part("magnitudes", n, 2**config.bits)]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        levels = 2**layer.method_config.bits
        v = layer.latent.detach()[layer.topology].to("cpu", torch.float32)
        m = torch.clamp(torch.round(v.abs() / self._step(layer)), 1, levels).to(torch.int64)
        return {
            "signs": (v >= 0).numpy().copy(),
            "magnitudes": (m - 1).to(torch.uint8).numpy().copy(),
        }

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        bits = torch.from_numpy(np.asarray(arrays["signs"], dtype=np.bool_).copy())
        m = torch.from_numpy(np.asarray(arrays["magnitudes"]).astype(np.float32) + 1.0)
        values = torch.where(bits, m, -m) * self._step(layer)  # re-quantizes to m exactly
        with torch.no_grad():
            latent = torch.zeros_like(layer.latent)
            latent[layer.topology] = values.to(latent)
            layer.latent.copy_(latent)

    def check_layer(self, item: LayerItem) -> None:
        n = kept_count(math.prod(item.shape), item.density)
        levels = 2**item.config.bits
        for part in ("signs", "magnitudes"):
            size = np.asarray(item.arrays[part]).size
            if size != n:
                raise ValueError(
                    f"layer {item.name!r} stores {size} {part}, but density {item.density} "
                    f"wires {n} connections"
                )
        top = int(np.asarray(item.arrays["magnitudes"]).max(initial=0))
        if top >= levels:
            raise ValueError(
                f"layer {item.name!r} has magnitude symbol {top}, but {item.config.bits} bits "
                f"give levels 0..{levels - 1}"
            )

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("stored", 1 + config.bits, "mac", ("analog-topology",))

    def describe(self, layer: Any) -> str:
        config = layer.method_config
        noise = f", noise={config.noise:g} (seed {config.noise_seed})" if config.noise else ""
        return f"method=analog(bits={config.bits}{noise}), density={layer.density:g}"


register_method(Analog())
