"""The load's one-pass check against numpy's elementwise reference."""

from __future__ import annotations

import numpy as np
import pytest

from hiddenite.kernels.mask_cpu import (
    RLE_OK,
    RLE_OVERSHOOT,
    RLE_TRUNCATED,
    is_zero_one_of,
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
