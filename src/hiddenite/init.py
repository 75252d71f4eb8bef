"""Weights from bits: frozen random weights regenerated from the seed alone.

Every function here maps 32-bit words from :mod:`hiddenite.prng` to float32 weights using
only IEEE-754 operations that are correctly rounded on every backend (``+ - * /`` and
``sqrt`` in float64, then one rounding to float32): no library ``log``/``exp``/``erfinv``
whose last bit may differ between CPU and CUDA, or between numpy builds. The same seed
therefore gives the same weights, bit for bit, wherever it runs.

Inits (``gain`` defaults to sqrt(2), the ReLU gain; ``fan_in`` = in_channels x kernel area):

- ``signed-constant``: one bit per weight (bit 31 of the word), value ``+-gain/sqrt(fan_in)``;
  with ``scale_by_density`` the value is divided by ``sqrt(density)`` (edge-popup's
  "scaled" variant).
- ``kaiming-uniform``: ``U(-b, b)`` with ``b = gain*sqrt(3/fan_in)``; u = (word + 0.5) / 2**32.
- ``kaiming-normal``: ``N(0, gain**2/fan_in)`` by the inverse normal CDF of u (Acklam's
  rational approximation, relative error < 1.2e-9; its logarithm is computed by exponent
  extraction and an odd series, not by a library call).

Kernels (``kernel=``, as in :func:`hiddenite.prng.lanes_torch`): ``"auto"`` (the default)
fuses the compiled lane kernel with the map above on a CPU device (numba; no word buffer,
every core) and uses torch ops elsewhere; ``"numba"`` forces the fused kernel (then copies to
the device); ``"numpy"`` is the reference (numpy words, numpy or torch map); ``"torch"``
steps the lanes with torch ops on the device. All give the same bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels import xorshift_cpu
from .prng import STREAM_WEIGHTS, check_kernel, lanes_numpy, lanes_torch, layer_seeds

INITS = ("signed-constant", "kaiming-uniform", "kaiming-normal")
RELU_GAIN = math.sqrt(2.0)

__all__ = [
    "INITS",
    "RELU_GAIN",
    "frozen_weights",
    "init_scale",
    "inverse_normal_cdf",
    "uniform_values",
    "words_to_unit_interval",
]

_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476
# 1/(2i+1) for the series log(m) = 2*atanh(s), s = (m-1)/(m+1), |s| < 0.1716
_ATANH_COEFFS = [1.0 / (2 * i + 1) for i in range(13)]

_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def words_to_unit_interval(words: torch.Tensor) -> torch.Tensor:
    """Map 32-bit words (int64 tensor, values in [0, 2**32)) to float64 in (0, 1), exactly."""
    return (words.to(torch.float64) + 0.5) * (2.0**-32)


def _log(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive float64 values, from exact exponent extraction and a series."""
    mantissa, exponent = torch.frexp(x)  # x = m * 2**e, m in [0.5, 1): both exact
    small = mantissa < _SQRT_HALF
    mantissa = torch.where(small, mantissa * 2.0, mantissa)
    exponent = exponent.to(torch.float64) - small.to(torch.float64)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    poly = torch.full_like(s, _ATANH_COEFFS[-1])
    for c in reversed(_ATANH_COEFFS[:-1]):
        poly = poly * s2 + c
    return exponent * _LN2 + 2.0 * s * poly


