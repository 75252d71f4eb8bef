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

Alphabets of ``a > 2`` symbols (:func:`encode_symbols`, :func:`decode_symbols`) use a
categorical model instead: one byte ``a - 1``, then ``a`` little-endian uint32 frequencies in
units of ``2**-24`` that sum to exactly ``2**24`` (:func:`quantize_frequencies`), then the
payload of a ``RangeEncoder`` that encoded the symbols i.i.d. under
``stream.model.Categorical(freq / 2**24, perfect=False)``; no payload when a single symbol
value has all of ``2**24``. The decoder requires the header to be exactly the quantization of
the decoded symbols' counts and the payload to be exactly their re-encoding. The binary format
above is never routed through this path.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import as_bits, as_buffer, as_symbols, check_alphabet, check_n
from .errors import CodecError

__all__ = [
    "AUTO",
    "HEADER_BYTES",
    "PROB_BITS",
    "SIZE_MODEL",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "header_bytes",
    "max_bytes",
    "quantize_frequencies",
]

PROB_BITS = 24
HEADER_BYTES = 4
#: How the hardware model sizes this codec's streams without coding: the entropy bound.
SIZE_MODEL = "entropy-bound"
#: ``encode_best`` (the ``auto`` choice) does not consider this codec: ``entropy-grouped``
#: codes the same model within a few bytes (often smaller) and decodes several times faster.
#: ``entropy`` stays readable and writable by name.
AUTO = False
_ONE = 1 << PROB_BITS


def _model(q: int):
    """The constriction Bernoulli model for a kept-probability of ``q / 2**24``."""
    import constriction  # imported lazily: nothing is loaded at package import time

    return constriction.stream.model.Bernoulli(q / _ONE, perfect=False)


