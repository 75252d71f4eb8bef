"""``multicoat`` (Okoshi et al., ICML 2022, "Multicoated Supermasks Enhance Hidden Networks").

One real score per frozen weight and ``C`` nested *coats*: coat ``i`` keeps the
``kept_count(n, k_i)`` weights of largest ``|score|`` (ties to the lowest index, so the coats
are nested and every count is exact), with ``k_1 > k_2 > ... > k_C``. A weight's *level* is the
number of coats it passes (0..C) and its effective weight is ``w * level``: with the
signed-constant init and ``scale_by_density`` the frozen weight is ``+-gain/sqrt(fan_in*k_1)``,
so this is the paper's ``sign(w) * level * sigma``, ``sigma = sqrt(2 / (fan_in * k_1))``; other
inits use the same rule, ``w * level``.

``k_1`` is the layer's density (``--density`` keeps its meaning: the kept fraction); the inner
coats are ``k_i = k_1 * coat_ratios[i-2]``. The default ratios are the paper's ResNet-50 /
ImageNet setting, densities 0.30 / 0.079 / 0.032.

Gradient, as the paper's code does it (a sum of one straight-through mask per coat, each on
``|score|``): every coat passes the upstream gradient unchanged, so
``d(effective weight) / d(score) = C * w * sign(score)`` for every weight, whatever its level.

Stored: one part ``levels`` of ``n`` symbols over ``C + 1`` values, with exactly
``kept_count(n, k_i)`` symbols ``>= i`` for each coat. The paper counts
``N * (1 + k_2 + ... + k_C)`` bits (:meth:`Multicoat.paper_bits`). That count is not a bound a
lossless code of the levels can always reach: the level histogram is fixed by the densities,
and an unstructured layer needs ``N * H(histogram)`` bits, 1.208 bits per weight at
0.30 / 0.079 / 0.032 against the count's 1.111. The entropy codec comes within about 1 % of that
bound and is below the paper's count at low first-coat densities (0.1 or less, say).

Hardware: frozen weights regenerated from the seed; a PE adds a small integer multiple of the
activation (sign bit plus ``ceil(log2(C+1))`` level bits, a shift-add).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..masks import kept_count, top_fraction_mask
from .base import LayerCost, LayerItem, Method, MethodConfig, Part, register_method
from .edge_popup import initial_scores
from .freezing import own_config

__all__ = [
    "PAPER_COAT_RATIOS",
    "Multicoat",
    "MulticoatConfig",
    "coat_counts",
    "coat_densities",
    "levels_of",
]

#: the paper's ResNet-50 / ImageNet inner coats relative to the first: 0.079/0.30, 0.032/0.30
PAPER_COAT_RATIOS = (0.2633, 0.1067)
#: at most 255 coats: a level 0..C must fit one byte (the codecs take 2..256 symbols)
MAX_COATS = 255


SCALES = ("second-moment", "first-coat")


@dataclass(frozen=True)
class MulticoatConfig(MethodConfig):
    """coat_ratios: the inner coats' densities relative to the first coat (the layer's
    density): ``k_i = density * coat_ratios[i-2]``, strictly decreasing values in (0, 1).
    ``()`` leaves one coat (a plain binary mask with edge-popup's selection).
    scale: what ``scale_by_density`` divides the frozen weights by the square root of:
    ``"first-coat"`` is the paper's k_1 (sigma = sqrt(2 / (fan_in k_1))); the default
    ``"second-moment"`` is E[level**2] = sum_i (2i-1) k_i, which keeps a layer's output
    variance where edge-popup's is (with the paper's rule the logits of a network without
    batch norm grow about 1.5x per layer at the default coats, and training stalls)."""

    method = "multicoat"
    coat_ratios: tuple[float, ...] = PAPER_COAT_RATIOS
    scale: str = "second-moment"

    def check(self) -> None:
        if self.scale not in SCALES:
            self.fail("scale", f"must be one of {', '.join(SCALES)}, got {self.scale!r}")
        ratios = self.coat_ratios
        for i, r in enumerate(ratios):
            if not (0.0 < r < 1.0):
                self.fail("coat_ratios", f"must lie in (0, 1), got {r!r} at position {i}")
        for i in range(1, len(ratios)):
            if not ratios[i] < ratios[i - 1]:
                self.fail(
                    "coat_ratios",
                    f"must be strictly decreasing (nested coats), got {list(ratios)}",
                )
        if len(ratios) + 1 > MAX_COATS:
            self.fail("coat_ratios", f"allows at most {MAX_COATS} coats, got {len(ratios) + 1}")

    @property
    def coats(self) -> int:
        """C, the number of coats (thresholds)."""
        return 1 + len(self.coat_ratios)


def coat_densities(config: MulticoatConfig, density: float) -> tuple[float, ...]:
    """(k_1, ..., k_C): the kept fraction of each coat, k_1 = ``density``."""
    return (density, *(density * r for r in config.coat_ratios))


def coat_counts(n: int, config: MulticoatConfig, density: float) -> tuple[int, ...]:
    """Weights inside each coat of a layer of ``n`` weights (non-increasing)."""
    return tuple(kept_count(n, k) for k in coat_densities(config, density))


def levels_of(scores: torch.Tensor, config: MulticoatConfig, density: float) -> torch.Tensor:
    """uint8 level (0..C) of each weight: the number of coats its ``|score|`` passes.

    Every coat is a :func:`~hiddenite.masks.top_fraction_mask` (exact count, ties to the
    lowest index), so the coats are nested: the top-m sets of one total order.
    """
    level = torch.zeros(scores.shape, dtype=torch.uint8, device=scores.device)
    for k in coat_densities(config, density):
        level += top_fraction_mask(scores, k).view(torch.uint8)
    return level


class _LeveledWeight(torch.autograd.Function):
    """``weight * level``; the scores get ``C * upstream * weight * sign(score)``."""

    @staticmethod
    def forward(ctx, weight, scores, level, coats):
        ctx.save_for_backward(weight, scores)
        ctx.coats = coats
        return weight * level

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        grad_scores = grad * weight
        grad_scores.mul_(torch.sgn(scores))
        grad_scores.mul_(float(ctx.coats))
        return None, grad_scores, None, None


def frozen_coat_counts(n: int, config: MulticoatConfig, density: float, counts: Any) -> tuple:
    """Free positions inside each coat of a layer restricted by freezing ``counts``: the
    first coat ``counts.free_kept`` (with the locked ones it keeps ``kept_count(n, density)``),
    each inner coat ``kept_count(n, k_i)`` (ConfigError when the free kept ones cannot hold
    it)."""
    inner = coat_counts(n, config, density)[1:]
    if inner and inner[0] > counts.free_kept:
        raise ConfigError(
            f"method 'multicoat' under frozen: coat 2 keeps {inner[0]} of {n} weights, more "
            f"than the {counts.free_kept} free kept ones: lower locked or coat_ratios"
        )
    return (counts.free_kept, *inner)


class Multicoat(Method):
    """Under ``frozen`` (``freezable``): freezing fixes the level, as it fixes edge-popup's
    bit: a frozen-pruned weight is at level 0, a frozen-locked one at level 1 (in the first,
    connectivity coat, at unit multiplier); the coats are chosen among the free positions
    (the first keeps ``free_kept`` of them, coat i still ``kept_count(n, k_i)``), which store
    one level each."""

    name = "multicoat"
    config_type = MulticoatConfig
    streams = ("scores",)
    freezable = True

    def scale_density(self, config: MethodConfig, density: float) -> float | None:
        if config.scale == "first-coat":
            return density  # the paper: sigma = sqrt(2 / (fan_in * k_1))
        # E[level**2] = sum_i (2i - 1) k_i (level L contributes L**2 = sum_{i<=L} (2i - 1)):
        # dividing by its root keeps each layer's output variance where edge-popup's is
        return min(1.0, sum((2 * i + 1) * k for i, k in enumerate(coat_densities(config, density))))

    def setup(self, layer: Any) -> None:
        layer.scores = nn.Parameter(torch.zeros_like(layer.weight))

    def initialize(self, layer: Any) -> None:
        with torch.no_grad():
            layer.scores.copy_(initial_scores(layer))
            freezing = layer.__dict__.get("freezing")
            if freezing is not None:  # a zero score gets no gradient: frozen stays frozen
                layer.scores.view(-1).masked_fill_(freezing.frozen(layer), 0.0)

    def levels(self, layer: Any) -> torch.Tensor:
        """The layer's uint8 levels (weight-shaped)."""
        config = own_config(layer)
        freezing = layer.__dict__.get("freezing")
        if freezing is None:
            return levels_of(layer.scores, config, layer.density)
        free, locked = freezing.pattern(layer)
        counts = frozen_coat_counts(layer.weight.numel(), config, layer.density, freezing.counts)
        level = locked.to(torch.uint8)  # locked: level 1; pruned: level 0
        values = layer.scores.detach().reshape(-1)[free]
        if free.numel():
            free_level = torch.zeros(free.numel(), dtype=torch.uint8, device=level.device)
            for m in counts:
                free_level += top_fraction_mask(values, m / free.numel()).view(torch.uint8)
            level[free] = free_level
        return level.reshape(layer.weight.shape)

    def weight(self, layer: Any) -> torch.Tensor:
        coats = own_config(layer).coats
        return _LeveledWeight.apply(layer.weight, layer.scores, self.levels(layer), coats)

    def support(self, layer: Any) -> torch.Tensor:
        if "freezing" in layer.__dict__ and layer.__dict__["freezing"] is not None:
            return self.levels(layer) > 0
        return top_fraction_mask(layer.scores, layer.density)  # the first (outer) coat

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("scores",)

    def parts(self, shape, config, density) -> list[Part]:
        return [Part("levels", math.prod(shape), config.coats + 1)]

    def paper_bits(self, shape, config: MulticoatConfig, density: float) -> float:
        """The paper's size count of a layer's multicoated mask: N * (1 + k_2 + ... + k_C)."""
        return math.prod(shape) * (1.0 + sum(coat_densities(config, density)[1:]))

    def frozen_parts(self, shape, config, density, counts) -> list[Part]:
        frozen_coat_counts(math.prod(shape), config, density, counts)  # ConfigError
        return [Part("levels", counts.free, config.coats + 1)]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        levels = self.levels(layer).detach().reshape(-1)
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # the free positions' levels only
            levels = freezing.gather(layer, levels)
        levels = levels.to("cpu").numpy()
        if own_config(layer).coats == 1:
            return {"levels": levels.astype(np.bool_)}  # a binary part is stored as bools
        return {"levels": levels}

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        levels = torch.from_numpy(np.asarray(arrays["levels"]).astype(np.float32))
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # free positions' scores; 0 at the frozen ones
            levels = freezing.scatter(layer, levels.reshape(-1).to(layer.scores.device))
        with torch.no_grad():  # |score| = level: each coat re-selects exactly the levels >= i
            layer.scores.copy_(levels.reshape(layer.scores.shape).to(layer.scores))

    def check_layer(self, item: LayerItem) -> None:
        self._check(item, None)

    def frozen_check_layer(self, item: LayerItem, counts: Any) -> None:
        self._check(item, counts)

    def _check(self, item: LayerItem, frozen: Any) -> None:
        config = item.config
        levels = np.asarray(item.arrays["levels"]).astype(np.int64).reshape(-1)
        n = math.prod(item.shape)
        size = n if frozen is None else frozen.free
        if levels.size != size:
            raise ValueError(f"layer {item.name!r} has {levels.size} levels for {size} weights")
        top = int(levels.max(initial=0))
        if top > config.coats or int(levels.min(initial=0)) < 0:
            raise ValueError(
                f"layer {item.name!r} has level {top}, but {config.coats} coats allow "
                f"0..{config.coats}"
            )
        histogram = np.bincount(levels, minlength=config.coats + 1)
        inside = np.cumsum(histogram[::-1])[::-1]  # inside[i]: weights with level >= i
        densities = coat_densities(config, item.density)
        if frozen is None:
            counts = coat_counts(n, config, item.density)
        else:
            try:
                counts = frozen_coat_counts(n, config, item.density, frozen)
            except ConfigError as exc:
                raise ValueError(f"layer {item.name!r}: {exc}") from None
        for i, (k, m) in enumerate(zip(densities, counts, strict=True), 1):
            if int(inside[i]) != m:
                raise ValueError(
                    f"layer {item.name!r} has {int(inside[i])} of {n} weights in coat {i}, "
                    f"but that coat's density {k:g} keeps {m}"
                )

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost(
            "prng", 1 + math.ceil(math.log2(config.coats + 1)), "shift-add", ("weights",)
        )

    def describe(self, layer: Any) -> str:
        ks = ", ".join(f"{k:g}" for k in coat_densities(own_config(layer), layer.density))
        return f"method=multicoat, density={layer.density:g} (coats {ks})"


register_method(Multicoat())
