"""``entropy`` codec: range coding (``constriction``) with a Bernoulli model of the density.

Format: a 4-byte little-endian unsigned header ``q`` (0 <= q <= 2**24), the probability of a
kept weight in units of ``2**-24``, then the payload.

* ``q == 0``: every weight is pruned; ``q == 2**24``: every weight is kept; no payload.
* otherwise the payload is the compressed word stream of a ``constriction`` 0.5
  ``stream.queue.RangeEncoder`` that encoded the ``n`` mask bits, in order, as i.i.d. symbols
  (1 = kept) under ``stream.model.Bernoulli(q / 2**24, perfect=False)``; each 32-bit word is
  stored little-endian.

The encoder sets ``q = round(k * 2**24)`` from the empirical density ``k``, clamped to
``1 .. 2**24 - 1`` for masks that hold both values. The decoder accepts a payload only if
re-encoding the decoded bits reproduces it byte for byte, which rejects truncation, trailing
garbage and bit flips that would otherwise decode silently.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import as_bits, as_buffer, check_n
from .errors import CodecError

__all__ = ["HEADER_BYTES", "PROB_BITS", "decode", "encode"]

PROB_BITS = 24
HEADER_BYTES = 4
_ONE = 1 << PROB_BITS


def _model(q: int):
    """The constriction Bernoulli model for a kept-probability of ``q / 2**24``."""
    import constriction  # imported lazily: nothing is loaded at package import time

    return constriction.stream.model.Bernoulli(q / _ONE, perfect=False)


def _encode_payload(bits: np.ndarray, q: int) -> bytes:
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(bits.astype(np.int32), _model(q))
    return encoder.get_compressed().astype("<u4", copy=False).tobytes()


def quantize(kept: int, n: int) -> int:
    """The header value ``q`` (kept-probability in units of 2**-24) for ``kept`` of ``n``."""
    if kept == 0:
        return 0
    if kept == n:
        return _ONE
    return min(max((kept * _ONE + n // 2) // n, 1), _ONE - 1)


def encode(bits: np.ndarray) -> bytes:
    """Encode a 1-D bool mask: 4 header bytes plus about ``H(k) * n / 8`` payload bytes."""
    bits = as_bits(bits)
    n = bits.size
    q = quantize(int(np.count_nonzero(bits)), n)
    header = q.to_bytes(HEADER_BYTES, "little")
    if q in (0, _ONE):
        return header
    return header + _encode_payload(bits, q)


def decode(data: bytes, n: int) -> np.ndarray:
    """Decode an ``entropy`` stream into a bool mask of ``n`` bits; raise CodecError if corrupt.

    Work and memory are bounded by ``n`` and ``len(data)``.
    """
    n = check_n(n)
    data = as_buffer(data)
    if len(data) < HEADER_BYTES:
        raise CodecError(f"entropy stream of {len(data)} bytes is shorter than its header")
    q = int.from_bytes(data[:HEADER_BYTES], "little")
    payload = data[HEADER_BYTES:]
    if q > _ONE:
        raise CodecError(f"entropy header probability {q}/2**24 is greater than 1")
    if q in (0, _ONE):
        if payload:
            raise CodecError(
                f"entropy stream for a constant mask has {len(payload)} unexpected payload bytes"
            )
        return np.full(n, q == _ONE, dtype=np.bool_)
    if n == 0:
        raise CodecError(f"entropy stream for 0 bits has a mixed-mask header (q={q})")
    if not payload:
        raise CodecError(f"entropy stream for a mixed mask (q={q}) has no payload")
    if len(payload) % 4:
        raise CodecError(
            f"entropy payload of {len(payload)} bytes is not a whole number of 32-bit words"
        )
    # Bound the work before touching constriction: a symbol costs at most PROB_BITS bits, and
    # no sequence costs less than the likeliest one, n * -log2(P(likelier symbol)).
    if len(payload) > (n * PROB_BITS) // 8 + 64:
        raise CodecError(f"entropy payload of {len(payload)} bytes is too long for {n} bits")
    likelier = min(max(q, _ONE - q) + 16, _ONE) / _ONE  # + slack for the model's rounding
    if len(payload) * 8 + 64 < 0.99 * n * -math.log2(likelier):
        raise CodecError(f"entropy payload of {len(payload)} bytes is too short for {n} bits")
    import constriction

    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        symbols = np.asarray(decoder.decode(_model(q), n))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # constriction reports undecodable data with AssertionError; a Rust panic would surface
        # as pyo3's PanicException, which derives from BaseException.
        raise CodecError(f"entropy payload does not decode: {exc}") from None
    if symbols.shape != (n,) or (symbols.size and int(symbols.max(initial=0)) > 1):
        raise CodecError("entropy payload decodes to invalid symbols")
    bits = symbols.astype(np.bool_)
    if _encode_payload(bits, q) != payload:
        raise CodecError(f"entropy payload is corrupt, truncated or has trailing data (n={n} bits)")
    return bits
