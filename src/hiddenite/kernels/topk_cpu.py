"""Compiled (numba) CPU passes of the edge-popup training step, on float32 arrays.

One step of a hidden layer selects the top ``m`` of ``|scores|``, multiplies the frozen
weights by the mask and, backwards, sends ``upstream * weight * sign(score)`` to the scores.
With torch ops that is about eight passes over the layer; these kernels do it in three
(:class:`hiddenite.masks.TopKSelector` drives them):

- :func:`bracket_band`: how many ``|s|`` lie above ``hi`` and inside ``[lo, hi]`` (does the
  bracket around the previous threshold hold the new one?), and the few values inside, for a
  selection over them instead of over all (one pass);
- :func:`masked_product`: ``w * keep`` with ``keep = |s| > t``, plus the first ``budget``
  entries equal to ``t`` by index (the tie rule of :func:`hiddenite.masks.top_fraction_mask`);
- :func:`score_gradient`: ``(g * w) * sign(s)``, in torch's order of operations.

Every result is bit-identical to the torch expression it replaces (float32 products in the
same order, no fast-math, no fused multiply-add).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["bracket_band", "masked_product", "score_gradient"]

_BLOCK = 512


@njit(nogil=True, cache=True)
def bracket_band(scores, lo, hi, band):
    """One pass: (count of ``|s| > hi``, count of ``lo <= |s| <= hi``), and the latter values
    written to ``band`` in index order while they fit (``band`` needs one spare slot).

    Blocks are counted with vectorised loops; a block holding a band value is gathered
    again without branches (write always, advance on a member)."""
    above = 0
    inside = 0
    cap = band.size - 1
    n = scores.size
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        members = 0
        for i in range(start, end):
            v = abs(scores[i])
            above += v > hi
            members += (v >= lo) & (v <= hi)
        if members and inside + members <= cap:
            k = inside
            for i in range(start, end):
                v = abs(scores[i])
                band[k] = v
                k += (v >= lo) & (v <= hi)
        inside += members
    return above, inside


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
