"""``packed`` codec: one bit per weight, LSB first.

Format: exactly ``ceil(n / 8)`` bytes; mask bit ``i`` is bit ``i % 8`` (value ``1 << (i % 8)``)
of byte ``i // 8``. The unused high bits of the last byte are zero. No header.
"""

from __future__ import annotations

import numpy as np

from ._common import as_bits, as_buffer, check_n
from .errors import CodecError

__all__ = ["decode", "encode"]


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
