"""``signed`` (Koster et al., ICLR 2022, "Signing the Supermask: Keep, Hide, Invert").

A ternary mask over the frozen weights: keep (+1), hide (0) or invert (-1). Each weight has a
real score; the ``kept_count(n, density)`` weights of largest ``|score|`` are *visible* (per
layer, or over all layers converted together with ``scope="global"``, as edge-popup), and a
visible weight is inverted when its score is negative: effective weight
``w * sign(score) * visible``, where a visible score of exactly 0 counts as keep, so exactly
the kept count of weights is used.

Gradient: the ternary factor ``sign(score) * visible`` passes straight through, so
``d(effective weight) / d(score) = w`` for every weight (visible or not), the usual
straight-through estimator of a sign.

Initial scores: edge-popup's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` from the ``scores``
stream. It is symmetric, so about half of the visible weights start inverted; over frozen
weights of random sign that is the same distribution of effective weights as keeping them all,
and training decides the signs. The paper lets its sparsity emerge from training (it reports
up to 99 % pruned); here the kept count is fixed by ``density``, as for every method in this
package, so the file stores a known count. It reports CIFAR-10 Conv-2/4/6/8 at
68.4 / 77.4 / 79.2 / 80.9 % (with its own ELUS weight initialization).

Stored: one part ``signs`` of ``n`` symbols over 3 values: 0 hide, 1 keep, 2 invert, with
exactly the kept count non-zero. Hardware: 1-bit frozen weights from the seed and a signed add
(the sign of the mask folded into the weight's sign) per visible weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..masks import kept_count
from .base import LayerCost, LayerItem, MethodConfig, Part, register_method
from .edge_popup import SCOPES, TopKScores

__all__ = ["HIDE", "INVERT", "KEEP", "Signed", "SignedConfig", "signed_factor"]

HIDE, KEEP, INVERT = 0, 1, 2
#: the score a restored symbol writes: its |score| re-selects the visible ones, its sign the sign
_RESTORE_SCORE = (0.0, 1.0, -1.0)


@dataclass(frozen=True)
class SignedConfig(MethodConfig):
    """scope: ``"layer"`` (each layer shows its density) or ``"global"`` (one threshold over
    all layers converted together)."""

    method = "signed"
    scope: str = "layer"

    def check(self) -> None:
        if self.scope not in SCOPES:
            self.fail("scope", f"must be one of {', '.join(SCOPES)}, got {self.scope!r}")


def signed_factor(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """int8 factor per weight: 0 hidden, +1 kept (score >= 0), -1 inverted (score < 0)."""
    sign = torch.where(scores.detach() < 0, -1, 1).to(torch.int8)
    return sign * visible.view(torch.int8)


class _SignedWeight(torch.autograd.Function):
    """``weight * factor`` (factor in {-1, 0, +1}); the scores get ``upstream * weight``."""

    @staticmethod
    def forward(ctx, weight, scores, factor):
        ctx.save_for_backward(weight)
        return weight * factor

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return None, grad * weight, None


class Signed(TopKScores):
    """Under ``frozen`` (``freezable``): freezing fixes the ternary symbol itself, as it fixes
    edge-popup's bit: a frozen-pruned weight is hidden, a frozen-locked one kept (+1, never
    inverted), so a frozen position stores nothing and never changes; the free positions
    store one symbol each, ``free_kept`` of them visible (keep or invert)."""

    name = "signed"
    config_type = SignedConfig
    freezable = True

    def freezing_problem(self, config: MethodConfig) -> str | None:
        if config.scope != "layer":
            return "scope='global': freezing restricts a per-layer selection"
        return None

    def initialize(self, layer: Any) -> None:
        super().initialize(layer)
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # frozen positions' scores are never read: keep them at 0
            with torch.no_grad():
                layer.scores.view(-1).masked_fill_(freezing.frozen(layer), 0.0)

    def _mask(self, layer: Any, in_forward: bool = False) -> torch.Tensor:
        freezing = layer.__dict__.get("freezing")
        if freezing is None:
            return super()._mask(layer, in_forward)
        return freezing.select(layer, layer.scores).reshape(layer.weight.shape)

    def factor(self, layer: Any, in_forward: bool = False) -> torch.Tensor:
        """The layer's ternary mask as int8 (weight-shaped): -1 invert, 0 hide, +1 keep."""
        factor = signed_factor(layer.scores, self._mask(layer, in_forward))
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # frozen locked: keep, whatever its (unused) score
            _, locked = freezing.pattern(layer)
            factor.view(-1).masked_fill_(locked, 1)
        return factor

    def weight(self, layer: Any) -> torch.Tensor:
        return _SignedWeight.apply(layer.weight, layer.scores, self.factor(layer, True))

    def support(self, layer: Any) -> torch.Tensor:
        return self._mask(layer)

    def weight_factor(self, layer: Any) -> torch.Tensor:
        return self.factor(layer)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("scores",)

    def parts(self, shape, config, density) -> list[Part]:
        return [Part("signs", math.prod(shape), 3)]

    def frozen_parts(self, shape, config, density, counts) -> list[Part]:
        return [Part("signs", counts.free, 3)]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        factor = self.factor(layer).detach().reshape(-1)
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # the free positions' symbols only
            factor = freezing.gather(layer, factor)
        factor = factor.to("cpu").numpy()
        symbols = np.where(factor < 0, INVERT, factor).astype(np.uint8)  # -1 -> 2
        return {"signs": symbols}

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        symbols = np.asarray(arrays["signs"]).astype(np.int64).reshape(-1)
        if symbols.size and (int(symbols.min()) < 0 or int(symbols.max()) > INVERT):
            raise ValueError("signed: sign symbols must be 0 (hide), 1 (keep) or 2 (invert)")
        values = torch.tensor(_RESTORE_SCORE, dtype=torch.float32)[torch.from_numpy(symbols)]
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # free positions' scores; 0 at the frozen ones
            values = freezing.scatter(layer, values.to(layer.scores.device))
        with torch.no_grad():  # |score| 1 re-selects exactly the visible ones
            layer.scores.copy_(values.reshape(layer.scores.shape).to(layer.scores))
        if layer.mask_group is not None:
            layer.mask_group.invalidate()

    @staticmethod
    def _symbols(item: LayerItem, n: int | None = None) -> np.ndarray:
        symbols = np.asarray(item.arrays["signs"]).astype(np.int64).reshape(-1)
        n = math.prod(item.shape) if n is None else n
        if symbols.size != n:
            raise ValueError(f"layer {item.name!r} has {symbols.size} signs for {n} weights")
        if symbols.size and int(symbols.max()) > INVERT:
            raise ValueError(f"layer {item.name!r} has sign symbol {int(symbols.max())} (0..2)")
        return symbols

    def check(self, items: list[LayerItem]) -> None:
        if not items:
            return
        if items[0].config.scope == "layer":
            super().check(items)
            return
        total = sum(math.prod(item.shape) for item in items)
        shown = sum(int(np.count_nonzero(self._symbols(item))) for item in items)
        want = kept_count(total, items[0].density)
        if shown != want:
            raise ValueError(
                f"the signed layers show {shown} of {total} weights, but global density "
                f"{items[0].density} shows {want}"
            )

    def check_layer(self, item: LayerItem) -> None:
        n = math.prod(item.shape)
        shown = int(np.count_nonzero(self._symbols(item)))
        want = kept_count(n, item.density)
        if shown != want:
            raise ValueError(
                f"layer {item.name!r} shows {shown} of {n} weights, but density "
                f"{item.density} shows {want}"
            )

    def frozen_check_layer(self, item: LayerItem, counts: Any) -> None:
        shown = int(np.count_nonzero(self._symbols(item, counts.free)))
        if shown != counts.free_kept:
            raise ValueError(
                f"layer {item.name!r} shows {shown} of its {counts.free} free weights, but its "
                f"freezing keeps {counts.free_kept} of them ({counts.locked} locked)"
            )

    def kept(self, shape, config, density, counts) -> int:
        if config.scope == "global":  # the group decides: the visible (non-hide) symbols
            return sum(counts["signs"][1:])
        return kept_count(math.prod(shape), density)

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("prng", 1, "add", ("weights",))

    def describe(self, layer: Any) -> str:
        scope = "global" if layer.mask_group is not None else "layer"
        return f"method=signed, density={layer.density:g} ({scope})"


register_method(Signed())
