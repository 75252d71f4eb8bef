"""Compiled (numba) CPU passes of the edge-popup training step, on float32 arrays.

One step of a hidden layer selects the top ``m`` of ``|scores|``, multiplies the frozen
weights by the mask and, backwards, sends ``upstream * weight * sign(score)`` to the scores.
With torch ops that is about eight passes over the layer; these kernels do it in two
(:class:`hiddenite.masks.TopKSelector` drives them), one compiled call each way:

- :func:`select_product`: the whole forward of a step whose previous threshold is known, in
  one call (the Python around it is a per-layer fixed cost that the step pays three times for
  the MLP): :func:`bracket_product`, the threshold selected among the gathered values, and
  :func:`fix_band`; it reports a miss, and changes nothing but scratch, when the bracket does
  not hold the new threshold;
- :func:`bracket_product`: how many ``|s|`` lie above ``hi`` and inside ``[lo, hi]`` (does
  the bracket around the previous threshold hold the new one?), the few values inside (to
  select the threshold among them, not among all), and in the same pass the masked product
  of every weight outside the bracket; :func:`fix_band` writes the few inside;
- :func:`masked_product` (when the bracket misses): ``w * keep`` with ``keep = |s| > t``, plus
  the first ``budget`` entries equal to ``t`` by index (the tie rule of
  :func:`hiddenite.masks.top_fraction_mask`);
- :func:`score_gradient`: ``(g * w) * sign(s)``, in torch's order of operations.

Every result is bit-identical to the torch expression it replaces (float32 products in the
same order, no fast-math, no fused multiply-add).

Each kernel reads the weights as ``weight[i] * scale``: float32 weights with ``scale`` 1.0,
or, for a layer whose weights all have one magnitude ``c`` (the signed-constant init), their
signs as int8 +-1 with ``scale`` ``c``, a quarter of the bytes to read (the passes are
memory-bound on a large layer). Both give every weight exactly: ``w * 1.0 == w`` and
``(+-1) * c == +-c``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "bracket_product",
    "fix_band",
    "masked_product",
    "remember",
    "score_gradient",
    "select_product",
]

_BLOCK = 128


@njit(nogil=True, cache=True)
def bracket_product(weight, scale, scores, lo, hi, out, band, where):
    """(count of ``|s| > hi``, count of ``lo <= |s| <= hi``); the latter values and their
    indices written to ``band`` and ``where`` in index order when they fit (one spare slot
    needed); and ``out = weight * (|s| > hi)``, which :func:`fix_band` finishes inside the
    bracket. One pass over the layer, block by block: a vectorised loop counts a block and
    writes its product, and the block is noted when it holds a band value; then only the
    noted blocks are read again to gather, without branches (write always, advance on a
    member). (Gathering inside the pass, even rarely, keeps the compiler from vectorising it
    as well: the pass is then about half again as slow.)"""
    above = 0
    inside = 0
    n = scores.size
    blocks = (n + _BLOCK - 1) // _BLOCK
    noted = np.empty(blocks, dtype=np.int64)
    count = 0
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for block in range(blocks):
        base = block * _BLOCK
        end = min(base + _BLOCK, n)
        part = scores[base:end]
        factors = weight[base:end]
        product = out[base:end]
        high = 0
        members = 0
        for j in range(part.size):
            v = abs(part[j])
            high += v > hi
            members += (v >= lo) & (v <= hi)
            product[j] = (np.float32(factors[j]) * scale) * (one if v > hi else zero)
        above += high
        inside += members
        noted[count] = block
        count += members > 0
    if inside <= band.size - 1:
        k = 0
        for j in range(count):
            base = noted[j] * _BLOCK
            for i in range(base, min(base + _BLOCK, n)):
                v = abs(scores[i])
                band[k] = v
                where[k] = i
                k += (v >= lo) & (v <= hi)
    return above, inside


@njit(nogil=True, cache=True)
def fix_band(weight, scale, band, where, count, t, budget, out):
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
        out[i] = (np.float32(weight[i]) * scale) * (one if keep else zero)


@njit(nogil=True, cache=True)
def masked_product(weight, scale, scores, t, budget, all_ties, out):
    """``out = weight * keep`` (float32 0/1 factor), ``keep`` = ``|s| > t`` or one of the
    first ``budget`` entries with ``|s| == t`` (all of them when ``all_ties``)."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if all_ties:
        for i in range(scores.size):
            out[i] = (np.float32(weight[i]) * scale) * (one if abs(scores[i]) >= t else zero)
        return
    seen = 0
    for i in range(scores.size):
        v = abs(scores[i])
        keep = v > t
        if v == t:
            keep = seen < budget
            seen += 1
        out[i] = (np.float32(weight[i]) * scale) * (one if keep else zero)


@njit(nogil=True, cache=True)
def score_gradient(grad, weight, scale, scores, out):
    """``out = (grad * weight) * sign(scores)``; the sign is +0.0 at +-0 and NaN, as torch.sgn."""
    for i in range(scores.size):
        s = scores[i]
        sign = np.float32(1.0) if s > 0 else (np.float32(-1.0) if s < 0 else np.float32(0.0))
        out[i] = (grad[i] * (np.float32(weight[i]) * scale)) * sign


_SPACINGS = 4.0  # the next bracket reaches at least this many value spacings either side


@njit(nogil=True, cache=True)
def remember(state, t, spacing):
    """Record the threshold ``t`` of this step in ``state`` = [threshold, bracket half-width,
    known]: the next half-width is twice this step's move, at least 2**-12 of ``|t|`` and
    ``_SPACINGS`` times ``spacing``, the mean gap between the ``|s|`` near ``t`` (0 when
    unknown). That floor matters in a small layer, whose values are far apart: there the
    threshold often stays put for a step, then jumps a gap, out of a bracket of 2**-12."""
    t = np.float64(t)
    previous = t if state[2] == 0.0 else state[0]
    state[1] = max(2.0 * abs(t - previous), abs(t) * 2.0**-12, _SPACINGS * spacing, 1e-30)
    state[0] = t
    state[2] = 1.0


@njit(nogil=True, cache=True)
def select_product(weight, scale, scores, m, state, band, where, out):
    """``out = weight * mask`` for the top ``m`` of ``|scores|`` (ties at the threshold to the
    lowest indices) when the bracket ``state[0] -+ state[1]`` around the previous threshold
    holds the new one, at most ``band.size - 1`` values inside it; then the new threshold is
    remembered (:func:`remember`) and True returned. False (``out`` partly written, ``state``
    unchanged) when it misses or no threshold is known: the caller selects over all values."""
    if state[2] == 0.0:
        return False
    lo = np.float32(state[0] - state[1])
    hi = np.float32(state[0] + state[1])
    above, inside = bracket_product(weight, scale, scores, lo, hi, out, band, where)
    if not (above < m <= above + inside and inside <= band.size - 1):
        return False
    rank = inside - (m - above)  # the threshold's index in the band, ascending
    part = np.partition(band[:inside], rank)  # a copy: the band stays in index order
    t = part[rank]
    greater = 0
    for j in range(inside):
        greater += part[j] > t
    fix_band(weight, scale, band, where, inside, t, m - above - greater, out)
    remember(state, t, (np.float64(hi) - np.float64(lo)) / inside)
    return True
