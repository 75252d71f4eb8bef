"""``frozen``: a partially frozen random network (Otsuka et al., TMLR 2025), edge-popup inside.

Per layer of ``n`` weights, a seed-derived random set of positions is frozen *pruned* (mask
always 0) and another frozen *locked* (mask always 1); edge-popup learns a score for each of
the remaining *free* positions and keeps the top ones. Only the free positions cost stored
bits, so the model file shrinks by the frozen fraction (arXiv 2402.14029).

Which positions are frozen (the rule the tests and any hardware decoder follow):
  the layer's ``frozen`` PRNG stream (stream 3) gives one 32-bit word per position; the
  positions are ranked by word, ascending, ties by position index; the first
  ``kept_count(n, pruned)`` are frozen pruned, the next ``kept_count(n, locked)`` frozen
  locked, the rest are free.

``density`` is the layer's overall kept fraction: locked + kept among the free positions. Of
the ``n_free`` free positions, ``kept_count(n, density) - n_locked`` are kept (the top
``|score|``, ties by index); a density below the locked fraction or above the unfrozen
fraction is a ConfigError.

Per-layer ratios (:meth:`Frozen.layer_configs`) come from the global ``pruned``/``locked``
targets through ``distribution``:

- ``uniform``: every layer freezes ``pruned`` and locks ``locked`` (each rounded per layer).
- ``erk``: the unfrozen fraction ``1 - pruned`` is spread by Erdős–Rényi-Kernel (per-layer
  unfrozen density proportional to sum(shape) / prod(shape), layers that would exceed 1 fixed
  at 1 and the rest re-scaled, as RigL does).
- ``epl``: every layer gets the same number of unfrozen weights, capped at the layer size, the
  excess shared among the other layers.

For ``erk`` and ``epl`` the per-layer unfrozen counts are rounded (largest remainder) so that
the total frozen-pruned count is exactly ``kept_count(N, pruned)``; the locked weights are
then shared in proportion to each layer's unfrozen count (the locked share of the unfrozen
weights is the same in every layer, so pruned + locked < 1 holds per layer too), rounded so
that the total locked count is exactly ``kept_count(N, locked)``. Each layer's config records
its own ``pruned`` = count / n and ``locked`` = count / n with ``distribution="uniform"``, so
a single layer is self-describing. Each layer's density is the global density clipped, by
count, to [locked, unfrozen] of that layer (a layer whose unfrozen part is smaller than the
global density keeps all of its unfrozen weights); a global density above the global unfrozen
fraction or below the global locked fraction is a ConfigError.

``scope="global"`` (edge-popup's global scope over the free positions): the freezing pattern
of each layer is as above (and per-layer ratios come from ``distribution`` the same way), but
the density is met over all the layers converted together rather than per layer: of the
``N_free`` free positions of all layers, ``kept_count(N, density) - N_locked`` are kept, the
top ``|score|`` over all of them (ties to the earliest layer, then the lowest index, as
:class:`~hiddenite.masks.GlobalThreshold` does). A layer may then keep any number of its free
positions; the global density must lie in [N_locked / N, (N - N_pruned) / N] by count.

Stored: one binary part ``mask`` with one bit per free position (position order). Hardware:
1-bit frozen weights and the freezing pattern regenerated from the seed (streams ``weights``
and ``frozen``), a signed add per kept weight.

Composed with another method (``inner=NAME``, its own arguments in ``inner_args``): any
registered method that declares ``freezable`` (a binary connectivity mask chosen by a top-k
of a score per weight; :mod:`hiddenite.methods.freezing`), found through the registry. The
freezing pattern, counts, distributions and density rules are the same; ``frozen`` sets
``layer.freezing`` and delegates the layer to the inner method, which keeps every locked
position, never a pruned one, chooses ``free_kept`` of the free positions, and stores its
connectivity for the free positions only (its declared :meth:`frozen_parts`). What each method
stores per frozen position (nothing) and per kept weight:

- ``trichromatic``: the connectivity colour is frozen; sign and magnitude still cover every
  kept weight, the locked ones included (they are used, so they are learned and stored);
- ``signed``: freezing fixes the ternary symbol, as it fixes edge-popup's bit: pruned = hide,
  locked = keep (never inverted), one symbol per free position;
- ``multicoat``: pruned = level 0, locked = level 1 (in the connectivity coat, unit
  multiplier); the coats are chosen among the free positions, one level per free position.

Global scope is edge-popup's alone (``scope="global"`` with another inner is a ConfigError);
hardware: the inner method's cost plus the ``frozen`` stream.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..masks import GlobalThreshold, kept_count, top_fraction_mask
from ..prng import register_stream
from .base import (
    METHODS,
    LayerCost,
    LayerItem,
    Method,
    MethodConfig,
    Part,
    get_method,
    method_config,
    register_method,
)
from .edge_popup import EdgePopup, initial_scores
from .freezing import Freezing, FrozenCounts, frozen_pattern

STREAM_FROZEN = register_stream("frozen", 3)

DISTRIBUTIONS = ("uniform", "erk", "epl")
#: the inner method ``frozen`` learns itself, over the free positions only (its layout since
#: version 1: one score and one stored bit per free position); any other inner is a registered
#: method that declares ``freezable`` and is delegated to
NATIVE_INNER = EdgePopup.name
SCOPES = ("layer", "global")

__all__ = [
    "DISTRIBUTIONS",
    "NATIVE_INNER",
    "SCOPES",
    "STREAM_FROZEN",
    "Frozen",
    "FrozenConfig",
    "FrozenCounts",
    "epl_densities",
    "erk_densities",
    "frozen_counts",
    "frozen_pattern",
]


@dataclass(frozen=True)
class FrozenConfig(MethodConfig):
    """pruned: fraction of the weights frozen pruned (the global target when a distribution
    spreads it); locked: fraction frozen locked (kept); distribution: ``uniform``, ``erk`` or
    ``epl`` (how the global targets become per-layer ratios); inner: the learned method over
    the free positions: ``edge-popup`` or any registered method that declares ``freezable``
    (``trichromatic``, ``signed``, ``multicoat``); inner_args: that method's own arguments (a
    JSON object, kept as its canonical text; ``{}``: its defaults); scope: ``layer`` (each
    layer meets the density) or ``global`` (one top-k over the free positions of all layers
    converted together; edge-popup only).

    Version 2 added ``scope``, version 3 ``inner_args``; older configs read as
    ``scope="layer"`` and ``inner_args={}``."""

    method = "frozen"
    VERSION = 3
    pruned: float = 0.3  # below 1 - the default density 0.5: something is left to learn
    locked: float = 0.0
    distribution: str = "uniform"
    inner: str = NATIVE_INNER
    inner_args: str = "{}"
    scope: str = "layer"

    def __post_init__(self) -> None:
        if isinstance(self.inner_args, dict):  # a JSON object, as --method-arg parses it
            object.__setattr__(self, "inner_args", json.dumps(self.inner_args, sort_keys=True))
        elif not isinstance(self.inner_args, str):
            self.fail("inner_args", f"must be a JSON object, got {self.inner_args!r}")
        super().__post_init__()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        version = data.get("version") if isinstance(data, dict) else None
        if version in (1, 2) and not isinstance(version, bool):
            added = ("scope", "inner_args") if version == 1 else ("inner_args",)
            late = [field for field in added if field in data]
            if late:
                raise ConfigError(
                    f"method 'frozen': a version-{version} config has no {late[0]}; write "
                    f"version {cls.VERSION} to set {late[0]}"
                )
            data = {**data, "version": cls.VERSION}  # they meant layer scope, no inner args
        return super().from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["inner_args"] = json.loads(self.inner_args)
        return data

    def check(self) -> None:
        for field in ("pruned", "locked"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                self.fail(field, f"must be in [0, 1), got {value}")
        if self.pruned + self.locked >= 1.0:
            self.fail(
                "pruned",
                f"+ locked must be < 1 (some weights must stay free), got "
                f"{self.pruned} + {self.locked}",
            )
        if self.distribution not in DISTRIBUTIONS:
            self.fail(
                "distribution",
                f"must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}",
            )
        if self.scope not in SCOPES:
            self.fail("scope", f"must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        try:
            args = json.loads(self.inner_args)
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            self.fail("inner_args", f"must be a JSON object, got {self.inner_args!r}")
        if self.inner == NATIVE_INNER:
            if args:
                self.fail(
                    "inner_args",
                    f"must be empty with inner={NATIVE_INNER!r} (its scope is frozen's scope "
                    f"argument), got {self.inner_args}",
                )
            return
        inner = get_method(self.inner) if self.inner != self.method else None
        problem = inner.freezing_problem(method_config(self.inner, **args)) if inner else None
        if inner is None or problem:
            self.fail(
                "inner",
                f"{self.inner!r} cannot be frozen ({problem or 'freezing cannot nest'}): choose "
                f"one of {', '.join([NATIVE_INNER, *freezable_methods()])}",
            )
        if self.scope != "layer":
            self.fail(
                "scope", f"must be 'layer' with inner={self.inner!r} (global needs edge-popup)"
            )

    @property
    def inner_config(self) -> MethodConfig:
        """The inner method's own config."""
        return method_config(self.inner, **json.loads(self.inner_args))


