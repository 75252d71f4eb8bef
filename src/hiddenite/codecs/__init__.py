"""Supermask codecs: ``n`` symbols over an alphabet of ``a`` values (2..256) <-> bytes.

A binary mask (``alphabet=2``, the default) is a 1-D bool array of ``n`` bits, True = weight
kept. Larger alphabets code per-weight symbols such as ternary keep/hide/invert signs
(``a = 3``) or multicoat levels ``0..C`` (``a = C + 1``) as 1-D integer arrays.

Four codecs, chosen per layer: ``packed`` (``ceil(log2 a)`` bits per symbol), ``rle`` (binary
only: fixed-width run lengths of the zeros between kept weights, a small-circuit decoder),
``entropy`` (range coding with a Bernoulli model of the density for binary masks, a categorical
model of the symbol frequencies otherwise; within 1 % of the entropy bound) and
``entropy-grouped`` (the same model coded ``g`` symbols at a time as one symbol of ``a**g <= 256``
values: the same size, several times faster to decode). The exact byte formats are in
``docs/mask-codecs.md``. ``n`` and ``a`` are never implied by the data alone: the caller
supplies them. Corrupt data raises :class:`CodecError` and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

from . import entropy, entropy_grouped, packed, rle
from ._common import as_bits, as_symbols, check_alphabet, check_n, symbol_bits
from .errors import CodecError

__all__ = [
    "AUTO_CODECS",
    "CODECS",
    "CodecError",
    "decode",
    "empirical_entropy_bits",
    "encode",
    "encode_best",
    "entropy_bound_bits",
    "max_bytes",
    "size_model",
    "supports",
    "symbol_bits",
]

CODECS: tuple[str, ...] = ("packed", "rle", "entropy", "entropy-grouped")
_MODULES = {"packed": packed, "rle": rle, "entropy": entropy, "entropy-grouped": entropy_grouped}

#: The codecs ``encode_best`` lets compete (those whose module declares ``AUTO``), in order.
AUTO_CODECS: tuple[str, ...] = tuple(c for c in CODECS if _MODULES[c].AUTO)


def _module(codec: str):
    try:
        return _MODULES[codec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mask codec {codec!r}; valid codecs: {', '.join(CODECS)}"
        ) from None


def supports(codec: str, alphabet: int) -> bool:
    """Whether ``codec`` can code an alphabet of ``alphabet`` symbols.

    ``packed``, ``entropy`` and ``entropy-grouped`` support every alphabet of 2..256 symbols,
    ``rle`` only 2. An integer alphabet outside 2..256 is supported by no codec (False); an
    unknown codec name is a ValueError.
    """
    _module(codec)
    try:
        alphabet = check_alphabet(alphabet)
    except ValueError:
        return False
    return alphabet == 2 or codec != "rle"


def _checked(codec: str, alphabet: int):
    """The codec's module and the alphabet size; ValueError for an unsupported pair."""
    module = _module(codec)
    alphabet = check_alphabet(alphabet)
    if not supports(codec, alphabet):
        able = ", ".join(c for c in CODECS if supports(c, alphabet))
        raise ValueError(
            f"mask codec {codec!r} does not support an alphabet of {alphabet} symbols; "
            f"codecs that do: {able}"
        )
    return module, alphabet


def encode(symbols: np.ndarray, codec: str, alphabet: int = 2) -> bytes:
    """Encode ``n`` symbols with ``codec``; returns bytes.

    ``alphabet=2``: a 1-D bool (or 0/1 uint8) mask. ``alphabet > 2``: a 1-D integer array
    with values in ``[0, alphabet)``.
    """
    module, alphabet = _checked(codec, alphabet)
    if alphabet == 2:
        return module.encode(as_bits(symbols))
    return module.encode_symbols(symbols, alphabet)


def decode(data: bytes, n: int, codec: str, alphabet: int = 2) -> np.ndarray:
    """Decode ``data`` into exactly ``n`` symbols: bool for ``alphabet=2``, else uint8.

    Raises :class:`CodecError` if ``data`` is corrupt, truncated, has trailing bytes or does
    not describe exactly ``n`` symbols; work and memory are bounded by ``n`` and ``len(data)``.
    """
    module, alphabet = _checked(codec, alphabet)
    if alphabet == 2:
        return module.decode(data, check_n(n))
    return module.decode_symbols(data, check_n(n), alphabet)


