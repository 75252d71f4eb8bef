"""Argument validation shared by the codecs (no state, nothing done at import)."""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["as_bits", "as_buffer", "check_n"]


def as_bits(bits: np.ndarray) -> np.ndarray:
    """Return ``bits`` as a contiguous 1-D ``bool`` array (a view when already one).

    Accepts a 1-D ``bool`` array, or a 1-D ``uint8`` array holding only 0 and 1.
    """
    if not isinstance(bits, np.ndarray):
        raise TypeError(f"mask bits must be a numpy array, got {type(bits).__name__}")
    if bits.ndim != 1:
        raise ValueError(f"mask bits must be 1-D, got shape {bits.shape}")
    if bits.dtype == np.bool_:
        return np.ascontiguousarray(bits)
    if bits.dtype == np.uint8:
        if bits.size and int(bits.max()) > 1:
            raise ValueError("uint8 mask bits must be 0 or 1")
        return bits.astype(np.bool_)
    raise TypeError(f"mask bits must be bool (or 0/1 uint8), got dtype {bits.dtype}")


def check_n(n: int) -> int:
    """Return ``n`` (the number of mask bits) as a Python int, checking it is >= 0."""
    if isinstance(n, bool | np.bool_):
        raise TypeError("n must be an integer, not a bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer, got {type(n).__name__}") from None
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n


def as_buffer(data: bytes | bytearray | memoryview) -> bytes:
    """Return encoded data as ``bytes`` (accepts any contiguous bytes-like object)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"encoded data must be bytes-like, got {type(data).__name__}")
