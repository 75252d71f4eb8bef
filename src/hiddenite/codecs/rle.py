"""``rle`` codec: fixed-width run lengths of the zeros between kept weights.

Format (``docs/mask-codecs.md`` has the full description, a decoder state machine and a
worked example):

* byte 0 is the field width ``w`` (1..32); ``E = 2**w - 1`` is the escape value;
* then a bit stream of ``w``-bit unsigned fields, each written most significant bit first,
  packed back to back, every byte filled from its most significant bit (bit 7) down;
* a field ``f < E`` means "``f`` zeros, then one kept weight"; a field ``f == E`` means
  "``E`` zeros and no kept weight yet"; so a gap of ``g`` zeros is ``g // E`` escapes and
  then the field ``g % E``;
* the zeros after the last kept weight are coded the same way but the decoder stops as soon
  as it has produced ``n`` bits: a field that reaches exactly ``n`` emits no kept weight, and
  a mask that ends with a kept weight has no trailing fields;
* the last byte is zero-padded and nothing follows it.

The encoder picks the ``w`` that minimises the size in bytes; ties go to the fewest fields
(decoder cycles), then to the smaller ``w``.
"""

from __future__ import annotations

import operator

import numpy as np

from ..kernels import mask_cpu
from ._common import as_bits, as_buffer, check_n
from .errors import CodecError

__all__ = ["AUTO", "MAX_WIDTH", "MIN_WIDTH", "SIZE_MODEL", "choose_width", "decode", "encode"]

MIN_WIDTH = 1
MAX_WIDTH = 32
#: How the hardware model sizes this codec's streams without coding: the entropy bound.
SIZE_MODEL = "entropy-bound"
#: ``encode_best`` (the ``auto`` choice) lets this codec compete.
AUTO = True
_CHUNK_FIELDS = 1 << 16  # fields per vectorised step: bounds temporaries, stays in cache


def _gaps(bits: np.ndarray) -> tuple[np.ndarray, int]:
    """Zeros before each kept weight (int64 array) and the number of trailing zeros."""
    idx = np.flatnonzero(bits)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64), int(bits.size)
    gaps = np.diff(idx, prepend=-1) - 1
    return gaps.astype(np.int64, copy=False), int(bits.size - 1 - idx[-1])


