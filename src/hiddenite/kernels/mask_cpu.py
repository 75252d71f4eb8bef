"""Compiled (numba) CPU check of a restored edge-popup layer, in one pass with no copy."""

from __future__ import annotations

from numba import njit

__all__ = ["is_zero_one_of"]


@njit(nogil=True, cache=True)
def is_zero_one_of(values, mask) -> bool:
    """True when float ``values[i]`` is exactly ``1.0`` where ``mask[i]`` is set and exactly
    ``0.0`` (either sign) elsewhere, for 1-D arrays of one length; stops at the first miss."""
    for i in range(values.size):  # noqa: SIM110 (numba compiles the loop, not all())
        if values[i] != (1.0 if mask[i] else 0.0):
            return False
    return True
