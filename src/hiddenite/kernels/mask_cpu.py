"""Compiled (numba) CPU passes of loading a model file: the check of a restored edge-popup
layer (one pass, no copy) and the ``rle`` mask decoder's field loop."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["RLE_OK", "RLE_OVERSHOOT", "RLE_TRUNCATED", "is_zero_one_of", "rle_fields"]


@njit(nogil=True, cache=True)
def is_zero_one_of(values, mask) -> bool:
    """True when float ``values[i]`` is exactly ``1.0`` where ``mask[i]`` is set and exactly
    ``0.0`` (either sign) elsewhere, for 1-D arrays of one length (NaN never matches). No
    branch in the loop, so that it vectorises."""
    bad = False
    for i in range(values.size):
        bad |= values[i] != np.float32(mask[i])
    return not bad


#: :func:`rle_fields` outcomes
RLE_OK, RLE_OVERSHOOT, RLE_TRUNCATED = 0, 1, 2


@njit(nogil=True, cache=True)
def rle_fields(buf, w, n, available, out):
    """Run an ``rle`` field stream (``w``-bit fields, MSB first, in uint8 ``buf`` followed by
    at least 8 zero bytes) until ``n`` bits are produced, setting the kept bits of the
    zero-filled bool ``out``. Returns ``(outcome, fields used, detail)``: ``RLE_OK``;
    ``RLE_OVERSHOOT`` (detail: the index of the field that runs past ``n``);
    ``RLE_TRUNCATED`` (all ``available`` fields used, detail: the bits produced). The rule is
    :func:`hiddenite.codecs.rle.decode`'s: an escape field (all ones) gives ``2**w - 1``
    zeros, a field ``f`` gives ``f`` zeros and one kept weight; the last field must end on
    ``n`` (or on ``n + 1`` for a field whose kept weight is then dropped)."""
    esc = (1 << w) - 1
    span = (7 + w + 7) // 8  # bytes a field can straddle at bit offset 7
    pos = 0
    bitpos = 0
    for i in range(available):
        byte = bitpos >> 3
        window = 0
        for k in range(span):
            window = (window << 8) | np.int64(buf[byte + k])
        f = (window >> (8 * span - w - (bitpos & 7))) & esc
        bitpos += w
        kept = f != esc
        pos += f + 1 if kept else esc
        if pos >= n:
            if pos > (n + 1 if kept else n):
                return RLE_OVERSHOOT, i + 1, i
            if kept and pos <= n:
                out[pos - 1] = True
            return RLE_OK, i + 1, 0
        if kept:
            out[pos - 1] = True
    return RLE_TRUNCATED, available, pos
