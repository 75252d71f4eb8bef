"""Supermask codecs: a 1-D bool mask of ``n`` bits (True = weight kept) <-> bytes.

Three codecs, chosen per layer: ``packed`` (1 bit per weight), ``rle`` (fixed-width run
lengths of the zeros between kept weights, a small-circuit decoder) and ``entropy`` (range
coding with a Bernoulli model of the density, within 1 % of the entropy bound). The exact
bit formats are in ``docs/mask-codecs.md``. ``n`` is never stored: the caller supplies it.
Corrupt data raises :class:`CodecError` and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

from . import entropy, packed, rle
from ._common import as_bits, check_n
from .errors import CodecError

__all__ = ["CODECS", "CodecError", "decode", "encode", "encode_best", "entropy_bound_bits"]

CODECS: tuple[str, ...] = ("packed", "rle", "entropy")
_MODULES = {"packed": packed, "rle": rle, "entropy": entropy}


def _module(codec: str):
    try:
        return _MODULES[codec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mask codec {codec!r}; valid codecs: {', '.join(CODECS)}"
        ) from None


def encode(bits: np.ndarray, codec: str) -> bytes:
    """Encode a 1-D bool (or 0/1 uint8) mask of ``n`` bits with ``codec``; returns bytes."""
    return _module(codec).encode(as_bits(bits))


def decode(data: bytes, n: int, codec: str) -> np.ndarray:
    """Decode ``data`` into a 1-D bool mask of exactly ``n`` bits.

    Raises :class:`CodecError` if ``data`` is corrupt, truncated, has trailing bytes or does
    not describe exactly ``n`` bits; work and memory are bounded by ``n`` and ``len(data)``.
    """
    module = _module(codec)
    return module.decode(data, check_n(n))


def encode_best(bits: np.ndarray) -> tuple[str, bytes]:
    """The smallest encoding as ``(codec_name, bytes)``; ties go to the simpler codec.

    Simplicity order is ``CODECS``: packed < rle < entropy.
    """
    bits = as_bits(bits)
    best: tuple[str, bytes] | None = None
    for name in CODECS:
        data = _MODULES[name].encode(bits)
        if best is None or len(data) < len(best[1]):
            best = (name, data)
    assert best is not None
    return best


def entropy_bound_bits(k: float) -> float:
    """Binary entropy H(k) in bits per weight for density ``k`` (fraction kept, 0..1)."""
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {k}")
    if k in (0.0, 1.0):
        return 0.0
    return -k * math.log2(k) - (1.0 - k) * math.log2(1.0 - k)