def freezable_methods() -> list[str]:
    """Registered methods that declare a connectivity mask ``frozen`` can restrict."""
    return sorted(name for name, m in METHODS.items() if m.freezable)


def frozen_counts(n: int, config: FrozenConfig, density: float) -> FrozenCounts:
    """The counts of a layer of ``n`` weights; ConfigError if ``density`` cannot be met
    (per layer under layer scope; under global scope ``free_kept`` is None and the density is
    checked over all layers by :meth:`Frozen.layer_configs`)."""
    pruned = kept_count(n, config.pruned)
    locked = kept_count(n, config.locked)
    free = n - pruned - locked
    if free < 0:
        raise ConfigError(
            f"method 'frozen': a layer of {n} weights freezes {pruned} pruned and {locked} "
            f"locked, more than it has: lower pruned ({config.pruned}) or locked "
            f"({config.locked})"
        )
    if config.scope == "global":
        return FrozenCounts(n, pruned, locked, None)
    kept = kept_count(n, density)
    free_kept = kept - locked
    if not 0 <= free_kept <= free:
        limit = "below" if free_kept < 0 else "above"
        raise ConfigError(
            f"method 'frozen': density {density} keeps {kept} of {n} weights, {limit} what "
            f"the freezing allows ({locked} locked .. {locked + free} = locked + free): choose "
            f"a density in [{config.locked:g}, {1.0 - config.pruned:g}], or lower "
            f"{'locked' if free_kept < 0 else 'pruned'}"
        )
    return FrozenCounts(n, pruned, locked, free_kept)


