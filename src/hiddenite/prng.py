"""Hardware random generators: Marsaglia's Xorshift, bit-exact, in numpy and torch.

This module knows nothing about networks. It produces unsigned 32-bit words, the way a
PE array with one small Xorshift circuit per lane would.

Single generators (Marsaglia, J. Stat. Software 8(14), 2003)::

    xorshift32(seed, n)    shifts (13, 17, 5), left-right-left, 32-bit state
    xorshift64(seed, n)    shifts (13, 7, 17), left-right-left, 64-bit state
    xorshift128(state, n)  four 32-bit words x, y, z, w

Multi-lane generator (PRNG version 1)
-------------------------------------
A layer's ``n`` random words come from ``L`` independent xorshift32 lanes (``L`` defaults to
4,096, the PE count of the Hiddenite chip; fewer when the layer has fewer than ``L`` words).
Word ``i`` is the ``i // L``-th output of lane ``i % L``: every lane emits one word per
cycle, and the lanes together fill the tensor in row-major order.

Lane ``j`` of layer ``l`` of stream ``s`` under model seed ``S`` (0 <= S < 2**64) starts from
a chain of bijective hash finalisers, so that no simple relation links the lanes of
different seeds, layers or streams::

    m  = splitmix64(S + 0x9E3779B97F4A7C15)             (mod 2**64)
    h0 = (m & 0xFFFFFFFF) ^ (m >> 32)                   fold to 32 bits
    h1 = fmix32(h0 ^ (0x9E3779B9 * (l + 1) mod 2**32))  layer
    h2 = fmix32(h1 ^ (0xC2B2AE35 * (s + 1) mod 2**32))  stream
    seed_j = fmix32(h2 ^ (0x85EBCA6B * (j + 1) mod 2**32)), or 0x6D2B79F5 if that is 0

``splitmix64`` is the finaliser of Steele et al.'s SplitMix64 (shift-xor-multiply by
0xBF58476D1CE4E5B9 and 0x94D049BB133111EB, shifts 30, 27, 31) and ``fmix32`` MurmurHash3's
32-bit finaliser (shifts 16, 13, 16; multipliers 0x85EBCA6B, 0xC2B2AE35). Both are
bijections; the all-zero state (which would make Xorshift emit zeros forever) can never
occur.

Streams are named: :func:`stream_id` maps a name to its number, and every number is taken by
one name only (:func:`register_stream` refuses a collision). Version 1 fixes ``weights`` = 0
(the frozen weights), ``scores`` = 1 (initial scores), ``bias`` = 2 (biases of trained
layers); supermask methods register the streams they draw from (``hiddenite.methods``).

Kernels
-------
:func:`lanes_numpy` is the reference: a Python loop over the steps, numpy across the lanes.
:func:`lanes_numba` is a compiled kernel (``hiddenite.kernels.xorshift_cpu``, numba) that gives
the same words, using every core whatever the lane count; it is the default on the CPU
(:func:`lanes_cpu` and :func:`lanes_torch` with ``kernel="auto"``). numba is imported with
the package and the kernel compiled on first use, never at import (a few seconds once per
machine, then a load from numba's on-disk cache: see ``BENCHMARKS.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .kernels import xorshift_cpu

PRNG_VERSION = 1
DEFAULT_LANES = 4096

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
MARSAGLIA_SEED32 = 2463534242
MARSAGLIA_SEED64 = 88172645463325252
MARSAGLIA_STATE128 = (123456789, 362436069, 521288629, 88675123)
_ZERO_SEED_REPLACEMENT = 0x6D2B79F5

KERNELS = ("auto", "numba", "numpy", "torch")
STREAM_WEIGHTS = 0
STREAM_SCORES = 1
STREAM_BIAS = 2

_STREAMS: dict[str, int] = {"weights": STREAM_WEIGHTS, "scores": STREAM_SCORES, "bias": STREAM_BIAS}

__all__ = [
    "DEFAULT_LANES",
    "KERNELS",
    "PRNG_VERSION",
    "STREAM_BIAS",
    "STREAM_SCORES",
    "STREAM_WEIGHTS",
    "check_kernel",
    "fmix32",
    "lane_seeds",
    "lanes_cpu",
    "lanes_numba",
    "lanes_numpy",
    "lanes_torch",
    "layer_seeds",
    "register_stream",
    "seeds_from_key",
    "splitmix64",
    "stream_id",
    "stream_key",
    "streams",
    "xorshift32",
    "xorshift64",
    "xorshift128",
]


def register_stream(name: str, number: int) -> int:
    """Give PRNG stream ``number`` the name ``name``; returns ``number``.

    Registering the same pair again is a no-op; a name or a number already taken by another
    pair raises ValueError, so no two uses of the generator can ever share a stream.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"stream name must be a non-empty string, got {name!r}")
    number = _check_word(number, 32, "stream")
    if _STREAMS.get(name, number) != number:
        raise ValueError(f"PRNG stream {name!r} is already stream {_STREAMS[name]}, not {number}")
    for other, taken in _STREAMS.items():
        if taken == number and other != name:
            raise ValueError(f"PRNG stream {number} is already taken by {other!r}")
    _STREAMS[name] = number
    return number