def encode_best(symbols: np.ndarray, alphabet: int = 2) -> tuple[str, bytes]:
    """The smallest encoding as ``(codec_name, bytes)``; ties go to the simpler codec.

    The codecs that compete are those that support the alphabet and declare ``AUTO``
    (:data:`AUTO_CODECS`: ``entropy`` does not, ``entropy-grouped`` codes the same model as
    fast-decoding groups); ties go to the earlier in ``CODECS`` (packed < rle <
    entropy-grouped).
    """
    alphabet = check_alphabet(alphabet)
    symbols = as_bits(symbols) if alphabet == 2 else as_symbols(symbols, alphabet)
    best: tuple[str, bytes] | None = None
    for name in AUTO_CODECS:
        if not supports(name, alphabet):
            continue
        module = _MODULES[name]
        data = module.encode(symbols) if alphabet == 2 else module.encode_symbols(symbols, alphabet)
        if best is None or len(data) < len(best[1]):
            best = (name, data)
    assert best is not None
    return best


def max_bytes(codec: str, n: int, alphabet: int = 2) -> int:
    """The most bytes a valid ``codec`` stream of ``n`` symbols can take.

    A reader can reject anything longer before decoding. Binary masks: ``packed``
    ``ceil(n / 8)``, ``rle`` ``1 + ceil(32 n / 8)``, ``entropy`` ``4 + floor(24 n / 8) + 64``,
    ``entropy-grouped`` ``4 + floor(24 ceil(n / 8) / 8) + 64``. ``alphabet = a > 2``: ``packed``
    ``ceil(n * symbol_bits(a) / 8)`` (every stream has exactly that size), ``entropy``
    ``1 + 4 a + floor(24 n / 8) + 64``, ``entropy-grouped``
    ``1 + 4 a + floor(24 ceil(n / g) / 8) + 64`` with ``g = group_size(a)``.
    """
    module, alphabet = _checked(codec, alphabet)
    n = check_n(n)
    if codec == "rle":
        return 1 + (n * rle.MAX_WIDTH + 7) // 8
    return module.max_bytes(n, alphabet)


def size_model(codec: str) -> str:
    """How a cost model sizes ``codec``'s streams without coding them, as the codec declares.

    ``"symbol-bits"``: exactly ``ceil(n * symbol_bits(a) / 8)`` bytes (``packed``);
    ``"entropy-bound"``: about the order-0 entropy bound, ``ceil(H n / 8)`` bytes (``rle``,
    ``entropy``, ``entropy-grouped``).
    """
    return _module(codec).SIZE_MODEL


def entropy_bound_bits(k: float) -> float:
    """Binary entropy H(k) in bits per weight for density ``k`` (fraction kept, 0..1)."""
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {k}")
    if k in (0.0, 1.0):
        return 0.0
    return -k * math.log2(k) - (1.0 - k) * math.log2(1.0 - k)


def empirical_entropy_bits(symbols: np.ndarray, alphabet: int = 2) -> float:
    """Empirical (order-0) entropy of ``symbols`` in bits per symbol.

    ``-sum p_s log2 p_s`` over the symbol values' relative frequencies ``p_s``; 0.0 for empty
    or constant input. For a binary mask of density ``k`` it equals ``entropy_bound_bits(k)``.
    """
    alphabet = check_alphabet(alphabet)
    if alphabet == 2:
        bits = as_bits(symbols)
        return entropy_bound_bits(np.count_nonzero(bits) / bits.size) if bits.size else 0.0
    symbols = as_symbols(symbols, alphabet)
    n = symbols.size
    counts = np.bincount(symbols, minlength=alphabet)
    counts = counts[counts > 0]
    if counts.size <= 1:
        return 0.0
    return math.fsum(-(c / n) * math.log2(c / n) for c in counts.tolist())
