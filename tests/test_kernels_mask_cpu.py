"""The load's one-pass check against numpy's elementwise reference."""

from __future__ import annotations

import constriction
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiddenite.codecs import entropy_grouped as eg
from hiddenite.kernels.mask_cpu import (
    RANGE_INVALID,
    RANGE_OK,
    RLE_OK,
    RLE_OVERSHOOT,
    RLE_TRUNCATED,
    fill_zero_one,
    is_zero_one_of,
    range_decode,
    range_encodes_to,
    rle_fields,
)


def reference(values: np.ndarray, mask: np.ndarray) -> bool:
    return bool(np.all(values == mask.astype(np.float32)))


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_numpy(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(1000) < 0.3
    values = mask.astype(np.float32)
    assert is_zero_one_of(values, mask) and reference(values, mask)
    values[mask.argmin()] = -0.0  # a negative zero is a zero
    assert is_zero_one_of(values, mask) == reference(values, mask) is True
    for bad in (0.5, 2.0, -1.0, np.nan, np.inf):
        v = values.copy()
        v[rng.integers(1000)] = bad
        assert is_zero_one_of(v, mask) == reference(v, mask) is False
    flipped = mask.copy()
    flipped[rng.integers(1000)] ^= True
    assert is_zero_one_of(values, flipped) == reference(values, flipped) is False
    assert is_zero_one_of(values[:0], mask[:0])


# --------------------------------------------------------------------------- rle fields
# The reference: the vectorised numpy field loop rle.decode ran before the compiled one.


def read_fields(buf: np.ndarray, w: int, start: int, count: int) -> np.ndarray:
    """Fields ``start .. start+count-1`` of the MSB-first ``w``-bit stream ``buf``, bit by bit."""
    bits = np.unpackbits(buf)
    out = np.zeros(count, dtype=np.int64)
    for k in range(w):
        out = (out << 1) | bits[(start + np.arange(count)) * w + k]
    return out


def reference_fields(buf, w, n, available):
    esc = (1 << w) - 1
    out = np.zeros(n, dtype=np.bool_)
    f = read_fields(buf, w, 0, available)
    is_esc = f == esc
    cum = np.cumsum(np.where(is_esc, esc, f + 1))
    hit = np.flatnonzero(cum >= n)
    if hit.size == 0:
        out[cum[~is_esc] - 1] = True
        return RLE_TRUNCATED, available, int(cum[-1]) if available else 0, out
    j = int(hit[0])
    if int(cum[j]) > (n if is_esc[j] else n + 1):
        return RLE_OVERSHOOT, j + 1, j, None
    kept = cum[: j + 1][~is_esc[: j + 1]] - 1
    out[kept[kept < n]] = True
    return RLE_OK, j + 1, 0, out


@pytest.mark.parametrize("w", [2, 3, 5, 7, 8, 9, 12, 13, 16, 21, 32])
def test_rle_fields_agree_with_the_numpy_reference(w):
    rng = np.random.default_rng(w)
    for trial in range(30):
        available = int(rng.integers(0, 60))
        esc = (1 << w) - 1
        fields = rng.integers(0, min(esc, 40) + 1, available)
        if esc <= 1 << 12:  # escapes (for wide fields they would make huge masks)
            fields[rng.random(available) < 0.2] = esc
        bits = ((fields[:, None] >> np.arange(w - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
        buf = np.concatenate([np.packbits(bits), np.zeros(8, np.uint8)])
        total = int(np.where(fields == esc, esc, fields + 1).sum()) if available else 0
        for n in {1, max(total - 1, 1), max(total, 1), total + 1, int(rng.integers(1, 200))}:
            out = np.zeros(n, dtype=np.bool_)
            got = rle_fields(buf, w, n, available, out)
            want = reference_fields(buf, w, n, available)
            assert tuple(got) == want[:3], (w, trial, n)
            if want[3] is not None:
                np.testing.assert_array_equal(out, want[3])


# ----------------------------------------------------------------- range_decode vs constriction


def constriction_decode(words: np.ndarray, model: np.ndarray, count: int) -> np.ndarray | None:
    """constriction's own RangeDecoder and Categorical(perfect=False); None where it reports
    invalid data."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        out = decoder.decode(constriction.stream.model.Categorical(model, perfect=False), count)
    except AssertionError:  # "Tried to decode from compressed data that is invalid ..."
        return None
    return np.asarray(out, dtype=np.int32)


def compiled_decode(words: np.ndarray, model: np.ndarray, count: int) -> np.ndarray | None:
    out = np.full(count, -1, dtype=np.int32)
    histogram = np.zeros(model.size, dtype=np.int64)
    outcome = range_decode(words, eg.quantized_cdf(model), 24, out, histogram)
    assert outcome in (RANGE_OK, RANGE_INVALID)
    if outcome != RANGE_OK:
        return None
    assert np.array_equal(histogram, np.bincount(out, minlength=model.size))
    return out


def assert_same(words, model, count):
    want = constriction_decode(words, model, count)
    have = compiled_decode(words, model, count)
    if want is None:
        assert have is None
    else:
        assert have is not None and np.array_equal(have, want)


def test_quantized_cdf_by_hand():
    # two halves: scale = (2**24 - 2) / 1, the second value starts at floor(0.5 scale) + 1
    assert eg.quantized_cdf(np.array([0.5, 0.5])).tolist() == [0, 2**23, 2**24]
    # a zero probability still gets one slot; [0.25, 0, 0.75] (sum 1): scale = 2**24 - 3
    cdf = eg.quantized_cdf(np.array([0.25, 0.0, 0.75]))
    assert cdf.tolist() == [0, (2**24 - 3) // 4 + 1, (2**24 - 3) // 4 + 2, 2**24]


models = st.integers(2, 256).flatmap(
    lambda size: st.lists(
        st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.integers(1, 1000).map(float)),
        min_size=size,
        max_size=size,
    ).filter(lambda p: sum(p) > 0)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models, seed=st.integers(0, 2**32 - 1), count=st.integers(1, 600))
def test_range_decode_is_constrictions_on_encoded_streams(model, seed, count):
    model = np.array(model)
    p = model / model.sum()
    symbols = np.random.default_rng(seed).choice(model.size, count, p=p).astype(np.int32)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(symbols, constriction.stream.model.Categorical(model, perfect=False))
    words = encoder.get_compressed().astype(np.uint32)
    assert np.array_equal(compiled_decode(words, model, count), symbols)
    assert_same(words, model, count + 7)  # decoding past the end: zero words follow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=models,
    words=st.lists(st.integers(0, 2**32 - 1), max_size=40),
    count=st.integers(1, 400),
)
def test_range_decode_is_constrictions_on_arbitrary_words(model, words, count):
    assert_same(np.array(words, dtype=np.uint32), np.array(model), count)


def test_range_decode_invalid_data_like_constriction():
    # a point just below 2**64 gives quantile 2**24 on the first symbol: invalid for both
    words = np.array([0xFFFFFFFF, 0xFFFFFFFF], dtype=np.uint32)
    model = np.array([0.5, 0.5])
    assert constriction_decode(words, model, 1) is None
    assert compiled_decode(words, model, 1) is None


@pytest.mark.parametrize("q", [1, 2**20, 3 * 2**22, 2**24 - 1])
def test_range_decode_grouped_masks(q):
    """The codec's own models (8 mask bits a group), skewed to either end."""
    model = eg.group_model(np.array([2**24 - q, q]), 2)
    rng = np.random.default_rng(q)
    groups = rng.choice(256, 3000, p=model / model.sum()).astype(np.int32)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(groups, constriction.stream.model.Categorical(model, perfect=False))
    words = encoder.get_compressed().astype(np.uint32)
    assert np.array_equal(compiled_decode(words, model, groups.size), groups)
    flipped = words.copy()
    flipped[len(words) // 2] ^= np.uint32(1 << 7)
    assert_same(flipped, model, groups.size)


# ------------------------------------------------------------- range_encodes_to vs constriction

M64 = (1 << 64) - 1


class NaiveRangeEncoder:
    """constriction's RangeEncoder rules in plain Python integers (a second, independent
    reading of them); ``steer`` picks symbols that keep a held ("inverted") run going, so
    that runs of several held words, rare in random data, are exercised too."""

    def __init__(self, cdf):
        self.cdf = [int(c) for c in cdf]
        self.lower, self.range, self.held, self.first, self.out = 0, M64, 0, 0, []
        self.longest = 0

    def _release(self, carry):
        head = (self.first + 1) & 0xFFFFFFFF if carry else self.first
        self.out += [head] + [0 if carry else 0xFFFFFFFF] * (self.held - 1)

    def steer(self) -> int | None:
        """A symbol whose interval still wraps past 2**64 (None when not inverted)."""
        if not self.held:
            return None
        scale = self.range >> 24
        for s in range(len(self.cdf) - 1):
            lo = (self.lower + scale * self.cdf[s]) & M64
            if lo + scale * (self.cdf[s + 1] - self.cdf[s]) > M64:
                return s
        return None

    def encode(self, s: int) -> None:
        left, p = self.cdf[s], self.cdf[s + 1] - self.cdf[s]
        scale = self.range >> 24
        self.range = scale * p
        new = (self.lower + scale * left) & M64
        if self.held and (new + self.range) & M64 > new:
            self._release(new < self.lower)
            self.held = 0
        self.lower = new
        if self.range < 1 << 32:
            self.range <<= 32
            word = self.lower >> 32
            self.lower = (self.lower << 32) & M64
            if self.held:
                self.held += 1
                self.longest = max(self.longest, self.held)
            elif (self.lower + self.range) & M64 > self.lower:
                self.out.append(word)
            else:
                self.held, self.first = 1, word

    def sealed(self) -> list[int]:
        if self.range == M64:
            return []
        out, held = list(self.out), self.held
        point = (self.lower + 0xFFFFFFFF) & M64
        if held:
            carry = point < self.lower
            head = (self.first + 1) & 0xFFFFFFFF if carry else self.first
            out += [head] + [0 if carry else 0xFFFFFFFF] * (held - 1)
        out.append(point >> 32)
        if ((self.lower + self.range) & M64) >> 32 == point >> 32:
            out.append(0)
        return out


def constriction_words(symbols, model) -> np.ndarray:
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(
        np.asarray(symbols, dtype=np.int32),
        constriction.stream.model.Categorical(model, perfect=False),
    )
    return encoder.get_compressed().astype(np.uint32)


def assert_encodes_exactly(words, cdf, symbols):
    """True for constriction's words, False for every word dropped, added or changed."""
    symbols = np.asarray(symbols, dtype=np.int32)
    assert range_encodes_to(words, cdf, 24, symbols)
    assert not range_encodes_to(np.append(words, np.uint32(0)), cdf, 24, symbols)
    if words.size:
        assert not range_encodes_to(words[:-1].copy(), cdf, 24, symbols)
        for at in {0, words.size // 2, words.size - 1}:
            changed = words.copy()
            changed[at] ^= np.uint32(1 << (at % 32))
            assert not range_encodes_to(changed, cdf, 24, symbols)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models, seed=st.integers(0, 2**32 - 1), count=st.integers(0, 2000))
def test_range_encodes_to_is_constrictions_encoder(model, seed, count):
    model = np.array(model)
    symbols = np.random.default_rng(seed).choice(model.size, count, p=model / model.sum())
    cdf = eg.quantized_cdf(model)
    words = constriction_words(symbols, model)
    naive = NaiveRangeEncoder(cdf)
    for s in symbols:
        naive.encode(int(s))
    assert naive.sealed() == words.tolist()
    assert_encodes_exactly(words, cdf, symbols)


@pytest.mark.parametrize("seed", range(6))
def test_range_encodes_to_long_held_runs(seed):
    """Symbols steered to keep the interval across a word boundary: held runs of several
    words, each released with or without a carry, or at the seal."""
    rng = np.random.default_rng(seed)
    model = eg.group_model(np.array([2**24 - 5_000_000, 5_000_000]), 2) if seed % 2 else None
    model = rng.random(64) + 0.01 if model is None else model
    cdf = eg.quantized_cdf(model)
    naive = NaiveRangeEncoder(cdf)
    symbols, inside = [], []
    for i in range(3000):
        steered = naive.steer() if (i // 500) % 2 else None
        s = int(rng.choice(model.size, p=model / model.sum())) if steered is None else steered
        naive.encode(s)
        symbols.append(s)
        if naive.held >= 2:
            inside.append(len(symbols))
    assert naive.longest >= 3 and inside  # the steering made runs of held words
    words = constriction_words(symbols, model)
    assert naive.sealed() == words.tolist()
    assert_encodes_exactly(words, cdf, symbols)
    for stop in (1, inside[0], inside[-1], len(symbols) - 1):  # sealed inside a run or not
        assert_encodes_exactly(constriction_words(symbols[:stop], model), cdf, symbols[:stop])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_fill_zero_one_is_the_mask_as_floats(dtype, n):
    mask = np.random.default_rng(n).random(n) < 0.3
    values = np.full(n, np.nan, dtype=dtype)  # every value is written
    fill_zero_one(values, mask)
    assert np.array_equal(values, mask.astype(dtype))
    assert is_zero_one_of(values.astype(np.float32), mask)
