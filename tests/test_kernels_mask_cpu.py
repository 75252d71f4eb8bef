"""The load's one-pass check against numpy's elementwise reference."""

from __future__ import annotations

import numpy as np
import pytest

from hiddenite.kernels.mask_cpu import is_zero_one_of


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
