"""Freezing as a capability of the seam: a method whose binary connectivity mask ``frozen`` may
restrict to the positions a seed leaves free (Otsuka et al., TMLR 2025).

A method declares ``freezable = True`` (:class:`~hiddenite.methods.base.Method`) when it learns
a keep/prune connectivity mask by a top-k of a score per weight. ``frozen`` with
``inner=NAME`` then sets ``layer.freezing`` (a :class:`Freezing`) before delegating to it, and
the method:

- selects its connectivity as :meth:`Freezing.select` does: every frozen-locked position plus
  the ``free_kept`` free positions of largest ``|score|`` (ties to the lowest position), never
  a frozen-pruned one, so the layer's kept count is exactly ``kept_count(n, density)``;
- reads its own config with :func:`own_config` (``layer.method_config`` is the ``frozen``
  config);
- declares, exports and restores its connectivity only over the free positions (in position
  order), through :meth:`~hiddenite.methods.base.Method.frozen_parts` and
  :meth:`~hiddenite.methods.base.Method.frozen_check_layer`; what it stores per *kept* weight
  (a sign, a magnitude level) covers the locked ones too, as it is used there.

Which positions are frozen: the layer's ``frozen`` PRNG stream gives one 32-bit word per
position; positions ranked by word, ascending, ties by index; the first
``kept_count(n, pruned)`` are frozen pruned, the next ``kept_count(n, locked)`` frozen locked,
the rest free (:func:`frozen_pattern`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..masks import top_fraction_mask
from .base import MethodConfig

__all__ = ["Freezing", "FrozenCounts", "frozen_pattern", "own_config"]


@dataclass(frozen=True)
class FrozenCounts:
    """A layer's position counts: frozen pruned, frozen locked, free, and kept among free
    (``free_kept`` is None under global scope, where the group decides it)."""

    n: int
    pruned: int
    locked: int
    free_kept: int | None

    @property
    def free(self) -> int:
        return self.n - self.pruned - self.locked

    @property
    def kept(self) -> int | None:
        return None if self.free_kept is None else self.locked + self.free_kept


def frozen_pattern(words: torch.Tensor, counts: FrozenCounts) -> tuple[torch.Tensor, torch.Tensor]:
    """(free positions ascending, locked as a boolean over all positions) from one PRNG word
    per position: ranked by word, ties by index; the first ``counts.pruned`` are pruned, the
    next ``counts.locked`` locked."""
    order = torch.sort(words.reshape(-1), stable=True).indices
    locked = torch.zeros(words.numel(), dtype=torch.bool, device=words.device)
    locked[order[counts.pruned : counts.pruned + counts.locked]] = True
    free = torch.sort(order[counts.pruned + counts.locked :]).values
    return free, locked


class Freezing:
    """One layer's frozen positions, as ``frozen`` hands them to its inner method.

    counts: the layer's :class:`FrozenCounts`; inner_config: the inner method's own config.
    The pattern is derived from the layer's ``frozen`` stream once, then kept per device.
    """

    def __init__(self, counts: FrozenCounts, inner_config: MethodConfig) -> None:
        self.counts = counts
        self.inner_config = inner_config
        self._patterns: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def pattern(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(free positions, locked boolean over all positions) on the layer's device."""
        device = layer.weight.device
        key = str(device)
        if key not in self._patterns:
            if "cpu" not in self._patterns:
                words = layer.words(layer.weight.numel(), "frozen").to("cpu")
                self._patterns["cpu"] = frozen_pattern(words, self.counts)
            free, locked = self._patterns["cpu"]
            self._patterns[key] = (free.to(device), locked.to(device))
        return self._patterns[key]

    def select(self, layer: Any, scores: torch.Tensor) -> torch.Tensor:
        """Flat boolean connectivity: every locked position, plus the ``free_kept`` free
        positions of largest ``|score|`` (ties to the lowest position)."""
        free, locked = self.pattern(layer)
        kept = locked.clone()
        counts = self.counts
        if counts.free:
            values = scores.detach().reshape(-1)[free]
            kept[free] = top_fraction_mask(values, counts.free_kept / counts.free)
        return kept

    def frozen(self, layer: Any) -> torch.Tensor:
        """Flat boolean: the frozen positions (pruned or locked)."""
        free, _ = self.pattern(layer)
        out = torch.ones(layer.weight.numel(), dtype=torch.bool, device=free.device)
        out[free] = False
        return out

    def gather(self, layer: Any, flat: torch.Tensor) -> torch.Tensor:
        """The free positions' entries of a flat per-position tensor (position order)."""
        free, _ = self.pattern(layer)
        return flat.reshape(-1)[free.to(flat.device)]

    def scatter(self, layer: Any, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """A flat tensor over all positions: ``values`` at the free positions, ``fill`` at the
        frozen ones."""
        free, _ = self.pattern(layer)
        out = torch.full((layer.weight.numel(),), fill, dtype=values.dtype, device=values.device)
        out[free.to(values.device)] = values.reshape(-1)
        return out

    def __deepcopy__(self, memo: dict) -> Freezing:  # the pattern is re-derived on demand
        return Freezing(self.counts, self.inner_config)


def own_config(layer: Any) -> MethodConfig:
    """The config a method runs ``layer`` with: its inner config under ``frozen``, else the
    layer's method config."""
    freezing = layer.__dict__.get("freezing")
    return layer.method_config if freezing is None else freezing.inner_config