def _horner(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    acc = torch.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def inverse_normal_cdf(u: torch.Tensor) -> torch.Tensor:
    """Standard-normal quantile of float64 ``u`` in (0, 1) (Acklam; rel. error < 1.2e-9)."""
    q = u - 0.5
    r = q * q
    out = _horner(_A, r) * q / (_horner(_B, r) * r + 1.0)
    tail_u = torch.minimum(u, 1.0 - u)
    in_tail = tail_u < _P_LOW  # about 4.85 % of the values: the log series runs on these only
    tu = tail_u[in_tail]
    t = torch.sqrt(-2.0 * _log(tu))
    tail = _horner(_C, t) / (_horner(_D, t) * t + 1.0)  # the lower tail's (negative) quantile
    out[in_tail] = torch.where(u[in_tail] < 0.5, tail, -tail)
    return out


def init_scale(
    init: str, fan_in: int, gain: float, density: float = 1.0, scale_by_density: bool = False
) -> float:
    """The float64 scale of ``init``: the signed constant or the normal's standard deviation
    ``gain/sqrt(fan_in)`` (divided by ``sqrt(density)`` with ``scale_by_density``), or the
    uniform bound ``sqrt(3)`` times that."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density (kept fraction) must be in (0, 1], got {density}")
    std = gain / math.sqrt(fan_in)
    if scale_by_density:
        std /= math.sqrt(density)
    return std * math.sqrt(3.0) if init == "kaiming-uniform" else std


def _fused(
    mode: str, scale: float, seed: int, layer_index: int, n: int, n_lanes: int, stream: int
) -> np.ndarray:
    """float32 values of ``mode`` made by the compiled kernel as the words are generated."""
    seeds = layer_seeds(seed, layer_index, n, n_lanes, stream)
    if mode == "signed-constant":
        return xorshift_cpu.lane_values(seeds, n, xorshift_cpu.SIGN, scale)
    if mode == "uniform":
        return xorshift_cpu.lane_values(seeds, n, xorshift_cpu.UNIFORM, scale)
    acklam = (np.array(_A), np.array(_B), np.array(_C), np.array(_D), _P_LOW)
    return xorshift_cpu.lane_values(seeds, n, xorshift_cpu.NORMAL, scale, acklam)


def _compiled(kernel: str, target: torch.device) -> bool:
    return check_kernel(kernel) == "numba" or (kernel == "auto" and target.type == "cpu")


def uniform_values(
    shape: tuple[int, ...],
    bound: float,
    *,
    seed: int,
    layer_index: int,
    stream: int,
    n_lanes: int = 4096,
    device: torch.device | str | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """float32 ``U(-bound, bound)`` of ``shape`` from one layer's PRNG ``stream``:
    ``((word + 0.5) * 2**-32 * 2 - 1) * bound`` in float64, rounded once."""
    n = math.prod(shape)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if _compiled(kernel, target):
        values = _fused("uniform", float(bound), seed, layer_index, n, n_lanes, stream)
        return torch.from_numpy(values).reshape(shape).to(target)
    words = lanes_torch(seed, layer_index, n, n_lanes, stream, device=target, kernel=kernel)
    u = words_to_unit_interval(words)
    return ((u * 2.0 - 1.0) * bound).to(torch.float32).reshape(shape)


def frozen_weights(
    shape: tuple[int, ...],
    *,
    init: str,
    seed: int,
    layer_index: int,
    fan_in: int,
    gain: float = RELU_GAIN,
    density: float = 1.0,
    scale_by_density: bool = False,
    n_lanes: int = 4096,
    device: torch.device | str | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """Regenerate one layer's frozen float32 weights of ``shape`` from (seed, layer_index).

    ``fan_in`` is the number of inputs per output unit; ``density`` (kept fraction) only
    matters with ``scale_by_density``. ``kernel``: see the module docstring (every kernel
    gives the same bits).
    """
    check_kernel(kernel)
    scale = init_scale(init, fan_in, gain, density, scale_by_density)
    n = math.prod(shape)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if _compiled(kernel, target):
        mode = "uniform" if init == "kaiming-uniform" else init
        values = _fused(mode, scale, seed, layer_index, n, n_lanes, STREAM_WEIGHTS)
        return torch.from_numpy(values).reshape(shape).to(target)
    if kernel == "numpy" and init != "kaiming-normal":
        # numpy reference path: the same IEEE operations on the same words
        words = lanes_numpy(seed, layer_index, n, n_lanes, STREAM_WEIGHTS)
        if init == "signed-constant":
            c = np.float32(scale)
            values = np.where(words.view(np.int32) < 0, c, -c)  # top bit set: +c
        else:
            unit = (words.astype(np.float64) + 0.5) * (2.0**-32)
            values = ((unit * 2.0 - 1.0) * scale).astype(np.float32)
        return torch.from_numpy(values).reshape(shape).to(target)
    words = lanes_torch(seed, layer_index, n, n_lanes, STREAM_WEIGHTS, device=target, kernel=kernel)
    if init == "signed-constant":
        sign = (words >> 31).to(torch.float32) * 2.0 - 1.0
        values = sign * torch.tensor(scale, dtype=torch.float32, device=sign.device)
    elif init == "kaiming-uniform":
        values = ((words_to_unit_interval(words) * 2.0 - 1.0) * scale).to(torch.float32)
    else:
        values = (inverse_normal_cdf(words_to_unit_interval(words)) * scale).to(torch.float32)
    return values.reshape(shape)
