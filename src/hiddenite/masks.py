"""Supermask selection: keep the top-``k`` fraction of scores, straight-through gradient.

``density`` (k) is always the fraction of weights KEPT. A layer of ``n`` weights keeps
exactly ``kept_count(n, k) = floor(k*n + 0.5)`` of them (round half up).

Selection is by threshold, not by a full sort: the ``m``-th largest score is found by
selection. On the CPU that is a two-pass radix select over the float32 bit patterns
(``hiddenite.kernels.xorshift_cpu``; no copy, linear time even when most scores are tied,
as in a loaded model) for large layers, numpy's introselect (``np.partition``) otherwise, both
several times faster than ``torch.kthvalue`` there; on other devices a sample-bracketed selection (a
deterministic strided sample brackets the threshold, one pass counts what lies above the
bracket, and ``kthvalue`` runs on the few values inside it), falling back to
``torch.kthvalue`` over all values when the bracket misses. On untied scores
the result equals a full-sort reference exactly; with ties at the threshold the tied entries
of lowest index are kept, so the count is always exact and the choice deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels import topk_cpu, xorshift_cpu

__all__ = [
    "GlobalThreshold",
    "TopKSelector",
    "kept_count",
    "masked_weight",
    "straight_through",
    "threshold_for_top",
    "top_fraction_mask",
]

_ONE = np.float32(1.0)
_SAMPLE = 4096
_BRACKET_SIGMAS = 5.0
_SMALL = 1 << 15
_GOLDEN = 2654435761


def kept_count(n: int, density: float) -> int:
    """Number of weights kept out of ``n`` at ``density``: floor(density*n + 0.5)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density (kept fraction) must be in [0, 1], got {density}")
    return min(n, math.floor(density * n + 0.5))


def threshold_for_top(values: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m``-th largest entry of 1-D ``values`` (0-dim tensor), for 1 <= m <= len."""
    return _select(values, m)[0]


def _select(values: torch.Tensor, m: int) -> tuple[torch.Tensor, bool]:
    """(m-th largest value t, True if exactly m entries are known to be >= t)."""
    n = values.numel()
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        # numpy's introselect is several times faster than torch.kthvalue on the CPU; the
        # largest value left of the cut also tells whether t is tied
        array = values.detach().contiguous().numpy()
        k = n - m
        if k == 0:
            return torch.tensor(array.min()), False
        if (
            array.dtype == np.float32 and n > _SMALL
        ):  # two passes, no copy (hiddenite.kernels.xorshift_cpu)
            t, exact = xorshift_cpu.kth_smallest_float32(array, k)
            return torch.tensor(t), exact
        part = np.partition(array, k)
        return torch.tensor(part[k]), bool(part[:k].max() < part[k])
    if n <= _SMALL:
        return torch.kthvalue(values, n - m + 1).values, False
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
    above = 0 if hi is None else int(torch.count_nonzero(values > hi))
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
            t = torch.kthvalue(band, band.numel() - need + 1).values
            # everything above the band is > t and everything below it < t, so the count of
            # entries >= t is exactly m unless t occurs more than once in the band
            return t, int(torch.count_nonzero(band == t)) == 1
    return torch.kthvalue(values, n - m + 1).values, False


def top_fraction_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) keeping the ``kept_count`` largest ``|scores|``."""
    flat = scores.detach().reshape(-1).abs()
    n = flat.numel()
    m = kept_count(n, density)
    if m == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if m == n:
        return torch.ones_like(scores, dtype=torch.bool)
    t, exact = _select(flat, m)
    mask = flat >= t
    if not exact and int(torch.count_nonzero(mask)) != m:  # ties at the threshold
        mask = _break_ties(flat, t, m - int(torch.count_nonzero(flat > t)))
    return mask.reshape(scores.shape)


def _break_ties(flat: torch.Tensor, t: torch.Tensor, budget: int) -> torch.Tensor:
    """``flat > t``, plus the first ``budget`` entries (by index) equal to ``t``."""
    tied = flat == t
    return (flat > t) | (tied & (torch.cumsum(tied, 0) <= budget))


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


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with the straight-through gradient to ``|scores|`` (edge-popup)."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores)
        return weight * mask.view(torch.uint8)  # a uint8 factor is far cheaper than bool

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        return None, _score_gradient(grad, weight, scores), None


def _compiled(*tensors: torch.Tensor) -> bool:
    """True when the compiled CPU passes apply: float32 CPU tensors outside any graph."""
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors
    )


