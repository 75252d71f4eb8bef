"""``entropy-grouped`` codec: range coding of groups of ``g`` symbols under a product model.

The ``entropy`` codec hands constriction one binary symbol per mask bit; decoding a
ResNet-50 then spends most of its time in per-symbol work. This codec codes ``g`` consecutive
symbols of an alphabet of ``a`` values as one symbol of the alphabet of ``a**g <= 256`` values
(``g = group_size(a)``: 8 bits for a binary mask, 5 ternary symbols, ...), under the product
(i.i.d.) model of the per-symbol frequencies, so the size stays at the same entropy bound while
the range coder handles ``g`` times fewer symbols.

Format (the exact bytes are in ``docs/mask-codecs.md``): the ``entropy`` codec's header (the
4-byte kept-probability ``q`` for a binary mask, or ``a - 1`` and ``a`` uint32 frequencies for
a larger alphabet), then the little-endian 32-bit words of a constriction 0.5
``stream.queue.RangeEncoder`` that encoded the ``ceil(n / g)`` group values, in order, i.i.d.
under ``stream.model.Categorical(P, perfect=False)``, where ``P`` (``a**g`` float64 values) is
the product model of the header's frequencies (:func:`group_model`). Group ``j`` holds symbols
``j*g .. j*g + g - 1``, the first the least significant base-``a`` digit; the last group's
missing digits are the pad symbol (the smallest symbol with a nonzero frequency).

The decoder accepts a stream only if it is exactly what the encoder writes for the decoded
symbols: the header must be the quantization of their counts, the padding digits must be the
pad symbol, no decoded group may have probability 0, and re-encoding the decoded groups must
reproduce the payload byte for byte (this rejects truncation, trailing words and bit flips).
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import mask_cpu
from ._common import as_bits, as_buffer, as_symbols, check_alphabet, check_n
from .entropy import (
    PROB_BITS,
    header_bytes,
    quantize,
    quantize_frequencies,
    read_stream_header,
)
from .errors import CodecError

__all__ = [
    "AUTO",
    "MAX_GROUP_ALPHABET",
    "SIZE_MODEL",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "group_model",
    "group_size",
    "max_bytes",
    "quantized_cdf",
]

NAME = "entropy-grouped"
MAX_GROUP_ALPHABET = 256
#: How the hardware model sizes this codec's streams without coding: the entropy bound.
SIZE_MODEL = "entropy-bound"
#: ``encode_best`` (the ``auto`` choice) lets this codec compete.
AUTO = True
_ONE = 1 << PROB_BITS


def group_size(alphabet: int) -> int:
    """``g``, the most symbols of an alphabet of ``alphabet`` values with ``a**g <= 256``."""
    alphabet = check_alphabet(alphabet)
    g = 1
    while alphabet ** (g + 1) <= MAX_GROUP_ALPHABET:
        g += 1
    return g


def group_model(freq, alphabet: int) -> np.ndarray:
    """The product model: ``a**g`` float64 group probabilities from per-symbol frequencies.

    ``freq``: ``a`` integer frequencies in units of ``2**-24`` summing to ``2**24``. With
    ``p[s] = freq[s] / 2**24`` (exact), the group of digits ``d_0 .. d_{g-1}`` (value
    ``sum d_i a**i``) has probability ``p[d_{g-1}] * (p[d_{g-2}] * ( ... * p[d_0]))``, each
    product one IEEE float64 multiplication in that order (so every platform computes the same
    bits).
    """
    alphabet = check_alphabet(alphabet)
    p = np.asarray(freq, dtype=np.float64) / _ONE
    model = p
    for _ in range(group_size(alphabet) - 1):
        model = (p[:, None] * model[None, :]).ravel()
    return model


def quantized_cdf(model: np.ndarray) -> np.ndarray:
    """The cumulative distribution (int64, ``model.size + 1`` values from 0 to ``2**24``)
    that constriction 0.5's ``Categorical(model, perfect=False)`` codes with: each value
    gets 1 (so none is impossible) plus its share of the remaining ``2**24 - size``,
    ``cdf[s] = floor(c_s * scale) + s`` with ``c_s`` the float64 running sum of
    ``model[:s]`` and ``scale = (2**24 - size) / sum(model)``, both sums taken in order
    (constriction's ``fast_quantized_cdf``)."""
    running = np.cumsum(np.asarray(model, dtype=np.float64))  # sequential, in order
    scale = float(_ONE - running.size) / float(running[-1])
    cdf = np.empty(running.size + 1, dtype=np.int64)
    cdf[0] = 0
    cdf[1:-1] = (running[:-1] * scale).astype(np.int64) + np.arange(1, running.size)
    cdf[-1] = _ONE
    return cdf


def _categorical(model: np.ndarray):
    import constriction  # imported lazily: nothing is loaded at package import time

    return constriction.stream.model.Categorical(model, perfect=False)


def _encode_groups(groups: np.ndarray, model: np.ndarray) -> bytes:
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(groups.astype(np.int32, copy=False), _categorical(model))
    return encoder.get_compressed().astype("<u4", copy=False).tobytes()


def _groups(symbols: np.ndarray, alphabet: int, pad: int) -> np.ndarray:
    """The group values (int32) of 1-D uint8 ``symbols``, the last group padded with ``pad``."""
    g = group_size(alphabet)
    if alphabet == 2 and pad == 0:  # g = 8: a group is a byte of the LSB-first bitmap
        return np.packbits(symbols.view(np.uint8), bitorder="little").astype(np.int32)
    count = -(-symbols.size // g)
    padded = np.full(count * g, pad, dtype=np.int32)
    padded[: symbols.size] = symbols
    powers = alphabet ** np.arange(g, dtype=np.int32)
    return padded.reshape(count, g) @ powers


def _digits(groups: np.ndarray, alphabet: int) -> np.ndarray:
    """All ``g * len(groups)`` digits (uint8) of the group values, least significant first."""
    g = group_size(alphabet)
    if alphabet == 2:
        return np.unpackbits(groups.astype(np.uint8), bitorder="little")
    powers = alphabet ** np.arange(g, dtype=np.int32)
    return ((groups[:, None] // powers[None, :]) % alphabet).astype(np.uint8).ravel()


def _digit_counts(alphabet: int) -> np.ndarray:
    """``D[v, s]``: how many of the ``g`` digits of group value ``v`` equal ``s`` (int64)."""
    g = group_size(alphabet)
    digits = _digits(np.arange(alphabet**g), alphabet).reshape(-1, g)
    return np.stack([(digits == s).sum(axis=1) for s in range(alphabet)], axis=1).astype(np.int64)


def _encode(symbols: np.ndarray, alphabet: int, freq: np.ndarray, header: bytes) -> bytes:
    if int(freq.max()) == _ONE:  # constant input: no payload
        return header
    pad = int(np.flatnonzero(freq)[0])
    return header + _encode_groups(_groups(symbols, alphabet, pad), group_model(freq, alphabet))


def _binary_freq(q: int) -> np.ndarray:
    return np.array([_ONE - q, q], dtype=np.int64)


def encode(bits: np.ndarray) -> bytes:
    """Encode a 1-D bool mask: 4 header bytes plus about ``H(k) * n / 8`` payload bytes."""
    bits = as_bits(bits)
    q = quantize(int(np.count_nonzero(bits)), bits.size)
    return _encode(bits, 2, _binary_freq(q), q.to_bytes(4, "little"))


def encode_symbols(symbols: np.ndarray, alphabet: int) -> bytes:
    """Encode 1-D integer symbols in ``[0, alphabet)``: ``1 + 4 a`` header bytes + payload."""
    alphabet = check_alphabet(alphabet)
    symbols = as_symbols(symbols, alphabet)
    counts = np.bincount(symbols, minlength=alphabet).tolist()
    freq = np.array(quantize_frequencies(counts), dtype=np.int64)
    header = bytes([alphabet - 1]) + freq.astype("<u4").tobytes()
    return _encode(symbols, alphabet, freq, header)


def _max_payload(n: int, alphabet: int) -> int:
    """The longest payload accepted: at most PROB_BITS bits per group, + 64 bytes of slack."""
    return (-(-n // group_size(alphabet)) * PROB_BITS) // 8 + 64


def max_bytes(n: int, alphabet: int = 2) -> int:
    """The most bytes a valid ``entropy-grouped`` stream of ``n`` symbols can take."""
    return header_bytes(alphabet) + _max_payload(check_n(n), alphabet)


def _decode(payload: bytes, n: int, alphabet: int, freq: np.ndarray) -> np.ndarray:
    """Decode and verify the payload of a mixed (non-constant) stream; uint8 symbols."""
    what = NAME
    if n == 0:
        raise CodecError(f"{what} stream for 0 symbols has a non-constant header")
    if not payload:
        raise CodecError(f"{what} stream for a non-constant input has no payload")
    if len(payload) % 4:
        raise CodecError(
            f"{what} payload of {len(payload)} bytes is not a whole number of 32-bit words"
        )
    if len(payload) > _max_payload(n, alphabet):
        raise CodecError(f"{what} payload of {len(payload)} bytes is too long for {n} symbols")
    g = group_size(alphabet)
    count = -(-n // g)
    model = group_model(freq, alphabet)
    # No sequence of groups costs less than `count` copies of the likeliest group (+ slack for
    # constriction's fixed-point rounding of the model).
    likeliest = min(float(model.max()) + 2.0**-16, 1.0)
    if len(payload) * 8 + 64 < 0.99 * count * -math.log2(likeliest):
        raise CodecError(f"{what} payload of {len(payload)} bytes is too short for {n} symbols")
    # constriction's RangeDecoder with the same quantized model, compiled (it gives exactly
    # constriction's group values), and the re-encode below is constriction's RangeEncoder,
    # compiled, comparing word for word (tests/test_kernels_mask_cpu.py checks both against
    # constriction itself)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    groups = np.empty(count, dtype=np.int32)  # each in [0, model.size): the kernel's slots
    histogram = np.zeros(model.size, dtype=np.int64)  # of the group values, by the kernel
    cdf = quantized_cdf(model)
    if mask_cpu.range_decode(words, cdf, PROB_BITS, groups, histogram) != mask_cpu.RANGE_OK:
        raise CodecError(f"{what} payload does not decode (invalid data for the model)")
    # The symbol counts from the histogram of the (g times fewer) group values.
    if np.any(histogram[model == 0]):
        raise CodecError(f"{what} payload decodes a group that has probability 0")
    digits = _digits(groups, alphabet)
    pad = int(np.flatnonzero(freq)[0])
    if np.any(digits[n:] != pad):
        raise CodecError(f"{what} payload's last group is not padded with symbol {pad} (n={n})")
    symbols = digits[:n]
    counts = histogram @ _digit_counts(alphabet)
    counts[pad] -= digits.size - n
    if alphabet == 2:
        expected = _binary_freq(quantize(int(counts[1]), n))
    else:
        expected = np.array(quantize_frequencies(counts.tolist()), dtype=np.int64)
    if not np.array_equal(expected, freq):
        raise CodecError(
            f"{what} header is not the quantized frequencies of the decoded symbols "
            f"(corrupt header or wrong n={n})"
        )
    if not mask_cpu.range_encodes_to(words, cdf, PROB_BITS, groups):  # its own group values
        raise CodecError(f"{what} payload is corrupt, truncated or has trailing data (n={n})")
    return symbols


def decode(data: bytes, n: int) -> np.ndarray:
    """Decode a binary ``entropy-grouped`` stream into ``n`` bool bits; CodecError if corrupt.

    Work and memory are bounded by ``n`` and ``len(data)``.
    """
    n = check_n(n)
    data = as_buffer(data)
    if len(data) < 4:
        raise CodecError(f"{NAME} stream of {len(data)} bytes is shorter than its header")
    q = int.from_bytes(data[:4], "little")
    payload = data[4:]
    if q > _ONE:
        raise CodecError(f"{NAME} header probability {q}/2**24 is greater than 1")
    if q in (0, _ONE):
        if payload:
            raise CodecError(
                f"{NAME} stream for a constant mask has {len(payload)} unexpected payload bytes"
            )
        if n == 0 and q != 0:
            raise CodecError(f"{NAME} stream for 0 bits must have q = 0, not {q}")
        return np.full(n, q == _ONE, dtype=np.bool_)
    return _decode(payload, n, 2, _binary_freq(q)).view(np.bool_)


def decode_symbols(data: bytes, n: int, alphabet: int) -> np.ndarray:
    """Decode an ``entropy-grouped`` stream of ``alphabet`` values into ``n`` uint8 symbols."""
    n = check_n(n)
    alphabet = check_alphabet(alphabet)
    freq, payload, constant = read_stream_header(data, n, alphabet, NAME)
    if constant is not None:
        return constant
    return _decode(payload, n, alphabet, freq)
