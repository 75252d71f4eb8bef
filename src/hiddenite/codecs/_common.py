"""Argument validation shared by the codecs (no state, nothing done at import)."""

from __future__ import annotations

import operator

import numpy as np

__all__ = [
    "MAX_ALPHABET",
    "MIN_ALPHABET",
    "as_bits",
    "as_buffer",
    "as_symbols",
    "check_alphabet",
    "check_n",
    "symbol_bits",
]

MIN_ALPHABET = 2
MAX_ALPHABET = 256


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


def check_alphabet(alphabet: int) -> int:
    """Return the alphabet size as a Python int, checking it is in 2..256."""
    if isinstance(alphabet, bool | np.bool_):
        raise TypeError("alphabet must be an integer, not a bool")
    try:
        alphabet = operator.index(alphabet)
    except TypeError:
        raise TypeError(f"alphabet must be an integer, got {type(alphabet).__name__}") from None
    if not MIN_ALPHABET <= alphabet <= MAX_ALPHABET:
        raise ValueError(
            f"alphabet must be in {MIN_ALPHABET}..{MAX_ALPHABET} symbols, got {alphabet}"
        )
    return alphabet


def symbol_bits(alphabet: int) -> int:
    """Bits per symbol of the ``packed`` codec: ``ceil(log2(alphabet))`` (1..8)."""
    return (check_alphabet(alphabet) - 1).bit_length()


def as_symbols(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Return ``symbols`` as a contiguous 1-D ``uint8`` array of values in ``[0, alphabet)``.

    Accepts a 1-D array of any integer dtype (not bool, not float).
    """
    if not isinstance(symbols, np.ndarray):
        raise TypeError(f"symbols must be a numpy array, got {type(symbols).__name__}")
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {symbols.shape}")
    if symbols.dtype == np.bool_ or not np.issubdtype(symbols.dtype, np.integer):
        raise TypeError(
            f"symbols for an alphabet of {alphabet} must be an integer array, "
            f"got dtype {symbols.dtype}"
        )
    if symbols.size:
        lo, hi = int(symbols.min()), int(symbols.max())
        if lo < 0 or hi >= alphabet:
            raise ValueError(
                f"symbol values must be in [0, {alphabet}), got values in [{lo}, {hi}]"
            )
    return np.ascontiguousarray(symbols, dtype=np.uint8)
