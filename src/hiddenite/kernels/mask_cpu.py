"""Compiled (numba) CPU check of a restored edge-popup layer, in one pass with no copy."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["is_zero_one_of"]


@njit(nogil=True, cache=True)
def is_zero_one_of(values, mask) -> bool:
    """True when float ``values[i]`` is exactly ``1.0`` where ``mask[i]`` is set and exactly
    ``0.0`` (either sign) elsewhere, for 1-D arrays of one length (NaN never matches). No
    branch in the loop, so that it vectorises."""
    bad = False
    for i in range(values.size):
        bad |= values[i] != np.float32(mask[i])
    return not bad
