"""Supermask selection: keep the top-``k`` fraction of scores, straight-through gradient.

``density`` (k) is always the fraction of weights KEPT. A layer of ``n`` weights keeps
exactly ``kept_count(n, k) = floor(k*n + 0.5)`` of them (round half up).

Selection is by threshold, not by a full sort: the ``m``-th largest score is found with a
sample-bracketed selection (a deterministic strided sample brackets the threshold, one
pass counts what lies above the bracket, and ``kthvalue`` runs on the few values inside it),
falling back to ``torch.kthvalue`` over all values when the bracket misses. On untied scores
the result equals a full-sort reference exactly; with ties at the threshold the kept set is
completed by index order (``torch.topk``) so the count is always exact.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "GlobalThreshold",
    "kept_count",
    "straight_through",
    "threshold_for_top",
    "top_fraction_mask",
]

_SAMPLE = 16384
_BRACKET_SIGMAS = 6.0
_SMALL = 1 << 15
_GOLDEN = 2654435761


def kept_count(n: int, density: float) -> int:
    """Number of weights kept out of ``n`` at ``density``: floor(density*n + 0.5)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density (kept fraction) must be in [0, 1], got {density}")
    return min(n, math.floor(density * n + 0.5))


def threshold_for_top(values: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m``-th largest entry of 1-D ``values`` (0-dim tensor), for 1 <= m <= len."""
    n = values.numel()
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    if n <= _SMALL:
        return torch.kthvalue(values, n - m + 1).values
    idx = (torch.arange(_SAMPLE, dtype=torch.int64, device=values.device) * _GOLDEN) % n
    sample = torch.sort(values[idx]).values
    # rank (from the top) of the threshold inside the sample, and its sampling spread
    q = m / n
    centre = q * _SAMPLE
    spread = _BRACKET_SIGMAS * math.sqrt(q * (1.0 - q) * _SAMPLE) + 2.0
    hi_rank = int(centre - spread)  # fewer than m lie above hi (with high probability)
    lo_rank = int(centre + spread)  # more than m lie at or above lo
    hi = sample[_SAMPLE - 1 - hi_rank] if hi_rank >= 0 else None
    lo = sample[_SAMPLE - 1 - lo_rank] if lo_rank < _SAMPLE else None
    above = 0 if hi is None else int((values > hi).sum())
    if above < m:
        if lo is None and hi is None:
            band = values
        elif lo is None:
            band = values[values <= hi]
        elif hi is None:
            band = values[values >= lo]
        else:
            band = values[(values >= lo) & (values <= hi)]
        need = m - above
        if need <= band.numel():
            return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(values, n - m + 1).values


def top_fraction_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) keeping the ``kept_count`` largest ``|scores|``."""
    flat = scores.detach().reshape(-1).abs()
    n = flat.numel()
    m = kept_count(n, density)
    if m == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if m == n:
        return torch.ones_like(scores, dtype=torch.bool)
    t = threshold_for_top(flat, m)
    mask = flat >= t
    if int(mask.sum()) != m:  # ties at the threshold: complete deterministically
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.topk(flat, m, sorted=False).indices] = True
    return mask.reshape(scores.shape)


class _StraightThrough(torch.autograd.Function):
    """Forward: the 0/1 mask as float. Backward: the gradient passes unchanged to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a float tensor whose gradient flows straight through to ``scores``."""
    return _StraightThrough.apply(scores, mask)


class GlobalThreshold:
    """One threshold over the scores of several layers (global top-``k`` selection).

    Layers call :meth:`threshold`; it is recomputed only when some layer's scores changed
    (tracked by tensor version counters), so one forward pass computes it once.
    """

    def __init__(self, density: float) -> None:
        kept_count(1, density)  # validates
        self.density = density
        self._layers: list = []
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def register(self, layer) -> None:
        """Add a layer (anything with a ``scores`` tensor) to the group."""
        self._layers.append(layer)

    @property
    def layers(self) -> list:
        return list(self._layers)

    def threshold(self) -> torch.Tensor | None:
        """The global threshold on |score|, or None when nothing or everything is kept."""
        key = tuple((id(layer.scores), layer.scores._version) for layer in self._layers)
        if key != self._key:
            flat = torch.cat([layer.scores.detach().reshape(-1).abs() for layer in self._layers])
            m = kept_count(flat.numel(), self.density)
            if m in (0, flat.numel()):
                value = None if m == flat.numel() else torch.tensor(math.inf)
            else:
                value = threshold_for_top(flat, m)
            self._key, self._value = key, value
        return self._value