def stream_id(name: str) -> int:
    """The number of the registered PRNG stream ``name``."""
    try:
        return _STREAMS[name]
    except KeyError:
        raise ValueError(
            f"unknown PRNG stream {name!r}; registered: {', '.join(sorted(_STREAMS))}"
        ) from None


def streams() -> dict[str, int]:
    """Every registered stream: name -> number."""
    return dict(_STREAMS)


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return int(n)


def _check_word(value: int, bits: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{what} must be in [0, 2**{bits}), got {value}")
    return value


def xorshift32(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of Marsaglia's xorshift32 (13, 17, 5) from ``seed`` (uint32).

    ``seed`` must be a non-zero 32-bit value: zero is a fixed point of the recurrence.
    """
    x = _check_word(seed, 32, "seed")
    if x == 0:
        raise ValueError("xorshift32 seed must be non-zero (0 is a fixed point: all outputs 0)")
    n = _check_count(n)
    out = np.empty(n, dtype=np.uint32)
    for i in range(n):
        x ^= (x << 13) & MASK32
        x ^= x >> 17
        x ^= (x << 5) & MASK32
        out[i] = x
    return out


def xorshift64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of Marsaglia's xorshift64 (13, 7, 17) from ``seed`` (uint64)."""
    x = _check_word(seed, 64, "seed")
    if x == 0:
        raise ValueError("xorshift64 seed must be non-zero (0 is a fixed point: all outputs 0)")
    n = _check_count(n)
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        out[i] = x
    return out


def xorshift128(state: Sequence[int], n: int) -> np.ndarray:
    """The first ``n`` outputs (the successive ``w``) of Marsaglia's xorshift128 (uint32).

    ``state`` is the four 32-bit words ``(x, y, z, w)``; they may not all be zero.
    """
    if len(state) != 4:
        raise ValueError(f"xorshift128 state must be 4 words (x, y, z, w), got {len(state)}")
    x, y, z, w = (_check_word(v, 32, "state word") for v in state)
    if x == y == z == w == 0:
        raise ValueError("xorshift128 state must not be all zero (a fixed point)")
    n = _check_count(n)
    out = np.empty(n, dtype=np.uint32)
    for i in range(n):
        t = x ^ ((x << 11) & MASK32)
        x, y, z = y, z, w
        w = (w ^ (w >> 19)) ^ (t ^ (t >> 8))
        out[i] = w
    return out


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, element-wise on a uint32 array (a bijection)."""
    h = np.asarray(h, dtype=np.uint32).copy()
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def splitmix64(z: int) -> int:
    """SplitMix64's output finaliser of a 64-bit integer (a bijection on [0, 2**64))."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(model_seed: int, layer_index: int, stream: int = 0) -> int:
    """The 32-bit key ``h2`` of one (model seed, layer, stream), before the lane mix."""
    model_seed = _check_word(model_seed, 64, "model seed")
    layer_index = _check_word(layer_index, 32, "layer index")
    stream = _check_word(stream, 32, "stream")
    m = splitmix64(model_seed + 0x9E3779B97F4A7C15)
    h0 = (m & MASK32) ^ (m >> 32)
    h1 = int(fmix32(np.array([h0 ^ ((0x9E3779B9 * (layer_index + 1)) & MASK32)]))[0])
    return int(fmix32(np.array([h1 ^ ((0xC2B2AE35 * (stream + 1)) & MASK32)]))[0])


def seeds_from_key(key: int, n_lanes: int) -> np.ndarray:
    """Lane seeds ``fmix32(key ^ 0x85EBCA6B*(j+1))`` for j < n_lanes, zero mapped away."""
    key = _check_word(key, 32, "key")
    n_lanes = _check_count(n_lanes)
    lanes = np.arange(1, n_lanes + 1, dtype=np.uint64)
    salt = ((np.uint64(0x85EBCA6B) * lanes) & np.uint64(MASK32)).astype(np.uint32)
    seeds = fmix32(salt ^ np.uint32(key))
    seeds[seeds == 0] = _ZERO_SEED_REPLACEMENT
    return seeds


def lane_seeds(model_seed: int, layer_index: int, n_lanes: int, stream: int = 0) -> np.ndarray:
    """Seeds of lanes ``0 .. n_lanes-1`` of one layer and stream (uint32, never zero).

    See the module docstring for the rule (PRNG version 1).
    """
    return seeds_from_key(stream_key(model_seed, layer_index, stream), n_lanes)


def _lane_count(n: int, n_lanes: int) -> int:
    if isinstance(n_lanes, bool) or not isinstance(n_lanes, (int, np.integer)) or n_lanes < 1:
        raise ValueError(f"n_lanes must be a positive integer, got {n_lanes!r}")
    return max(1, min(int(n_lanes), n))


def lanes_numpy(
    model_seed: int, layer_index: int, n: int, n_lanes: int = DEFAULT_LANES, stream: int = 0
) -> np.ndarray:
    """``n`` uint32 words of one layer from the multi-lane xorshift32 generator (numpy)."""
    n = _check_count(n)
    lanes = _lane_count(n, n_lanes)
    state = lane_seeds(model_seed, layer_index, lanes, stream)
    steps = -(-n // lanes)
    out = np.empty((steps, lanes), dtype=np.uint32)
    s13, s17, s5 = np.uint32(13), np.uint32(17), np.uint32(5)
    tmp = np.empty_like(state)
    for step in range(steps):
        np.left_shift(state, s13, out=tmp)
        state ^= tmp
        np.right_shift(state, s17, out=tmp)
        state ^= tmp
        np.left_shift(state, s5, out=tmp)
        state ^= tmp
        out[step] = state
    return out.reshape(-1)[:n]


def layer_seeds(
    model_seed: int, layer_index: int, n: int, n_lanes: int = DEFAULT_LANES, stream: int = 0
) -> np.ndarray:
    """Seeds of the lanes that make ``n`` words: ``min(n_lanes, n)`` of them (at least 1)."""
    n = _check_count(n)
    return lane_seeds(model_seed, layer_index, _lane_count(n, n_lanes), stream)


def lanes_numba(
    model_seed: int, layer_index: int, n: int, n_lanes: int = DEFAULT_LANES, stream: int = 0
) -> np.ndarray:
    """The words of :func:`lanes_numpy`, from the compiled multi-core kernel (uint32)."""
    seeds = layer_seeds(model_seed, layer_index, n, n_lanes, stream)

    return xorshift_cpu.lane_words(seeds, int(n))


def check_kernel(kernel: str) -> str:
    """``kernel`` if it names a lane kernel (:data:`KERNELS`), else ValueError."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def lanes_cpu(
    model_seed: int,
    layer_index: int,
    n: int,
    n_lanes: int = DEFAULT_LANES,
    stream: int = 0,
    *,
    kernel: str = "auto",
) -> np.ndarray:
    """``n`` uint32 words of one layer on the CPU: ``kernel`` ``"numba"`` (``"auto"``, the
    default) or ``"numpy"`` (the reference); both give the same words."""
    if check_kernel(kernel) == "torch":
        raise ValueError("lanes_cpu() returns numpy words: use kernel numba or numpy")
    if kernel == "numpy":
        return lanes_numpy(model_seed, layer_index, n, n_lanes, stream)
    return lanes_numba(model_seed, layer_index, n, n_lanes, stream)


def lanes_torch(
    model_seed: int,
    layer_index: int,
    n: int,
    n_lanes: int = DEFAULT_LANES,
    stream: int = 0,
    device: torch.device | str | None = None,
    *,
    kernel: str = "auto",
) -> torch.Tensor:
    """The same words as :func:`lanes_numpy`, as a torch tensor on ``device``.

    Returned as an int64 tensor holding values in ``[0, 2**32)`` (torch has no shifts on
    uint32 tensors on every backend; int64 with a 32-bit mask is exact everywhere).
    ``kernel="torch"`` steps the lanes with torch ops on ``device``; ``"numba"`` and
    ``"numpy"`` compute on the CPU with :func:`lanes_numba` or :func:`lanes_numpy` and copy;
    ``"auto"`` uses numba for a CPU device and torch elsewhere. All give identical words.
    """
    check_kernel(kernel)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if kernel in ("numpy", "numba") or (kernel == "auto" and target.type == "cpu"):
        cpu = "numpy" if kernel == "numpy" else "numba"
        words = lanes_cpu(model_seed, layer_index, n, n_lanes, stream, kernel=cpu)
        return torch.from_numpy(words.astype(np.int64)).to(target)
    n = _check_count(n)
    lanes = _lane_count(n, n_lanes)
    seeds = lane_seeds(model_seed, layer_index, lanes, stream)
    state = torch.from_numpy(seeds.astype(np.int64)).to(target)
    steps = -(-n // lanes)
    out = torch.empty((steps, lanes), dtype=torch.int64, device=state.device)
    tmp = torch.empty_like(state)
    for step in range(steps):
        torch.bitwise_left_shift(state, 13, out=tmp)
        tmp.bitwise_and_(MASK32)
        state.bitwise_xor_(tmp)
        torch.bitwise_right_shift(state, 17, out=tmp)
        state.bitwise_xor_(tmp)
        torch.bitwise_left_shift(state, 5, out=tmp)
        tmp.bitwise_and_(MASK32)
        state.bitwise_xor_(tmp)
        out[step] = state
    return out.reshape(-1)[:n]