def _flat(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy().reshape(-1)


def _score_gradient(grad, weight, scores) -> torch.Tensor:
    """``grad * weight * sgn(scores)`` (one compiled pass on float32 CPU tensors)."""
    if _compiled(grad, weight, scores.detach()) and grad.shape == scores.shape == weight.shape:
        out = torch.empty(scores.shape, dtype=torch.float32)
        topk_cpu.score_gradient(_flat(grad), _flat(weight), _ONE, _flat(scores), _flat(out))
        return out
    grad_scores = grad * weight
    grad_scores.mul_(torch.sgn(scores))
    return grad_scores


class _SelectedWeight(torch.autograd.Function):
    """``weight * mask`` for the top-``m`` mask of ``|scores|``, written by the selector's
    compiled passes; backward as :class:`_MaskedWeight`, one compiled pass over the arrays
    the selector keeps for the layer (``plan``)."""

    @staticmethod
    def forward(ctx, weight, scores, selector, plan):
        ctx.save_for_backward(weight, scores)  # its version check guards the plan's views
        ctx.plan = plan
        out = torch.empty(plan.shape, dtype=torch.float32)
        flat = out.numpy().reshape(-1)
        state, band, where = selector._state, selector._band, selector._where
        if topk_cpu.select_product(
            plan.weight, plan.scale, plan.scores, plan.m, state, band, where, flat
        ):
            selector.hits += 1
        else:
            selector._select_all(plan, flat)
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        plan = ctx.plan
        if grad.is_contiguous() and not grad.requires_grad:  # float32: autograd casts to it
            out = torch.empty(plan.shape, dtype=torch.float32)
            topk_cpu.score_gradient(
                grad.numpy().reshape(-1),
                plan.weight,
                plan.scale,
                plan.scores,
                out.numpy().reshape(-1),
            )
            return None, out, None, None
        return None, _score_gradient(grad, weight, scores), None, None


class _Plan:
    """What a layer's steps need that does not change between them: flat numpy views of the
    scores and of the weights, or of the weights' signs as int8 with their one magnitude as
    ``scale`` (signed-constant weights: a quarter of the bytes), the kept count, the shape,
    and the key that tells whether the tensors are still the ones planned for."""

    __slots__ = ("held", "key", "m", "scale", "scores", "shape", "weight")

    def __init__(self, key, held, weight, scale, scores, m, shape) -> None:
        self.key, self.weight, self.scale, self.scores = key, weight, scale, scores
        self.m, self.shape = m, shape
        self.held = held  # the tensors planned for: their memory cannot be reused meanwhile


def _plan_key(weight: torch.Tensor, scores: torch.Tensor, density: float) -> tuple:
    """What voids a plan, in few accessor calls (each costs a few microseconds inside a step,
    where the caches are cold; twelve of them cost the MLP step about 3 %): the memory of the
    tensors (the plan holds them, so no other tensor can take their addresses: a new dtype,
    device or shape means new memory), the weights' version (an in-place write changes
    their signs), a layout made non-contiguous in place (``.data = x.t()``), the density.
    Not detected: the same memory reinterpreted in place with another shape or dtype of the
    same size (``.data = x.view(...)``): the plan reads the same flat values as before.
    Inference tensors keep no version: their plan reads the weights themselves, not signs."""
    return (
        weight.data_ptr(),
        scores.data_ptr(),
        None if weight.is_inference() else weight._version,
        weight.is_contiguous(),
        scores.is_contiguous(),
        density,
    )


def _weight_factors(weight: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """``(factors, scale)`` with ``factors[i] * scale == weight[i]`` exactly: the signs as
    int8 +-1 and the magnitude when every weight has the same one, else the weights and 1."""
    magnitude = np.abs(weight[:1])
    if weight.size and np.array_equal(np.abs(weight), np.broadcast_to(magnitude, weight.shape)):
        signs = np.where(np.signbit(weight), np.int8(-1), np.int8(1)).astype(np.int8)
        return signs, np.float32(magnitude[0])
    return weight, _ONE


def masked_weight(weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask``; the gradient reaches ``scores`` as ``upstream * weight * sign(scores)``.

    This is ``weight * straight_through(scores.abs(), mask)`` fused into one autograd node
    (the mask is chosen on ``|scores|``, so the gradient passes through ``abs``). ``weight``
    gets no gradient: it is frozen.
    """
    return _MaskedWeight.apply(weight, scores, mask)


class TopKSelector:
    """One layer's top-``k`` selection, warm-started from its previous threshold.

    :meth:`masked_weight` gives exactly ``masked_weight(weight, scores,
    top_fraction_mask(scores, density))`` (the same mask, ties to the lowest indices, the same
    float32 product and score gradient, bit for bit) in fewer passes over the layer. Training
    moves the threshold little from one step to the next, so the previous threshold ``t0``
    brackets the new one: one pass counts what lies above and inside ``[t0 - h, t0 + h]``,
    gathers the few values inside and writes ``weight * mask`` for every weight outside it;
    the threshold is selected among the gathered values and their products written. When
    the bracket misses (or holds too many values), the selection runs over all values, as
    :func:`top_fraction_mask` does. The remembered threshold only chooses the bracket: it never
    changes a result. Compiled passes run for contiguous float32 CPU tensors; other tensors
    take :func:`top_fraction_mask`.

    A step's fixed cost (paid by every layer, the larger part of the overhead for a small one)
    is kept low: the flat numpy views of ``weight`` and ``scores`` and the kept count are made
    once and reused while the tensors keep their memory, layout and dtype and the weights
    their version (the optimizer updates the scores in place); the selection with its product
    is one compiled call (:func:`hiddenite.kernels.topk_cpu.select_product`), and so is the
    score gradient. Weights of one magnitude (the signed-constant init) are read as int8
    signs times that magnitude, exactly, a quarter of the bytes of the memory-bound passes.
    The plan holds the tensors: after the layer's tensors are replaced (moved to another
    device, regenerated), the old memory is released at the layer's next forward pass.
    """

    BAND_LIMIT = 16384  # most values gathered from the bracket before selecting over all

    def __init__(self) -> None:
        self._state = np.zeros(3, dtype=np.float64)  # threshold, half-width, known (1.0)
        self._band = np.empty(0, dtype=np.float32)
        self._where = np.empty(0, dtype=np.int64)
        self._plan: _Plan | None = None
        self.hits = 0  # selections the bracket served (for benchmarks and tests)
        self.misses = 0

    def masked_weight(
        self, weight: torch.Tensor, scores: torch.Tensor, density: float
    ) -> torch.Tensor:
        """``weight * top_fraction_mask(scores, density)``, straight-through to ``scores``."""
        plan = self._plan
        if plan is None or plan.key != _plan_key(weight, scores, density):
            plan = self._plan = self._make_plan(weight, scores, density)
        if plan.scores is None:
            return masked_weight(weight, scores, top_fraction_mask(scores, density))
        return _SelectedWeight.apply(weight, scores, self, plan)

    def _make_plan(self, weight: torch.Tensor, scores: torch.Tensor, density: float) -> _Plan:
        """The arrays of a compiled step, or a plan without them (``scores`` None) when the
        tensors need :func:`top_fraction_mask` (not float32 on the CPU, not contiguous or
        of different shapes) or there is nothing to select (all or none kept)."""
        key = _plan_key(weight, scores, density)
        m = kept_count(scores.numel(), density)
        shape = tuple(scores.shape)
        fast = (
            _compiled(weight.detach(), scores.detach())
            and weight.shape == scores.shape
            and weight.is_contiguous()
            and scores.is_contiguous()
            and 0 < m < scores.numel()
        )
        held = (weight.detach(), scores.detach())
        if not fast:
            return _Plan(key, held, None, _ONE, None, m, shape)
        if self._band.size == 0:  # scratch of the compiled selection, made on first need
            self._band = np.empty(self.BAND_LIMIT + 1, dtype=np.float32)
            self._where = np.empty(self.BAND_LIMIT + 1, dtype=np.int64)
        factors, scale = held[0].numpy().reshape(-1), _ONE
        if not weight.is_inference():  # (writes to an inference tensor would go unseen)
            factors, scale = _weight_factors(factors)
        return _Plan(key, held, factors, scale, held[1].numpy().reshape(-1), m, shape)

    def _select_all(self, plan: _Plan, out: np.ndarray) -> None:
        """Write ``weight * mask`` (top ``plan.m`` of ``|scores|``) to ``out`` by a selection
        over all values, when the bracket missed (or no threshold is known yet)."""
        self.misses += 1
        weight, scale, scores, m = plan.weight, plan.scale, plan.scores, plan.m
        part = np.partition(np.abs(scores), scores.size - m)
        t = part[scores.size - m]
        above = int(np.count_nonzero(part > t))
        tied = int(np.count_nonzero(part == t))
        topk_cpu.remember(self._state, t, 0.0)
        topk_cpu.masked_product(weight, scale, scores, t, m - above, m - above == tied, out)


class GlobalThreshold:
    """One top-``k`` selection over the scores of several layers (global scope).

    The group keeps exactly ``kept_count(total, density)`` weights across its layers; ties
    at the threshold go to the earliest layers and lowest indices. The threshold is
    recomputed when the first registered layer runs its forward pass (once per pass) and
    whenever :meth:`layer_mask` sees that some layer's scores changed version.
    """

    def __init__(self, density: float, attribute: str = "scores") -> None:
        kept_count(1, density)  # validates
        self.density = density
        self.attribute = attribute  # the name of each layer's score tensor
        self._layers: list = []
        self._key: tuple | None = None
        self._threshold: torch.Tensor | None = None
        self._tie_budget: dict[int, int] = {}

    def register(self, layer) -> None:
        """Add a layer (anything with a score tensor named ``attribute``) to the group."""
        self._layers.append(layer)
        self._key = None

    @property
    def layers(self) -> list:
        return list(self._layers)

    def _scores(self, layer) -> torch.Tensor:
        return getattr(layer, self.attribute)

    def _versions(self) -> tuple:
        return tuple((self._scores(x).data_ptr(), self._scores(x)._version) for x in self._layers)

    def is_first(self, layer) -> bool:
        return bool(self._layers) and self._layers[0] is layer

    def invalidate(self) -> None:
        """Forget the cached threshold (after writing scores through ``.data``)."""
        self._key = None

    def _refresh(self) -> None:
        abs_scores = [self._scores(layer).detach().reshape(-1).abs() for layer in self._layers]
        flat = torch.cat(abs_scores)
        m = kept_count(flat.numel(), self.density)
        budgets: dict[int, int] = {}
        if m == 0:
            t = torch.tensor(math.inf)
        elif m == flat.numel():
            t = torch.tensor(-math.inf)
        else:
            t = threshold_for_top(flat, m)
            remaining = m - int((flat > t).sum())
            for layer, values in zip(self._layers, abs_scores, strict=True):
                tied = int((values == t).sum())
                budgets[id(layer)] = min(tied, remaining)
                remaining -= budgets[id(layer)]
        self._threshold, self._tie_budget = t, budgets
        self._key = self._versions()

    def threshold(self) -> torch.Tensor | None:
        """The global threshold on |score|: None when all weights are kept, inf when none."""
        if self._versions() != self._key:
            self._refresh()
        t = self._threshold
        return None if t is not None and float(t) == -math.inf else t

    def layer_mask(self, layer, refresh: bool = False) -> torch.Tensor:
        """Boolean mask of ``layer`` under the group's selection."""
        if refresh or self._versions() != self._key:
            self._refresh()
        values = self._scores(layer).detach().abs()
        t = self._threshold.to(values.device)
        budget = self._tie_budget.get(id(layer), 0)
        if budget == 0:
            return values > t if torch.isfinite(t) else values >= t
        flat = values.reshape(-1)
        return _break_ties(flat, t, budget).reshape(values.shape)
