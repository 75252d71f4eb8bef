"""A supermask layer's parts as stored bytes: the one place that codes them.

The model file writes these bytes, the summary counts them and the hardware model charges
them, so the three always agree. Symbol parts (masks, signs, coat levels, ...) are coded with
a mask codec (:mod:`hiddenite.codecs`; ``None`` picks the smallest per part); real-valued
parts are stored as little-endian floats at ``param_dtype``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import codecs
from .methods import Part

PARAM_DTYPES = ("float32", "float16")
FLOAT_BYTES = {"float32": 4, "float16": 2}
_NP_FLOAT = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

__all__ = [
    "FLOAT_BYTES",
    "PARAM_DTYPES",
    "StoredPart",
    "decode_float",
    "encode_layer",
    "encode_part",
    "symbol_counts",
]


@dataclass(frozen=True)
class StoredPart:
    """One part as stored: its declaration, its mask codec (None for a float part), its bytes
    and, for symbols, how often each symbol occurs (the header keeps them)."""

    part: Part
    codec: str | None
    data: bytes
    counts: tuple[int, ...] | None

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def entropy_bound_bits(self) -> float | None:
        """The empirical entropy of the symbols times their number (None for a float part)."""
        if self.counts is None:
            return None
        return self.part.n * entropy_of_counts(self.counts)


def entropy_of_counts(counts: tuple[int, ...] | list[int]) -> float:
    """Order-0 entropy (bits per symbol) of a symbol histogram."""
    n = sum(counts)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in counts if c)


def symbol_counts(symbols: np.ndarray, alphabet: int) -> tuple[int, ...]:
    values = np.asarray(symbols).astype(np.int64, copy=False)
    return tuple(int(c) for c in np.bincount(values, minlength=alphabet)[:alphabet])


def encode_part(
    part: Part, values: np.ndarray, codec: str | None, param_dtype: str = "float32"
) -> StoredPart:
    """Code one exported part (``codec`` None: the smallest codec for its alphabet)."""
    values = np.asarray(values).reshape(-1)
    if values.size != part.n:
        raise ValueError(f"part {part.name!r} exports {values.size} values, declares {part.n}")
    if part.alphabet is None:
        if param_dtype not in PARAM_DTYPES:
            raise ValueError(
                f"param_dtype must be one of {', '.join(PARAM_DTYPES)}, got {param_dtype!r}"
            )
        data = values.astype(np.float32).astype(_NP_FLOAT[param_dtype]).tobytes()
        return StoredPart(part, None, data, None)
    symbols = values.astype(np.bool_) if part.alphabet == 2 else values.astype(np.uint8)
    if codec is None or not codecs.supports(codec, part.alphabet):
        chosen, data = codecs.encode_best(symbols, alphabet=part.alphabet)
    else:
        chosen, data = codec, codecs.encode(symbols, codec, alphabet=part.alphabet)
    return StoredPart(part, chosen, data, symbol_counts(symbols, part.alphabet))


def encode_layer(layer, codec: str | None = None, param_dtype: str = "float32") -> list[StoredPart]:
    """Every part of a supermask layer, coded. A ``codec`` that cannot code a part's alphabet
    (``rle`` for a ternary part) falls back to the smallest one that can."""
    shape = tuple(layer.weight.shape)
    declared = layer.method.parts(shape, layer.method_config, layer.density)
    arrays = layer.method.export(layer)
    if sorted(arrays) != sorted(p.name for p in declared):
        raise ValueError(
            f"method {layer.method.name!r} exports parts {sorted(arrays)}, declares "
            f"{[p.name for p in declared]}"
        )
    return [encode_part(p, arrays[p.name], codec, param_dtype) for p in declared]


def decode_float(data: bytes | memoryview, n: int, param_dtype: str) -> np.ndarray:
    """A float part's bytes as float32 values."""
    return np.frombuffer(data, dtype=_NP_FLOAT[param_dtype], count=n).astype(np.float32)
