"""``packed`` codec: a fixed number of bits per symbol, LSB first.

Binary masks (alphabet 2): exactly ``ceil(n / 8)`` bytes; mask bit ``i`` is bit ``i % 8``
(value ``1 << (i % 8)``) of byte ``i // 8``. The unused high bits of the last byte are zero.
No header.

Alphabet ``a`` (2..256): ``b = ceil(log2(a))`` bits per symbol; symbol ``i`` occupies bits
``i*b .. i*b + b - 1`` of a little-endian bit stream (stream bit ``j`` is bit ``j % 8`` of
byte ``j // 8``), its least significant bit first. Exactly ``ceil(n * b / 8)`` bytes, zero
padding bits, no header; a symbol value ``>= a`` is rejected. For ``a = 2`` this is the binary
format above.
"""

from __future__ import annotations

import numpy as np

from ._common import as_bits, as_buffer, as_symbols, check_alphabet, check_n, symbol_bits
from .errors import CodecError

__all__ = [
    "AUTO",
    "SIZE_MODEL",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "max_bytes",
]

#: How the hardware model sizes this codec's streams: exactly ``ceil(n * symbol_bits(a) / 8)``.
SIZE_MODEL = "symbol-bits"
#: ``encode_best`` (the ``auto`` choice) lets this codec compete.
AUTO = True
_CHUNK = 1 << 16  # symbols per vectorised step (a multiple of 8: chunks fill whole bytes)


def encode(bits: np.ndarray) -> bytes:
    """Encode a 1-D bool mask of ``n`` bits into ``ceil(n / 8)`` bytes."""
    bits = as_bits(bits)
    return np.packbits(bits, bitorder="little").tobytes()


def decode(data: bytes, n: int) -> np.ndarray:
    """Decode ``ceil(n / 8)`` bytes into a bool mask of ``n`` bits; raise CodecError if corrupt."""
    n = check_n(n)
    data = as_buffer(data)
    want = (n + 7) // 8
    if len(data) != want:
        raise CodecError(f"packed mask of {n} bits needs {want} bytes, got {len(data)}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if n % 8 and int(buf[-1]) >> (n % 8):
        raise CodecError(f"packed mask has nonzero padding bits in its last byte (n={n})")
    return np.unpackbits(buf, count=n, bitorder="little").view(np.bool_)


def max_bytes(n: int, alphabet: int = 2) -> int:
    """The size of every ``packed`` stream of ``n`` symbols: ``ceil(n * b / 8)`` bytes."""
    return (check_n(n) * symbol_bits(alphabet) + 7) // 8


def encode_symbols(symbols: np.ndarray, alphabet: int) -> bytes:
    """Encode 1-D integer symbols in ``[0, alphabet)`` at ``symbol_bits(alphabet)`` bits each."""
    alphabet = check_alphabet(alphabet)
    symbols = as_symbols(symbols, alphabet)
    b = symbol_bits(alphabet)
    if b == 8:
        return symbols.tobytes()
    out = []
    for start in range(0, symbols.size, _CHUNK):
        chunk = symbols[start : start + _CHUNK, None]
        # row i: the low b bits of symbol i, least significant first
        bits = np.unpackbits(chunk, axis=1, count=b, bitorder="little")
        out.append(np.packbits(bits.ravel(), bitorder="little").tobytes())
    return b"".join(out)


def decode_symbols(data: bytes, n: int, alphabet: int) -> np.ndarray:
    """Decode ``ceil(n * b / 8)`` bytes into ``n`` uint8 symbols; raise CodecError if corrupt."""
    n = check_n(n)
    alphabet = check_alphabet(alphabet)
    data = as_buffer(data)
    b = symbol_bits(alphabet)
    want = (n * b + 7) // 8
    if len(data) != want:
        raise CodecError(
            f"packed stream of {n} symbols at {b} bits each needs {want} bytes, got {len(data)}"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    if b == 8:
        out = buf.copy()
    else:
        used = (n * b) % 8
        if used and int(buf[-1]) >> used:
            raise CodecError(f"packed stream has nonzero padding bits in its last byte (n={n})")
        bits = np.unpackbits(buf, count=n * b, bitorder="little").reshape(n, b)
        out = np.packbits(bits, axis=1, bitorder="little").reshape(n)
    if alphabet < (1 << b) and out.size:
        top = int(out.max())
        if top >= alphabet:
            raise CodecError(
                f"packed stream holds symbol value {top}, outside the alphabet of {alphabet}"
            )
    return out
