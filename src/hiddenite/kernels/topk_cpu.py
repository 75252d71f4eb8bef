"""Compiled (numba) CPU passes of the edge-popup training step, on float32 arrays.

One step of a hidden layer selects the top ``m`` of ``|scores|``, multiplies the frozen
weights by the mask and, backwards, sends ``upstream * weight * sign(score)`` to the scores.
With torch ops that is about eight passes over the layer; these kernels do it in two
(:class:`hiddenite.masks.TopKSelector` drives them):

- :func:`bracket_product`: how many ``|s|`` lie above ``hi`` and inside ``[lo, hi]`` (does
  the bracket around the previous threshold hold the new one?), the few values inside (to
  select the threshold among them, not among all), and in the same pass the masked product of
  every weight outside the bracket; :func:`fix_band` writes the few inside;
- :func:`masked_product` (when the bracket misses): ``w * keep`` with ``keep = |s| > t``, plus
  the first ``budget`` entries equal to ``t`` by index (the tie rule of
  :func:`hiddenite.masks.top_fraction_mask`);
- :func:`score_gradient`: ``(g * w) * sign(s)``, in torch's order of operations.

Every result is bit-identical to the torch expression it replaces (float32 products in the
same order, no fast-math, no fused multiply-add).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "bracket_product",
    "fix_band",
    "masked_product",
    "score_gradient",
]

_BLOCK = 128


@njit(nogil=True, cache=True)
def bracket_product(weight, scores, lo, hi, out, band, where):
    """(count of ``|s| > hi``, count of ``lo <= |s| <= hi``); the latter values and their
    indices written to ``band`` and ``where`` in index order while they fit (one spare slot
    needed); and ``out = weight * (|s| > hi)``, which :func:`fix_band` finishes inside the
    bracket. Blocks are counted with vectorised loops (over a slice each: numba vectorises
    those); only a block holding a band value is gathered again, without branches (write
    always, advance on a member); the product is one vectorised loop."""
    above = 0
    inside = 0
    cap = band.size - 1
    n = scores.size
    for block in range((n + _BLOCK - 1) // _BLOCK):
        base = block * _BLOCK
        part = scores[base : min(base + _BLOCK, n)]
        high = 0
        members = 0
        for j in range(part.size):
            v = abs(part[j])
            high += v > hi
            members += (v >= lo) & (v <= hi)
        above += high
        if members and inside + members <= cap:
            k = inside
            for j in range(part.size):
                v = abs(part[j])
                band[k] = v
                where[k] = base + j
                k += (v >= lo) & (v <= hi)
        inside += members
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(n):
        out[i] = weight[i] * (one if abs(scores[i]) > hi else zero)
    return above, inside


@njit(nogil=True, cache=True)
def fix_band(weight, band, where, count, t, budget, out):
    """Finish :func:`bracket_product` for the ``count`` band entries (in index order): kept
    when ``|s| > t`` or among the first ``budget`` equal to ``t``."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    seen = 0
    for j in range(count):
        v = band[j]
        keep = v > t
        if v == t:
            keep = seen < budget
            seen += 1
        i = where[j]
        out[i] = weight[i] * (one if keep else zero)


@njit(nogil=True, cache=True)
def masked_product(weight, scores, t, budget, all_ties, out):
    """``out = weight * keep`` (float32 0/1 factor), ``keep`` = ``|s| > t`` or one of the
    first ``budget`` entries with ``|s| == t`` (all of them when ``all_ties``)."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if all_ties:
        for i in range(scores.size):
            out[i] = weight[i] * (one if abs(scores[i]) >= t else zero)
        return
    seen = 0
    for i in range(scores.size):
        v = abs(scores[i])
        keep = v > t
        if v == t:
            keep = seen < budget
            seen += 1
        out[i] = weight[i] * (one if keep else zero)


@njit(nogil=True, cache=True)
def score_gradient(grad, weight, scores, out):
    """``out = (grad * weight) * sign(scores)``; the sign is +0.0 at +-0 and NaN, as torch.sgn."""
    for i in range(scores.size):
        s = scores[i]
        sign = np.float32(1.0) if s > 0 else (np.float32(-1.0) if s < 0 else np.float32(0.0))
        out[i] = (grad[i] * weight[i]) * sign
