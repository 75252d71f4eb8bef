"""Compiled (numba) CPU passes of loading a model file: the check of a restored edge-popup
layer (one pass, no copy), the ``rle`` mask decoder's field loop and the range decoder of the
``entropy-grouped`` codec (constriction's arithmetic, :func:`range_decode`)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "RANGE_INVALID",
    "RANGE_OK",
    "RLE_OK",
    "RLE_OVERSHOOT",
    "RLE_TRUNCATED",
    "fill_zero_one",
    "is_zero_one_of",
    "range_decode",
    "range_encodes_to",
    "rle_fields",
]


@njit(nogil=True, cache=True)
def is_zero_one_of(values, mask) -> bool:
    """True when float ``values[i]`` is exactly ``1.0`` where ``mask[i]`` is set and exactly
    ``0.0`` (either sign) elsewhere, for 1-D arrays of one length (NaN never matches). No
    branch in the loop, so that it vectorises."""
    bad = False
    for i in range(values.size):
        bad |= values[i] != np.float32(mask[i])
    return not bad


@njit(nogil=True, cache=True)
def fill_zero_one(values, mask) -> None:
    """``values[i] = 1.0`` where ``mask[i]`` is set, else ``0.0`` (1-D float ``values``, 1-D
    bool ``mask`` of the same length): a restored edge-popup layer's scores."""
    for i in range(values.size):
        values[i] = values.dtype.type(mask[i])


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


#: :func:`range_decode` outcomes
RANGE_OK, RANGE_INVALID = 0, 1


@njit(nogil=True, cache=True)
def range_decode(words, cdf, precision, out, histogram):
    """Decode ``out.size`` i.i.d. symbols from the uint32 ``words`` of a range coder stream,
    exactly as constriction 0.5's ``stream.queue.RangeDecoder`` (32-bit words, 64-bit state)
    does with a categorical model whose quantized cumulative distribution is the int64
    ``cdf`` (``cdf[0] = 0`` < ... < ``cdf[-1] = 2**precision``; symbol ``s`` owns
    ``[cdf[s], cdf[s + 1])``). Writes int32 symbols into ``out`` and adds each symbol's count
    to the int64 ``histogram`` (``cdf.size - 1`` values); returns ``RANGE_OK``, or
    ``RANGE_INVALID`` where constriction reports invalid data (a quantile past the model).

    The state is ``lower`` and ``range`` (``range`` starts at ``2**64 - 1``), the ``point``
    the first two words (the first most significant; fewer are shifted up, zeros follow the
    last word). Per symbol: ``scale = range >> precision``, ``quantile = (point - lower) /
    scale`` (wrapping subtraction), the symbol whose slot holds the quantile, ``lower +=
    scale * cdf[s]``, ``range = scale * (cdf[s + 1] - cdf[s])``; when ``range < 2**32`` all
    three shift left by 32 bits and the next word (or 0) enters ``point``."""
    n_words = words.size
    point = np.uint64(0)
    read = 0
    while read < n_words and read < 2:
        point = (point << np.uint64(32)) | np.uint64(words[read])
        read += 1
    if read == 1:
        point = point << np.uint64(32)
    lower = np.uint64(0)
    rng = np.uint64(0xFFFFFFFFFFFFFFFF)
    prec = np.uint64(precision)
    total = np.uint64(1) << prec
    small = np.uint64(1) << np.uint64(32)
    ucdf = cdf.astype(np.uint64)
    # first[b]: the symbol holding quantile b << shift, the start of a short forward scan
    bits = min(precision, 12)
    shift = np.uint64(precision - bits)
    first = np.empty(1 << bits, dtype=np.int32)
    s = 0
    for b in range(1 << bits):
        while ucdf[s + 1] <= (np.uint64(b) << shift):
            s += 1
        first[b] = s
    for i in range(out.size):
        scale = rng >> prec
        quantile = (point - lower) // scale
        if quantile >= total:
            return RANGE_INVALID
        lo = first[quantile >> shift]  # then the last s with ucdf[s] <= quantile
        while ucdf[lo + 1] <= quantile:
            lo += 1
        out[i] = lo
        histogram[lo] += 1
        left = ucdf[lo]
        lower = lower + scale * left
        rng = scale * (ucdf[lo + 1] - left)
        if rng < small:
            lower = lower << np.uint64(32)
            rng = rng << np.uint64(32)
            point = point << np.uint64(32)
            if read < n_words:
                point = point | np.uint64(words[read])
                read += 1
    return RANGE_OK