def _encode_payload(bits: np.ndarray, q: int) -> bytes:
    """The payload of 1-D ``bits`` (bool, or int32 0/1 symbols as the decoder gives them)."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(bits.astype(np.int32, copy=False), _model(q))
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


def _max_payload(n: int) -> int:
    """The longest payload accepted for ``n`` symbols: at most PROB_BITS bits each, + slack."""
    return (n * PROB_BITS) // 8 + 64


def header_bytes(alphabet: int = 2) -> int:
    """Header size: 4 bytes for binary masks, ``1 + 4 * alphabet`` for larger alphabets."""
    alphabet = check_alphabet(alphabet)
    return HEADER_BYTES if alphabet == 2 else 1 + 4 * alphabet


def max_bytes(n: int, alphabet: int = 2) -> int:
    """The most bytes a valid ``entropy`` stream of ``n`` symbols can take."""
    return header_bytes(alphabet) + _max_payload(check_n(n))


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
    if len(payload) > _max_payload(n):
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
    if symbols.shape != (n,) or (
        symbols.size and (int(symbols.max(initial=0)) > 1 or int(symbols.min(initial=0)) < 0)
    ):
        raise CodecError("entropy payload decodes to invalid symbols")
    if _encode_payload(symbols, q) != payload:  # the decoder's int32 symbols, no copy
        raise CodecError(f"entropy payload is corrupt, truncated or has trailing data (n={n} bits)")
    return symbols.astype(np.bool_)


# --------------------------------------------------------------------------- alphabets > 2


def quantize_frequencies(counts) -> list[int]:
    """Symbol frequencies in units of 2**-24 (summing to exactly 2**24) from symbol counts.

    The rule (deterministic, integer arithmetic only), with ``n = sum(counts)``:

    1. ``n == 0``: symbol 0 gets all ``2**24`` (the stream of no symbols).
    2. ``f[s] = floor(counts[s] * 2**24 / n)``; the ``R = 2**24 - sum(f)`` units left over
       (``R < len(counts)``) go one each to the ``R`` symbols with the largest remainders
       ``counts[s] * 2**24 mod n``, ties to the smaller symbol value (largest remainder).
    3. In increasing symbol order, every symbol that occurs but has ``f[s] == 0`` gets
       ``f[s] = 1``, taken from the symbol with the largest frequency at that moment (ties to
       the smaller symbol value).
    """
    counts = [int(c) for c in counts]
    n = sum(counts)
    size = len(counts)
    if n == 0:
        return [_ONE] + [0] * (size - 1)
    freq = [c * _ONE // n for c in counts]
    remainder = [c * _ONE % n for c in counts]
    left = _ONE - sum(freq)
    for s in sorted(range(size), key=lambda s: (-remainder[s], s))[:left]:
        freq[s] += 1
    for s in range(size):
        if counts[s] and not freq[s]:
            donor = max(range(size), key=lambda t: (freq[t], -t))
            freq[donor] -= 1
            freq[s] = 1
    return freq


def _categorical(freq: np.ndarray):
    """The constriction categorical model for frequencies in units of ``2**-24``."""
    import constriction

    probabilities = np.asarray(freq, dtype=np.float64) / _ONE  # exact: dyadic, <= 24 bits
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def _encode_symbols_payload(symbols: np.ndarray, freq: np.ndarray) -> bytes:
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(symbols.astype(np.int32), _categorical(freq))
    return encoder.get_compressed().astype("<u4", copy=False).tobytes()


def encode_symbols(symbols: np.ndarray, alphabet: int) -> bytes:
    """Encode 1-D integer symbols in ``[0, alphabet)`` with a categorical model.

    Returns ``1 + 4 * alphabet`` header bytes plus about ``H * n / 8`` payload bytes, ``H``
    the empirical entropy in bits per symbol.
    """
    alphabet = check_alphabet(alphabet)
    symbols = as_symbols(symbols, alphabet)
    freq = np.array(
        quantize_frequencies(np.bincount(symbols, minlength=alphabet).tolist()), dtype=np.int64
    )
    header = bytes([alphabet - 1]) + freq.astype("<u4").tobytes()
    if int(freq.max()) == _ONE:
        return header
    return header + _encode_symbols_payload(symbols, freq)


def read_stream_header(
    data: bytes, n: int, alphabet: int, name: str
) -> tuple[np.ndarray, bytes, np.ndarray | None]:
    """``(frequencies, payload, constant)`` of a ``name`` stream (the header ``entropy`` and
    ``entropy-grouped`` share: the alphabet byte, then ``alphabet`` little-endian uint32
    frequencies summing to 2**24). ``constant`` is the ``n`` decoded symbols when a single
    symbol holds all of 2**24 (no payload may follow), else None. CodecError if corrupt."""
    data = as_buffer(data)
    if not data:
        raise CodecError(f"{name} stream is empty (missing the alphabet byte)")
    if data[0] + 1 != alphabet:
        raise CodecError(
            f"{name} stream is for an alphabet of {data[0] + 1} symbols, expected {alphabet}"
        )
    header = header_bytes(alphabet)
    if len(data) < header:
        raise CodecError(
            f"{name} stream of {len(data)} bytes is shorter than its {header}-byte header"
        )
    freq = np.frombuffer(data, dtype="<u4", count=alphabet, offset=1).astype(np.int64)
    total = int(freq.sum())
    if total != _ONE:
        raise CodecError(f"{name} header frequencies sum to {total}, not 2**24")
    payload = data[header:]
    present = np.flatnonzero(freq)
    if present.size != 1:
        return freq, payload, None
    if payload:
        raise CodecError(
            f"{name} stream for a constant input has {len(payload)} unexpected payload bytes"
        )
    if n == 0 and present[0] != 0:
        raise CodecError(f"{name} stream for 0 symbols must give symbol 0 all of 2**24")
    return freq, payload, np.full(n, present[0], dtype=np.uint8)


def decode_symbols(data: bytes, n: int, alphabet: int) -> np.ndarray:
    """Decode a categorical ``entropy`` stream into ``n`` uint8 symbols; CodecError if corrupt.

    Work and memory are bounded by ``n`` and ``len(data)``.
    """
    n = check_n(n)
    alphabet = check_alphabet(alphabet)
    freq, payload, constant = read_stream_header(data, n, alphabet, "entropy")
    if constant is not None:
        return constant
    present = np.flatnonzero(freq)
    if n == 0:
        raise CodecError(f"entropy stream for 0 symbols has {present.size} symbols in its header")
    if not payload:
        raise CodecError(f"entropy stream of {present.size} distinct symbols has no payload")
    if len(payload) % 4:
        raise CodecError(
            f"entropy payload of {len(payload)} bytes is not a whole number of 32-bit words"
        )
    # As for binary masks: a symbol costs at most PROB_BITS bits, and no sequence costs less
    # than n times the likeliest symbol (constriction's quantization adds at most 2 units).
    if len(payload) > _max_payload(n):
        raise CodecError(f"entropy payload of {len(payload)} bytes is too long for {n} symbols")
    likeliest = min(int(freq.max()) + 16, _ONE) / _ONE
    if len(payload) * 8 + 64 < 0.99 * n * -math.log2(likeliest):
        raise CodecError(f"entropy payload of {len(payload)} bytes is too short for {n} symbols")
    import constriction

    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        decoded = np.asarray(decoder.decode(_categorical(freq), n))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # AssertionError for undecodable data, pyo3's PanicException for a Rust panic.
        raise CodecError(f"entropy payload does not decode: {exc}") from None
    if decoded.shape != (n,) or int(decoded.min()) < 0 or int(decoded.max()) >= alphabet:
        raise CodecError("entropy payload decodes to invalid symbols")
    symbols = decoded.astype(np.uint8)
    if not np.all(freq[symbols]):
        raise CodecError("entropy payload decodes a symbol whose header frequency is 0")
    # The header must be the one the encoder writes for these symbols: this also catches most
    # streams decoded with a wrong n (a range coder's final words often decode a few symbols
    # more or fewer without complaint).
    counts = np.bincount(symbols, minlength=alphabet).tolist()
    if quantize_frequencies(counts) != freq.tolist():
        raise CodecError(
            "entropy header frequencies are not the quantized counts of the decoded symbols "
            f"(corrupt header or wrong n={n})"
        )
    if _encode_symbols_payload(symbols, freq) != payload:
        raise CodecError(
            f"entropy payload is corrupt, truncated or has trailing data (n={n} symbols)"
        )
    return symbols