# ------------------------------------------------------------------------- distributions


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel per-layer densities for a global ``density`` (RigL's algorithm):
    density_l = eps * sum(shape_l) / prod(shape_l), a layer that would exceed 1 is fixed at 1
    (the largest first, one round at a time) and eps re-solved for the rest."""
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        if not rest:
            return [1.0] * len(shapes)
        target = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = target / sum(raw[i] * sizes[i] for i in rest)
        top = max(raw[i] for i in rest)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in rest if raw[i] == top)


def epl_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Equal-per-layer densities for a global ``density``: each layer the same number of kept
    weights, capped at its size, the excess shared equally among the other layers."""
    sizes = [math.prod(s) for s in shapes]
    budget = density * sum(sizes)
    capped: set[int] = set()
    while True:
        rest = [i for i in range(len(sizes)) if i not in capped]
        if not rest:
            return [1.0] * len(sizes)
        share = (budget - sum(sizes[i] for i in capped)) / len(rest)
        over = {i for i in rest if sizes[i] <= share}
        if not over:
            return [1.0 if i in capped else share / sizes[i] for i in range(len(sizes))]
        capped |= over


def _apportion(reals: list[float], total: int, caps: list[int]) -> list[int]:
    """Integers near ``reals`` summing to ``total``, each in [0, cap]: floors, then +1 by
    largest remainder (ties by index), or -1 by smallest remainder."""
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot apportion {total} within caps summing to {sum(caps)}")
    counts = [min(cap, max(0, math.floor(x))) for x, cap in zip(reals, caps, strict=True)]
    remainder = [x - math.floor(x) for x in reals]
    by_largest = sorted(range(len(reals)), key=lambda i: (-remainder[i], i))
    while sum(counts) < total:
        for i in by_largest:
            if sum(counts) < total and counts[i] < caps[i]:
                counts[i] += 1
    while sum(counts) > total:
        for i in reversed(by_largest):
            if sum(counts) > total and counts[i] > 0:
                counts[i] -= 1
    return counts


def _clip_density(n: int, counts: tuple[int, int], density: float) -> float:
    """``density`` for a layer of ``n`` with (pruned, locked) counts, clipped by count to
    [locked, n - pruned]."""
    pruned, locked = counts
    kept = kept_count(n, density)
    if kept < locked:
        return locked / n
    if kept > n - pruned:
        if n == pruned:
            raise ConfigError(
                f"method 'frozen': a layer of {n} weights would be entirely frozen pruned: "
                "lower pruned or use another distribution"
            )
        return (n - pruned) / n
    return density


# ------------------------------------------------------------------------- the method


class _FrozenMaskedWeight(torch.autograd.Function):
    """``weight * mask``; the gradient reaches the free scores straight through (edge-popup:
    upstream * weight * sign(score) at each free position)."""

    @staticmethod
    def forward(ctx, weight, scores, mask, free):
        ctx.save_for_backward(weight, scores, free)
        return weight * mask.view(torch.uint8)

    @staticmethod
    def backward(ctx, grad):
        weight, scores, free = ctx.saved_tensors
        grad_scores = (grad * weight).reshape(-1)[free]
        grad_scores.mul_(torch.sgn(scores))
        return None, grad_scores, None, None


class Frozen(Method):
    name = "frozen"
    config_type = FrozenConfig
    streams = ("scores", "frozen")  # composed: "frozen" plus the inner method's own streams

    @staticmethod
    def _inner(config: FrozenConfig) -> Method | None:
        """The inner method ``frozen`` delegates to; None when it learns edge-popup itself."""
        return None if config.inner == NATIVE_INNER else get_method(config.inner)

    # -- planning ------------------------------------------------------------------------------
    def layer_configs(self, shapes, config, density):
        sizes = [math.prod(s) for s in shapes]
        total = sum(sizes)
        if density > 1.0 - config.pruned + 1e-12 or density < config.locked - 1e-12:
            raise ConfigError(
                f"method 'frozen': density {density} cannot be met with pruned={config.pruned} "
                f"and locked={config.locked}: the kept fraction must lie in "
                f"[locked, 1 - pruned] = [{config.locked:g}, {1.0 - config.pruned:g}]; "
                "change density, pruned or locked"
            )
        if config.distribution == "uniform":
            chosen = [(config, n) for n in sizes]
        else:
            spread = erk_densities if config.distribution == "erk" else epl_densities
            unfrozen_total = total - kept_count(total, config.pruned)
            reals = [d * n for d, n in zip(spread(shapes, 1.0 - config.pruned), sizes, strict=True)]
            unfrozen = _apportion(reals, unfrozen_total, sizes)
            if 0 in unfrozen:
                raise ConfigError(
                    f"method 'frozen': with pruned={config.pruned} the {config.distribution} "
                    f"distribution freezes layer {unfrozen.index(0)} (shape "
                    f"{list(shapes[unfrozen.index(0)])}) entirely: lower pruned"
                )
            locked_total = kept_count(total, config.locked)
            share = [locked_total * u / unfrozen_total for u in unfrozen]
            caps = [u - 1 for u in unfrozen]  # every layer keeps a free position
            if locked_total > sum(caps):
                raise ConfigError(
                    f"method 'frozen': locked={config.locked} leaves no free position in some "
                    "layers: lower locked or pruned"
                )
            locked = _apportion(share, locked_total, caps)
            chosen = [
                (config.replace(pruned=(n - u) / n, locked=r / n, distribution="uniform"), n)
                for n, u, r in zip(sizes, unfrozen, locked, strict=True)
            ]
        if config.scope == "global":
            self._check_global(chosen, density)
            return [(layer_config, density) for layer_config, _ in chosen]
        out = []
        inner = self._inner(config)
        for shape, (layer_config, n) in zip(shapes, chosen, strict=True):
            counts = (kept_count(n, layer_config.pruned), kept_count(n, layer_config.locked))
            layer_density = _clip_density(n, counts, density)
            if inner is not None:  # the inner method's own density rules (ConfigError)
                inner_config = layer_config.inner_config
                inner.layer_configs([shape], inner_config, layer_density)
                layer_counts = frozen_counts(n, layer_config, layer_density)
                inner.frozen_parts(shape, inner_config, layer_density, layer_counts)
            out.append((layer_config, layer_density))
        return out

    @staticmethod
    def _check_global(chosen: list[tuple[FrozenConfig, int]], density: float) -> None:
        """ConfigError unless the global kept count lies in [locked, locked + free] by count."""
        total = sum(n for _, n in chosen)
        pruned = sum(kept_count(n, c.pruned) for c, n in chosen)
        locked = sum(kept_count(n, c.locked) for c, n in chosen)
        kept = kept_count(total, density)
        if not locked <= kept <= total - pruned:
            raise ConfigError(
                f"method 'frozen': global density {density} keeps {kept} of {total} weights, "
                f"outside what the freezing allows ({locked} locked .. {total - pruned} "
                "unfrozen): change density, pruned or locked"
            )

    def scale_density(self, config: MethodConfig, density: float) -> float | None:
        inner = self._inner(config)
        if inner is None:
            return density
        return inner.scale_density(config.inner_config, density)

    def link(self, layers: list[Any], config: MethodConfig) -> None:
        if config.scope != "global" or not layers:
            return
        counts = [layer.frozen_counts for layer in layers]
        free = sum(c.free for c in counts)
        kept = kept_count(sum(c.n for c in counts), layers[0].density)
        free_kept = kept - sum(c.locked for c in counts)
        if not 0 <= free_kept <= free:  # a plan from layer_configs never gets here
            raise ConfigError(
                f"method 'frozen': global density {layers[0].density} keeps {kept} weights, "
                f"which the {free} free positions cannot meet: change density, pruned or locked"
            )
        # one top-k over the free scores of all layers: kept_count(free, f) == free_kept
        group = GlobalThreshold(free_kept / free if free else 0.0, attribute="scores")
        for layer in layers:
            group.register(layer)
            layer.mask_group = group

    # -- the layer -----------------------------------------------------------------------------
    def _counts(self, layer: Any) -> FrozenCounts:
        return frozen_counts(layer.weight.numel(), layer.method_config, layer.density)

    def _pattern(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(free positions, locked boolean), derived from the seed once per device."""
        return layer.freezing.pattern(layer)

    def setup(self, layer: Any) -> None:
        config: FrozenConfig = layer.method_config
        counts = self._counts(layer)  # raises ConfigError when density cannot be met
        layer.frozen_counts = counts
        layer.mask_group = None  # set by link under global scope
        inner = self._inner(config)
        layer.freezing = Freezing(counts, config.inner_config)
        if inner is not None:
            shape = tuple(layer.weight.shape)
            inner.frozen_parts(shape, config.inner_config, layer.density, counts)  # its checks
            inner.setup(layer)
            return
        weight = layer.weight
        layer.scores = nn.Parameter(
            torch.zeros(counts.free, dtype=weight.dtype, device=weight.device)
        )

    def initialize(self, layer: Any) -> None:
        inner = self._inner(layer.method_config)
        if inner is not None:
            inner.initialize(layer)
            return
        free, _ = self._pattern(layer)
        with torch.no_grad():  # edge-popup's score of each free position (same stream)
            layer.scores.copy_(initial_scores(layer).reshape(-1)[free.to(layer.scores.device)])

    def _mask(self, layer: Any, in_forward: bool = False) -> torch.Tensor:
        free, locked = self._pattern(layer)
        counts = layer.frozen_counts
        group = layer.mask_group
        mask = locked.clone()
        if group is not None:  # global: the first layer refreshes the threshold once per pass
            mask[free] = group.layer_mask(layer, refresh=in_forward and group.is_first(layer))
        elif counts.free:
            chosen = top_fraction_mask(layer.scores, counts.free_kept / counts.free)
            mask[free] = chosen
        return mask.reshape(layer.weight.shape)

    def weight(self, layer: Any) -> torch.Tensor:
        inner = self._inner(layer.method_config)
        if inner is not None:
            return inner.weight(layer)
        free, _ = self._pattern(layer)
        mask = self._mask(layer, in_forward=True)
        return _FrozenMaskedWeight.apply(layer.weight, layer.scores, mask, free)

    def support(self, layer: Any) -> torch.Tensor:
        inner = self._inner(layer.method_config)
        return self._mask(layer) if inner is None else inner.support(layer)

    def weight_factor(self, layer: Any) -> torch.Tensor | None:
        inner = self._inner(layer.method_config)
        return self._mask(layer).to(torch.int8) if inner is None else inner.weight_factor(layer)

    def frozen_masks(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(frozen pruned, frozen locked) as weight-shaped booleans."""
        free, locked = self._pattern(layer)
        pruned = ~locked
        pruned[free] = False
        shape = layer.weight.shape
        return pruned.reshape(shape), locked.reshape(shape)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        inner = self._inner(layer.method_config)
        return ("scores",) if inner is None else inner.owned_state(layer)

    # -- storage -------------------------------------------------------------------------------
    def parts(self, shape, config, density) -> list[Part]:
        counts = frozen_counts(math.prod(shape), config, density)
        inner = self._inner(config)
        if inner is None:
            return [Part("mask", counts.free, 2)]
        return inner.frozen_parts(tuple(shape), config.inner_config, density, counts)

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        inner = self._inner(layer.method_config)
        if inner is not None:
            return inner.export(layer)
        free, _ = self._pattern(layer)
        bits = self._mask(layer).reshape(-1)[free]
        return {"mask": bits.detach().to("cpu").numpy()}

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        inner = self._inner(layer.method_config)
        if inner is not None:
            inner.restore(layer, arrays)
            return
        bits = torch.from_numpy(np.asarray(arrays["mask"], dtype=np.bool_)).reshape(-1)
        if bits.numel() != layer.scores.numel():
            raise ValueError(
                f"frozen: the mask part has {bits.numel()} bits, the layer has "
                f"{layer.scores.numel()} free positions"
            )
        with torch.no_grad():  # the top-k selection over the free scores re-selects the ones
            layer.scores.copy_(bits.to(layer.scores))
        if layer.mask_group is not None:
            layer.mask_group.invalidate()

    def kept(self, shape, config, density, counts) -> int:
        n = math.prod(shape)
        if config.scope == "global":  # the group decides: locked + the stored ones
            return kept_count(n, config.locked) + counts["mask"][1]
        return frozen_counts(n, config, density).kept

    def check(self, items: list[LayerItem]) -> None:
        layered = [item for item in items if item.config.scope == "layer"]
        for item in layered:
            self.check_layer(item)
        group = [item for item in items if item.config.scope == "global"]
        if not group:
            return
        for item in group:
            self.check_layer(item)
        total = sum(math.prod(item.shape) for item in group)
        locked = sum(kept_count(math.prod(item.shape), item.config.locked) for item in group)
        kept = locked + sum(int(np.count_nonzero(item.arrays["mask"])) for item in group)
        want = kept_count(total, group[0].density)
        if kept != want:
            raise ValueError(
                f"the frozen layers keep {kept} of {total} weights ({locked} locked), but "
                f"global density {group[0].density} keeps {want}"
            )

    def check_layer(self, item: LayerItem) -> None:
        n = math.prod(item.shape)
        try:
            counts = frozen_counts(n, item.config, item.density)
        except ConfigError as exc:
            raise ValueError(f"layer {item.name!r}: {exc}") from None
        inner = self._inner(item.config)
        if inner is not None:
            inner_item = LayerItem(
                item.name, item.shape, item.config.inner_config, item.density, item.arrays
            )
            inner.frozen_check_layer(inner_item, counts)
            return
        bits = np.asarray(item.arrays["mask"])
        if bits.size != counts.free:
            raise ValueError(
                f"layer {item.name!r} stores {bits.size} mask bits, but it has {counts.free} "
                "free positions"
            )
        if counts.free_kept is None:  # global scope: the kept count is checked over all layers
            return
        kept = int(np.count_nonzero(bits))
        if kept != counts.free_kept:
            raise ValueError(
                f"layer {item.name!r} keeps {kept} of its {counts.free} free weights, but "
                f"density {item.density} with {counts.locked} locked keeps {counts.free_kept}"
            )

    # -- hardware ------------------------------------------------------------------------------
    def cost(self, shape, config, density) -> LayerCost:
        inner = self._inner(config)
        if inner is None:
            return LayerCost("prng", 1, "add", ("weights", "frozen"))
        cost = inner.cost(shape, config.inner_config, density)
        return dataclasses.replace(cost, prng_streams=(*cost.prng_streams, "frozen"))

    def describe(self, layer: Any) -> str:
        c = layer.frozen_counts
        scope = ", global" if layer.mask_group is not None else ""
        config = layer.method_config
        inner = "" if config.inner == NATIVE_INNER else f", inner {config.inner_config.describe()}"
        return (
            f"method=frozen, density={layer.density:g} ({c.pruned} pruned, {c.locked} locked, "
            f"{c.free} free of {c.n}{scope}{inner})"
        )


register_method(Frozen())