@njit(nogil=True, cache=True)
def _put(words, pos, word):
    """Whether the encoder's next word, at ``pos``, is ``words[pos]``."""
    return pos < words.size and np.uint64(words[pos]) == word


@njit(nogil=True, cache=True)
def _put_held(words, pos, first, rest, count):
    """Whether the ``count`` held words (``first``, then ``rest`` repeated), released at
    ``pos``, are the next words; returns the position after them, or -1 if not."""
    if not _put(words, pos, first):
        return -1
    pos += 1
    for _ in range(1, count):
        if not _put(words, pos, rest):
            return -1
        pos += 1
    return pos


@njit(nogil=True, cache=True)
def range_encodes_to(words, cdf, precision, symbols):
    """Whether constriction 0.5's ``stream.queue.RangeEncoder`` (32-bit words, 64-bit
    state), encoding the int32 ``symbols`` under the quantized ``cdf`` of
    :func:`range_decode` and then sealed (``get_compressed``), writes exactly the uint32
    ``words``: the encoder runs without storing its output, comparing each word it writes
    and stopping at the first difference.

    constriction's rules: ``scale = range >> precision``, ``range = scale * p(s)``,
    ``lower += scale * cdf[s]`` (wrapping); when ``range < 2**32`` both shift left by 32 and
    the top word of ``lower`` is written, or held back while ``lower + range`` wraps (an
    "inverted" run, released with a carry or without once a later symbol decides); sealing
    writes the held words, the top word of ``lower + 2**32 - 1``, and a zero word when that
    equals the top word of ``lower + range``. Nothing is written for no symbols."""
    word_mask = np.uint64(0xFFFFFFFF)
    ones = word_mask
    w32 = np.uint64(32)
    prec = np.uint64(precision)
    small = np.uint64(1) << w32
    lower = np.uint64(0)
    rng = np.uint64(0xFFFFFFFFFFFFFFFF)
    inverted = 0  # held-back words (0: the normal situation)
    first_held = np.uint64(0)
    pos = 0
    for i in range(symbols.size):
        s = symbols[i]
        left = np.uint64(cdf[s])
        scale = rng >> prec
        rng = scale * (np.uint64(cdf[s + 1]) - left)
        new_lower = lower + scale * left
        if inverted and new_lower + rng > new_lower:  # the inverted run is decided
            if new_lower < lower:  # the carry arrived
                first, rest = (first_held + np.uint64(1)) & word_mask, np.uint64(0)
            else:
                first, rest = first_held, ones
            pos = _put_held(words, pos, first, rest, inverted)
            if pos < 0:
                return False
            inverted = 0
        lower = new_lower
        if rng < small:
            rng = rng << w32
            lower_word = lower >> w32
            lower = lower << w32
            if inverted:
                inverted += 1
            elif lower + rng > lower:
                if not _put(words, pos, lower_word):
                    return False
                pos += 1
            else:
                inverted = 1
                first_held = lower_word
    if symbols.size == 0:
        return words.size == 0
    point = lower + ones
    if inverted:
        if point < lower:
            first, rest = (first_held + np.uint64(1)) & word_mask, np.uint64(0)
        else:
            first, rest = first_held, ones
        pos = _put_held(words, pos, first, rest, inverted)
        if pos < 0:
            return False
    point_word = point >> w32
    if not _put(words, pos, point_word):
        return False
    pos += 1
    if (lower + rng) >> w32 == point_word:
        if not _put(words, pos, np.uint64(0)):
            return False
        pos += 1
    return pos == words.size
