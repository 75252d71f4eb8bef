"""Compiled CPU kernels (numba) for the multi-lane Xorshift and the weights made from it.

Bit-identical to the numpy reference (:func:`hiddenite.prng.lanes_numpy` and the reference
paths of :mod:`hiddenite.init`); the tests compare them. Importing it imports numba (a few
tenths of a second); each kernel is compiled on its first call (and cached on disk by numba
where the package folder is writable), never at import.

Work split (independent of the lane count): the ``S`` steps of the ``L`` lanes are cut into
chunks of ``R`` consecutive steps, one per thread, each filling a contiguous run of
``R * L`` words. A chunk's start states come from *jumping ahead*: xorshift32 is linear over
GF(2), so ``R`` steps are one 32 x 32 bit matrix ``T**R`` (kept as its 32 columns, each a
32-bit word, and applied as four 256-entry byte tables). So one lane (a plain xorshift32
stream) uses every thread as well as 4,096 lanes do.

The chunks run on ``torch.get_num_threads()`` threads (the calling one and one started per
other chunk; a chunk holds at least ``_TASK_WORDS`` words of its mode, so small layers stay on
the calling thread), each calling a compiled kernel that releases the GIL (``nogil``). Not
numba's ``parallel=True``: its OpenMP workers
spin while they wait, and next to torch's own OpenMP pool on a busy 2-core machine that made
``hiddenite.load`` of a ResNet-50 several times slower than one thread (``BENCHMARKS.md``);
idle Python threads sleep.

Outputs are written straight into the caller's array: raw words (uint32), or float32 weights
fused with the generator, so no full-size word buffer exists:

- ``SIGN``: ``+c`` when bit 31 of the word is set, else ``-c`` (signed constant);
- ``UNIFORM``: ``((word + 0.5) * 2**-32 * 2 - 1) * bound`` in float64, rounded once;
- ``NORMAL``: Acklam's inverse normal CDF of ``(word + 0.5) * 2**-32`` (coefficients passed
  in by :mod:`hiddenite.init`, the one place they are written), times ``std``; computed in
  vectorised passes over cache-sized blocks, the 4.85 % of values in the tails gathered
  and done apart (:func:`_fill_normal`).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

__all__ = ["NORMAL", "SIGN", "UNIFORM", "lane_values", "lane_words"]

SIGN = 1
UNIFORM = 2
NORMAL = 3
# At least this many words per chunk (a thread start costs about 0.08 ms here): the raw
# words and the signed constant cost ~0.2 ns a word, the uniform ~0.3, the normal ~0.85.
_TASK_WORDS = {SIGN: 1 << 20, UNIFORM: 1 << 19, NORMAL: 1 << 17}
_FEW_LANES = 16  # below this, each lane runs on its own (the lanes loop cannot vectorise)
_BLOCK = 4096  # values per pass of the normal kernel (its buffers stay in the L1 cache)
_PACK_BYTES = np.uint64(0x0102040810204080)  # times 8 bytes of 0/1, >> 56: their 8 bits

_M32 = np.uint64(0xFFFFFFFF)
_S13 = np.uint64(13)
_S17 = np.uint64(17)
_S5 = np.uint64(5)
_ONE = np.uint64(1)
_HALF_ULP = 2.0**-32
_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476
_EXPONENT_SHIFT = np.uint64(52)
_FRACTION = np.uint64(0x000FFFFFFFFFFFFF)
_HALF_EXPONENT = np.uint64(0x3FE0000000000000)  # the exponent field of [0.5, 1)


@njit(inline="always")
def _step(x):
    """One xorshift32 (13, 17, 5) step on a uint64 holding a 32-bit state."""
    x ^= (x << _S13) & _M32
    x ^= x >> _S17
    x ^= (x << _S5) & _M32
    return x


@njit(inline="always")
def _apply(columns, x):
    """The GF(2) matrix with these 32 columns times the 32-bit state ``x``."""
    y = np.uint64(0)
    for b in range(32):
        if (x >> np.uint64(b)) & _ONE:
            y ^= columns[b]
    return y


@njit(cache=True, nogil=True)
def _jump_columns(steps):
    """The 32 columns of T**steps, T the xorshift32 step matrix (square and multiply)."""
    result = np.empty(32, np.uint64)
    power = np.empty(32, np.uint64)
    tmp = np.empty(32, np.uint64)
    for b in range(32):
        result[b] = _ONE << np.uint64(b)  # identity
        power[b] = _step(_ONE << np.uint64(b))  # T
    k = steps
    while k > 0:
        if k & 1:
            for b in range(32):
                tmp[b] = _apply(power, result[b])
            result[:] = tmp
        k >>= 1
        if k:
            for b in range(32):
                tmp[b] = _apply(power, power[b])
            power[:] = tmp
    return result


@njit(cache=True, nogil=True)
def _byte_tables(columns):
    """The matrix as 4 tables of 256 words: table k maps byte k of a state to its image."""
    tables = np.zeros((4, 256), np.uint64)
    for k in range(4):
        for v in range(256):
            y = np.uint64(0)
            for b in range(8):
                if (v >> b) & 1:
                    y ^= columns[8 * k + b]
            tables[k, v] = y
    return tables


@njit(cache=True, nogil=True)
def _chunk_starts(seeds, chunks, rows):
    """States of every lane at the start of each chunk of ``rows`` steps (chunks x lanes)."""
    lanes = seeds.size
    starts = np.empty((chunks, lanes), np.uint32)
    tables = _byte_tables(_jump_columns(rows))
    for j in range(lanes):
        x = np.uint64(seeds[j])
        starts[0, j] = np.uint32(x)
        for c in range(1, chunks):
            x = (
                tables[0, x & np.uint64(255)]
                ^ tables[1, (x >> np.uint64(8)) & np.uint64(255)]
                ^ tables[2, (x >> np.uint64(16)) & np.uint64(255)]
                ^ tables[3, x >> np.uint64(24)]
            )
            starts[c, j] = np.uint32(x)
    return starts


@njit(cache=True, nogil=True)
def _fill_words(state, first, last, n, out):
    """Steps ``first .. last-1`` of lanes in ``state`` (updated in place) into ``out``."""
    lanes = state.size
    if lanes < _FEW_LANES:  # too few lanes to vectorise across: one lane at a time
        for j in range(lanes):
            x = np.uint64(state[j])
            for r in range(first, last):
                x = _step(x)
                i = r * lanes + j
                if i < n:
                    out[i] = np.uint32(x)
            state[j] = np.uint32(x)
        return
    for r in range(first, last):
        base = r * lanes
        for j in range(lanes):
            state[j] = np.uint32(_step(np.uint64(state[j])))
        top = min(lanes, n - base)
        out[base : base + top] = state[:top]  # a slice: contiguous stores, not a scatter


@njit(inline="always")
def _value(word, mode, scale, plus, minus):
    if mode == SIGN:
        return plus if word >> np.uint32(31) else minus
    u = (float(word) + 0.5) * _HALF_ULP
    return np.float32((u * 2.0 - 1.0) * scale)


@njit(cache=True, nogil=True)
def _fill_values(state, first, last, n, out, mode, scale):
    """Like :func:`_fill_words`, writing float32 values made from the words (``SIGN`` or
    ``UNIFORM``; :func:`_fill_normal` makes the ``NORMAL`` ones)."""
    lanes = state.size
    plus = np.float32(scale)
    minus = -plus
    if lanes < _FEW_LANES:
        for j in range(lanes):
            x = np.uint64(state[j])
            for r in range(first, last):
                x = _step(x)
                i = r * lanes + j
                if i < n:
                    out[i] = _value(np.uint32(x), mode, scale, plus, minus)
            state[j] = np.uint32(x)
        return
    for r in range(first, last):
        base = r * lanes
        row = out[base : base + min(lanes, n - base)]  # a view: contiguous stores
        for j in range(lanes):
            state[j] = np.uint32(_step(np.uint64(state[j])))
        if mode == SIGN:
            for j in range(row.size):
                row[j] = plus if state[j] >> np.uint32(31) else minus
        else:
            for j in range(row.size):
                u = (float(state[j]) + 0.5) * _HALF_ULP
                row[j] = np.float32((u * 2.0 - 1.0) * scale)


@njit(inline="always")
def _in_tail(word, tail_words):
    """Whether ``min(u, 1 - u) < p_low`` for the uint32 ``word``: its ``u`` is among the
    ``tail_words`` lowest or (``1 - u`` being the ``u`` of ``~word``) highest."""
    return np.uint32(word + np.uint32(tail_words)) < np.uint32(2 * tail_words)


@njit(cache=True, nogil=True)
def _in_tail_array(words, tail_words):
    """:func:`_in_tail` of each word (for the tests)."""
    out = np.empty(words.size, np.bool_)
    for j in range(words.size):
        out[j] = _in_tail(words[j], tail_words)
    return out


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-divisor test: it blocks SIMD
def _fill_normal(state, first, last, n, out, scale, a, b, c, d, tail_words):
    """Like :func:`_fill_values` for ``NORMAL``, in passes over blocks of at most ``_BLOCK``
    values (whole rows of lanes, or a piece of a row wider than that), whose buffers stay
    in the L1 cache whatever the lane count; each pass but the third is a loop without
    branches that LLVM vectorises:

    1. the block's words (every lane stepped);
    2. Acklam's central branch for every value, written to ``out``, and a 0/1 byte per
       value: word ``w`` is in a tail (``min(u, 1 - u) < p_low``) exactly when
       ``(w + tail_words) mod 2**32 < 2 * tail_words`` (``tail_words`` from
       :func:`_tail_words`, the count of words whose ``u`` is below ``p_low``);
    3. the tails (about 4.85 %) gathered: the bytes of 64 values packed into one 64-bit
       mask (a multiply per 8 bytes), whose set bits are visited (six of them without a
       branch, the rest in a loop); their indices and words are kept;
    4. ``tail_u = min(u, 1 - u)`` of those, ``frexp`` from its IEEE-754 bits (exact, as
       the reference's), then the log series, the square root and the tail's rational
       function, over the gathered values;
    5. the tail values written over their central ones (``u < 0.5`` is ``w < 2**31``).

    Every value gets the reference's float64 operations in the reference's order
    (``error_model="numpy"`` only drops numba's zero-divisor check; no fast-math); the
    branch test is done on the integer word, which selects the same values.
    """
    lanes = state.size
    rows = max(1, _BLOCK // lanes)  # a block: whole rows of lanes, or a piece of one row
    width = min(lanes, _BLOCK)
    size = rows * width
    padded = -(-size // 64) * 64
    words = np.zeros(size + 64, np.uint32)
    flags = np.zeros(padded, np.uint8)
    flag_words = flags.view(np.uint64)
    where = np.empty(size + 6, np.int64)
    tail_word = np.empty(size + 6, np.uint32)
    tails = np.empty(size, np.float64)
    tail_bits = tails.view(np.uint64)
    mantissas = np.empty(size, np.float64)
    mantissa_bits = mantissas.view(np.uint64)
    exponents = np.empty(size, np.float64)
    a0, a1, a2, a3, a4, a5 = a[0], a[1], a[2], a[3], a[4], a[5]
    b0, b1, b2, b3, b4 = b[0], b[1], b[2], b[3], b[4]
    c0, c1, c2, c3, c4, c5 = c[0], c[1], c[2], c[3], c[4], c[5]
    d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
    for r0 in range(first, last, rows):
        r1 = min(last, r0 + rows)
        for j0 in range(0, lanes, width):
            j1 = min(lanes, j0 + width)
            start = r0 * lanes + j0
            m = min((r1 - 1) * lanes + j1, n) - start
            if lanes < _FEW_LANES:  # 1. the words
                for j in range(lanes):
                    x = np.uint64(state[j])
                    for r in range(r1 - r0):
                        x = _step(x)
                        words[r * lanes + j] = np.uint32(x)
                    state[j] = np.uint32(x)
            else:
                piece = state[j0:j1]
                for r in range(r1 - r0):
                    row = words[r * width : (r + 1) * width]
                    for j in range(piece.size):
                        x = np.uint32(_step(np.uint64(piece[j])))
                        piece[j] = x
                        row[j] = x
            if m <= 0:
                continue  # lanes past the end of the last row
            dst = out[start : start + m]
            for j in range(m):  # 2. the central branch, and the tails' flags
                w = words[j]
                q = (float(w) + 0.5) * _HALF_ULP - 0.5
                r = q * q
                num = ((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5
                den = (((b0 * r + b1) * r + b2) * r + b3) * r + b4
                dst[j] = np.float32(num * q / (den * r + 1.0) * scale)
                flags[j] = np.uint8(1 if _in_tail(w, tail_words) else 0)
            flags[m:] = 0
            k = 0
            for g in range(0, m, 64):  # 3. the tails gathered
                mask = np.uint64(0)
                for i in range(8):
                    packed = (flag_words[(g >> 3) + i] * _PACK_BYTES) >> np.uint64(56)
                    mask |= packed << np.uint64(8 * i)
                for _ in range(6):  # without branches (most groups have at most 6 tails)
                    j = g + trailing_zeros(mask)  # g + 64 once the mask is empty: padding
                    where[k] = j
                    tail_word[k] = words[j]
                    k += 1 if mask else 0
                    mask &= mask - np.uint64(1)
                while mask:
                    j = g + trailing_zeros(mask)
                    where[k] = j
                    tail_word[k] = words[j]
                    k += 1
                    mask &= mask - np.uint64(1)
            for t in range(k):  # 4. tail_u, its frexp, the tail's quantile
                u = (float(tail_word[t]) + 0.5) * _HALF_ULP
                tails[t] = min(u, 1.0 - u)
            for t in range(k):
                x = tail_bits[t]
                exponents[t] = float(np.int64(x >> _EXPONENT_SHIFT) - 1022)
                mantissa_bits[t] = (x & _FRACTION) | _HALF_EXPONENT
            for t in range(k):
                mantissa = mantissas[t]
                e = exponents[t]
                small = mantissa < _SQRT_HALF
                mantissa = mantissa * 2.0 if small else mantissa
                e = e - 1.0 if small else e
                s = (mantissa - 1.0) / (mantissa + 1.0)
                s2 = s * s
                poly = 1.0 / 25.0
                for i in range(11, -1, -1):
                    poly = poly * s2 + 1.0 / (2 * i + 1)
                v = math.sqrt(-2.0 * (e * _LN2 + 2.0 * s * poly))
                num = ((((c0 * v + c1) * v + c2) * v + c3) * v + c4) * v + c5
                tails[t] = num / ((((d0 * v + d1) * v + d2) * v + d3) * v + 1.0)
            for t in range(k):  # 5. the tail values over the central ones
                tail = tails[t] if tail_word[t] < np.uint32(0x80000000) else -tails[t]
                dst[where[t]] = np.float32(tail * scale)


def _tail_words(p_low: float) -> int:
    """How many words ``w`` have ``u = (w + 0.5) * 2**-32 < p_low`` (float64, as the
    reference computes it); by symmetry (``1 - u`` is exactly the ``u`` of ``~w``) as many
    have ``1 - u < p_low``."""
    if not 0.0 < p_low < 0.5:
        raise ValueError(f"p_low must be in (0, 0.5), got {p_low!r}")
    count = int(p_low * 2.0**32)
    while count > 0 and (count - 1 + 0.5) * _HALF_ULP >= p_low:
        count -= 1
    while (count + 0.5) * _HALF_ULP < p_low:
        count += 1
    return count


def _plan(seeds: np.ndarray, n: int, task_words: int) -> tuple[np.ndarray, int]:
    """Start states (chunks x lanes, uint32) and steps per chunk for ``n`` words: one chunk
    per thread, each of at least ``task_words`` words."""
    lanes = seeds.size
    steps = -(-n // lanes)
    threads = max(1, torch.get_num_threads())
    chunks = max(1, min(steps, threads, n // task_words))
    rows = -(-steps // chunks)
    chunks = -(-steps // rows)
    if chunks == 1:
        return seeds.astype(np.uint32).reshape(1, lanes), rows
    return _chunk_starts(seeds, chunks, rows), rows


def _run(fill, seeds: np.ndarray, n: int, out: np.ndarray, task_words: int, *args) -> None:
    """Fill ``out`` with ``fill``, one chunk per thread: the calling thread runs the first,
    a started thread each other one (cheaper than a pool for one call)."""
    starts, rows = _plan(seeds, n, task_words)
    steps = -(-n // seeds.size)
    failed: list[BaseException] = []

    def chunk(c: int) -> None:
        try:
            fill(starts[c].copy(), c * rows, min(steps, (c + 1) * rows), n, out, *args)
        except BaseException as exc:  # re-raised by the calling thread
            failed.append(exc)

    workers = [threading.Thread(target=chunk, args=(c,)) for c in range(1, starts.shape[0])]
    for worker in workers:
        worker.start()
    chunk(0)
    for worker in workers:
        worker.join()
    if failed:
        raise failed[0]


def lane_words(seeds: np.ndarray, n: int) -> np.ndarray:
    """``n`` uint32 words from lanes started at ``seeds`` (word i: lane i % L, step i // L)."""
    out = np.empty(n, dtype=np.uint32)
    if n:
        _run(_fill_words, seeds, n, out, _TASK_WORDS[SIGN])
    return out


def lane_values(
    seeds: np.ndarray,
    n: int,
    mode: int,
    scale: float,
    normal: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None,
) -> np.ndarray:
    """``n`` float32 values made from the lane words as they are generated (see the module
    docstring for ``mode``); ``normal`` is Acklam's (a, b, c, d, p_low) for ``NORMAL``."""
    if mode not in (SIGN, UNIFORM, NORMAL):
        raise ValueError(f"unknown kernel mode {mode!r}")
    if mode == NORMAL and (normal is None or [len(v) for v in normal[:4]] != [6, 5, 6, 4]):
        raise ValueError("the NORMAL mode needs Acklam's coefficients (6, 5, 6 and 4 of them)")
    out = np.empty(n, dtype=np.float32)
    if n and mode == NORMAL:
        a, b, c, d, p_low = normal
        tail_words = _tail_words(float(p_low))
        _run(_fill_normal, seeds, n, out, _TASK_WORDS[NORMAL], float(scale), a, b, c, d, tail_words)
    elif n:
        _run(_fill_values, seeds, n, out, _TASK_WORDS[mode], mode, float(scale))
    return out


@njit(inline="always")
def _order_key(b):
    """A uint32 whose unsigned order is the float32 order of the pattern ``b``: -0.0 counts
    as +0.0 and every NaN as one NaN above +inf (where ``np.partition`` puts NaNs)."""
    if b == np.uint32(0x80000000):
        b = np.uint32(0)
    elif (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        b = np.uint32(0x7FC00000)
    if b >> np.uint32(31):
        return np.uint32(~b)
    return np.uint32(b | np.uint32(0x80000000))


@njit(cache=True, nogil=True)
def _histogram4(bits, low_half, high):
    """Counts of the keys' high 16 bits (``low_half`` 0), or of the low 16 bits of the keys
    whose high 16 bits are ``high``; four interleaved tables so that runs of equal keys do
    not wait on one counter."""
    tables = np.zeros((4, 65536), np.int32)
    size = bits.size
    for i in range(0, size - 3, 4):
        for t in range(4):
            key = _order_key(bits[i + t])
            if low_half == 0:
                tables[t, key >> np.uint32(16)] += 1
            elif (key >> np.uint32(16)) == high:
                tables[t, key & np.uint32(0xFFFF)] += 1
    for i in range(size - size % 4, size):
        key = _order_key(bits[i])
        if low_half == 0:
            tables[0, key >> np.uint32(16)] += 1
        elif (key >> np.uint32(16)) == high:
            tables[0, key & np.uint32(0xFFFF)] += 1
    counts = np.zeros(65536, np.int64)
    for t in range(4):
        for v in range(65536):
            counts[v] += tables[t, v]
    return counts


@njit(cache=True, nogil=True)
def _radix_select(bits, k):
    """The order key of the (k+1)-th smallest float32 (patterns ``bits``) and how many are
    smaller: a histogram of the keys' high 16 bits, then of the low 16 bits in that bin."""
    counts = _histogram4(bits, np.uint32(0), np.uint32(0))  # the high 16 bits of every key
    below = 0
    high = 0
    while below + counts[high] <= k:
        below += counts[high]
        high += 1
    counts = _histogram4(bits, np.uint32(1), np.uint32(high))  # low bits, in that bin
    low = 0
    while below + counts[low] <= k:
        below += counts[low]
        low += 1
    key = np.uint32((high << 16) | low)
    if key >> np.uint32(31):
        return np.uint32(key ^ np.uint32(0x80000000)), below
    return np.uint32(~key), below


def kth_smallest_float32(values: np.ndarray, k: int) -> tuple[np.float32, bool]:
    """The ``k``-th smallest (0-based) of float32 ``values`` and whether exactly ``k`` values
    are smaller than it (no tie from below): what ``np.partition(values, k)[k]`` and
    ``part[:k].max() < part[k]`` give, in two streaming passes instead of a copy and a
    selection."""
    if values.dtype != np.float32 or values.ndim != 1 or not 0 <= k < values.size:
        raise ValueError("kth_smallest_float32 takes 1-D float32 values and 0 <= k < size")
    pattern, below = _radix_select(values.view(np.uint32), k)
    return np.array([pattern], dtype=np.uint32).view(np.float32)[0], bool(below == k)