def _histogram(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gap values and their counts (bincount when dense, unique when sparse)."""
    if gaps.size == 0:
        return gaps, gaps
    if int(gaps.max()) <= 4 * gaps.size + 65536:
        counts = np.bincount(gaps)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(gaps, return_counts=True)


def _num_fields(values: np.ndarray, counts: np.ndarray, trailing: int, w: int) -> int:
    """Number of ``w``-bit fields needed for the gap histogram plus the trailing zeros."""
    esc = (1 << w) - 1
    interior = int((counts * (values // esc + 1)).sum()) if values.size else 0
    return interior + trailing // esc + (1 if trailing % esc else 0)


def _best_width(gaps: np.ndarray, trailing: int) -> int:
    values, counts = _histogram(gaps)

    def cost(w: int) -> tuple[int, int, int]:
        fields = _num_fields(values, counts, trailing, w)
        return ((fields * w + 7) // 8, fields, w)  # bytes, then decoder cycles, then width

    return min(range(MIN_WIDTH, MAX_WIDTH + 1), key=cost)


def choose_width(bits: np.ndarray) -> int:
    """Field width ``w`` (bits, 1..32) that gives the smallest ``rle`` encoding of ``bits``."""
    return _best_width(*_gaps(as_bits(bits)))


def _fields(gaps: np.ndarray, trailing: int, w: int) -> np.ndarray:
    """The field values (uint32) for the given gaps and trailing zeros at width ``w``."""
    esc = (1 << w) - 1
    if gaps.size and int(gaps.max()) < esc:  # no escapes: the fields are the gaps
        n_esc = None
        total = gaps.size
    else:
        n_esc = gaps // esc
        total = int(n_esc.sum()) + gaps.size
    t_esc, t_rem = divmod(trailing, esc)
    fields = np.empty(total + t_esc + (1 if t_rem else 0), dtype=np.uint32)
    if n_esc is None:
        fields[:total] = gaps
    else:
        fields[:total] = esc
        fields[np.cumsum(n_esc + 1) - 1] = gaps - n_esc * esc
    fields[total:] = esc
    if t_rem:
        fields[-1] = t_rem
    return fields


def _pack_fields(fields: np.ndarray, w: int) -> bytes:
    """Pack ``w``-bit fields MSB first into bytes filled from bit 7 down, zero-padded."""
    out = []
    for start in range(0, fields.size, _CHUNK_FIELDS):
        # Chunks hold a multiple of 8 fields, so every chunk but the last fills whole bytes.
        chunk = fields[start : start + _CHUNK_FIELDS]
        mat = np.empty((chunk.size, w), dtype=np.uint8)
        for k in range(w):
            mat[:, k] = (chunk >> np.uint32(w - 1 - k)) & np.uint32(1)
        out.append(np.packbits(mat.ravel(), bitorder="big").tobytes())
    return b"".join(out)


def encode(bits: np.ndarray, width: int | None = None) -> bytes:
    """Encode a 1-D bool mask; ``width`` (1..32 bits) forces the field width, else the best.

    Returns ``1 + ceil(fields * w / 8)`` bytes.
    """
    bits = as_bits(bits)
    gaps, trailing = _gaps(bits)
    if width is None:
        w = _best_width(gaps, trailing)
    else:
        w = operator.index(width)
        if not MIN_WIDTH <= w <= MAX_WIDTH:
            raise ValueError(f"rle width must be in {MIN_WIDTH}..{MAX_WIDTH}, got {width}")
    if w == 1:
        # Fast path, same format: with E = 1 every zero is an escape field (1) and every
        # kept weight a field 0, so the field stream is exactly the inverted mask.
        return bytes([1]) + np.packbits(~bits, bitorder="big").tobytes()
    return bytes([w]) + _pack_fields(_fields(gaps, trailing, w), w)


def decode(data: bytes, n: int) -> np.ndarray:
    """Decode an ``rle`` stream into a bool mask of ``n`` bits; raise CodecError if corrupt.

    Work and memory are bounded by ``n`` and ``len(data)``.
    """
    n = check_n(n)
    data = as_buffer(data)
    if not data:
        raise CodecError("rle stream is empty (missing the width byte)")
    w = data[0]
    if not MIN_WIDTH <= w <= MAX_WIDTH:
        raise CodecError(f"rle field width {w} is outside {MIN_WIDTH}..{MAX_WIDTH}")
    payload = len(data) - 1
    # Every field advances the output by >= 1 bit, so at most n fields can be used.
    if payload > (n * w + 7) // 8:
        raise CodecError(f"rle stream of {payload} payload bytes is too long for {n} bits")
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    # ... and every field advances it by <= E bits, so at least ceil(n / E) fields are needed.
    esc = (1 << w) - 1
    if payload * 8 < w * -(-n // esc):
        raise CodecError(f"rle stream of {payload} payload bytes is truncated for {n} bits")
    buf = np.frombuffer(data, dtype=np.uint8, offset=1)
    if w == 1:
        # Fast path, same format: every field is one bit, 1 = a zero (escape), 0 = kept.
        out = ~np.unpackbits(buf, count=n).view(np.bool_)
        used = n
    else:
        out, used = _decode_fields(np.concatenate([buf, np.zeros(8, np.uint8)]), w, n, payload)
    want = (used * w + 7) // 8
    if payload != want:
        raise CodecError(f"rle stream has {payload - want} trailing bytes after {n} bits")
    pad = want * 8 - used * w
    if pad and data[-1] & ((1 << pad) - 1):
        raise CodecError("rle stream has nonzero padding bits in its last byte")
    return out


def _decode_fields(buf: np.ndarray, w: int, n: int, payload: int) -> tuple[np.ndarray, int]:
    """Run the field stream until ``n`` bits are produced: (mask, number of fields used).
    ``buf`` ends with 8 zero bytes of padding (compiled: ``kernels.mask_cpu.rle_fields``)."""
    out = np.zeros(n, dtype=np.bool_)
    available = payload * 8 // w  # whole fields present in the payload
    outcome, used, detail = mask_cpu.rle_fields(buf, w, n, available, out)
    if outcome == mask_cpu.RLE_TRUNCATED:
        raise CodecError(f"rle stream is truncated: decoded {detail} of {n} bits")
    if outcome == mask_cpu.RLE_OVERSHOOT:
        raise CodecError(f"rle run overshoots the mask length {n} at field {detail}")
    return out, used
