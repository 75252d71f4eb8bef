"""Tests for hiddenite.init: frozen weights regenerated from (seed, layer_index).

References: the multi-lane words recomputed with numpy, Python's ``math.log`` and
``statistics.NormalDist().inv_cdf``, and the sampling theory of each distribution.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from hiddenite.init import (
    INITS,
    RELU_GAIN,
    _log,
    frozen_weights,
    inverse_normal_cdf,
    words_to_unit_interval,
)
from hiddenite.prng import lanes_numpy, lanes_torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _words(seed: int, layer: int, n: int, n_lanes: int = 4096) -> np.ndarray:
    return lanes_numpy(seed, layer, n, n_lanes, 0).astype(np.float64)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("init", INITS)
def test_same_arguments_bit_identical(init):
    kw = dict(init=init, seed=42, layer_index=3, fan_in=27)
    a = frozen_weights((16, 3, 3, 3), **kw)
    b = frozen_weights((16, 3, 3, 3), **kw)
    assert a.dtype == torch.float32 and tuple(a.shape) == (16, 3, 3, 3)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("init", INITS)
def test_different_layer_or_seed_differs(init):
    base = frozen_weights((64, 32), init=init, seed=1, layer_index=0, fan_in=32)
    other_layer = frozen_weights((64, 32), init=init, seed=1, layer_index=1, fan_in=32)
    other_seed = frozen_weights((64, 32), init=init, seed=2, layer_index=0, fan_in=32)
    for other in (other_layer, other_seed):
        assert not torch.equal(base, other)
        if init != "signed-constant":
            assert (base == other).float().mean() < 0.01
        else:
            assert 0.35 < (base == other).float().mean() < 0.65  # independent signs


def test_shape_is_only_a_view_of_the_stream():
    # the same (seed, layer, n) gives the same flat values whatever the shape
    a = frozen_weights((8, 4, 3, 3), init="kaiming-normal", seed=9, layer_index=2, fan_in=36)
    b = frozen_weights((288,), init="kaiming-normal", seed=9, layer_index=2, fan_in=36)
    assert torch.equal(a.reshape(-1), b)


def test_words_to_unit_interval_exact():
    w = torch.tensor([0, 1, 2**31, 2**32 - 1], dtype=torch.int64)
    u = words_to_unit_interval(w)
    assert u.dtype == torch.float64
    expected = [0.5 / 2**32, 1.5 / 2**32, 0.5 + 0.5 / 2**32, 1.0 - 0.5 / 2**32]
    assert u.tolist() == expected
    assert (u > 0).all() and (u < 1).all()


# --------------------------------------------------------------------------- signed constant


@pytest.mark.parametrize(
    ("shape", "fan_in", "gain"),
    [((64, 3, 3, 3), 27, RELU_GAIN), ((300, 784), 784, RELU_GAIN), ((100, 50), 50, 1.0)],
)
def test_signed_constant_values_and_signs(shape, fan_in, gain):
    w = frozen_weights(
        shape, init="signed-constant", seed=5, layer_index=1, fan_in=fan_in, gain=gain
    )
    c = np.float32(gain / math.sqrt(fan_in))
    assert set(np.unique(w.numpy()).tolist()) == {float(-c), float(c)}
    assert w.abs().max().item() == pytest.approx(gain / math.sqrt(fan_in), rel=1e-7)
    frac = (w > 0).float().mean().item()
    n = w.numel()
    assert abs(frac - 0.5) < 5 * 0.5 / math.sqrt(n)
    # the sign is bit 31 of the word
    words = lanes_numpy(5, 1, n)
    assert np.array_equal(w.numpy().reshape(-1) > 0, (words >> 31) == 1)


def test_default_gain_is_relu_gain():
    assert math.sqrt(2.0) == RELU_GAIN
    w = frozen_weights((10, 8), init="signed-constant", seed=0, layer_index=0, fan_in=8)
    assert w.abs().max().item() == pytest.approx(math.sqrt(2 / 8), rel=1e-7)


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 1.0])
def test_signed_constant_scale_by_density(density):
    kw = dict(init="signed-constant", seed=3, layer_index=0, fan_in=50)
    plain = frozen_weights((20, 50), **kw)
    scaled = frozen_weights((20, 50), density=density, scale_by_density=True, **kw)
    c = np.float32(RELU_GAIN / math.sqrt(50) / math.sqrt(density))
    assert set(np.unique(scaled.abs().numpy()).tolist()) == {float(c)}
    assert c == pytest.approx(math.sqrt(2 / (50 * density)), rel=1e-7)
    assert torch.equal(torch.sign(plain), torch.sign(scaled))
    # density without scale_by_density changes nothing
    assert torch.equal(frozen_weights((20, 50), density=density, **kw), plain)


# --------------------------------------------------------------------------- kaiming uniform


def test_kaiming_uniform_exact_against_numpy_reference():
    shape, fan_in, gain = (40, 10, 3, 3), 90, RELU_GAIN
    w = frozen_weights(shape, init="kaiming-uniform", seed=77, layer_index=4, fan_in=fan_in)
    u = (_words(77, 4, math.prod(shape)) + 0.5) * 2.0**-32
    bound = gain / math.sqrt(fan_in) * math.sqrt(3.0)
    expected = ((u * 2.0 - 1.0) * bound).astype(np.float32).reshape(shape)
    assert np.array_equal(w.numpy(), expected)


def test_kaiming_uniform_bounds_and_moments():
    n, fan_in = 1 << 20, 256
    w = frozen_weights(
        (n // fan_in, fan_in), init="kaiming-uniform", seed=8, layer_index=0, fan_in=fan_in
    ).double()
    bound = RELU_GAIN * math.sqrt(3.0 / fan_in)
    assert w.abs().max().item() <= float(np.float32(bound))
    assert w.abs().max().item() > 0.999 * bound
    std = RELU_GAIN / math.sqrt(fan_in)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    # std of the sample std for a uniform: sigma * sqrt((kurtosis - 1) / (4n)), kurtosis 1.8
    assert abs(w.std().item() / std - 1) < 5 * math.sqrt(0.8 / (4 * n))
    # quartiles of U(-b, b)
    q = torch.quantile(w[:200000], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert torch.allclose(
        q, torch.tensor([-bound / 2, 0.0, bound / 2], dtype=torch.float64), atol=0.01 * bound
    )


def test_kaiming_uniform_scaled_by_density():
    kw = dict(init="kaiming-uniform", seed=1, layer_index=0, fan_in=16)
    plain = frozen_weights((16, 16), **kw)
    scaled = frozen_weights((16, 16), density=0.25, scale_by_density=True, **kw)
    assert torch.allclose(scaled, plain * 2.0, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- kaiming normal


def test_kaiming_normal_moments_over_a_million_values():
    n, fan_in = 1 << 20, 512
    w = (
        frozen_weights(
            (n // fan_in, fan_in), init="kaiming-normal", seed=31, layer_index=7, fan_in=fan_in
        )
        .double()
        .reshape(-1)
    )
    std = RELU_GAIN / math.sqrt(fan_in)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    z = w / std
    # normal tail fractions
    for k, p in ((1.0, 0.8413447460685429), (2.0, 0.9772498680518208)):
        frac = (z < k).double().mean().item()
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    kurt = (z**4).mean().item() / (z**2).mean().item() ** 2
    assert abs(kurt - 3.0) < 0.03


def test_kaiming_normal_matches_python_inv_cdf_per_value():
    shape, fan_in, gain = (50, 100), 100, 1.7
    w = frozen_weights(
        shape, init="kaiming-normal", seed=2, layer_index=3, fan_in=fan_in, gain=gain
    )
    words = _words(2, 3, 5000)
    std = gain / math.sqrt(fan_in)
    ref = np.array([NormalDist().inv_cdf((x + 0.5) / 2**32) * std for x in words])
    got = w.numpy().reshape(-1).astype(np.float64)
    # float32 rounding of the result (rel 6e-8) plus Acklam's error (rel 1.2e-9)
    assert np.allclose(got, ref, rtol=2e-7, atol=1e-12)


# --------------------------------------------------------------------------- inverse normal CDF


def test_inverse_normal_cdf_matches_statistics_normaldist():
    rng = np.random.default_rng(0)
    u = np.concatenate(
        [
            rng.uniform(0.0, 1.0, 20000),
            10.0 ** rng.uniform(-9, -1, 3000),
            np.linspace(0.02, 0.03, 1001),  # around the region switch at 0.02425
            [1e-9, 1e-8, 0.02425, 0.5, 2.0**-33, 1e-300 + 1e-9],
        ]
    )
    u = np.concatenate([u, 1.0 - u])
    u = u[(u > 0) & (u < 1)]
    got = inverse_normal_cdf(torch.tensor(u, dtype=torch.float64)).numpy()
    nd = NormalDist()
    ref = np.array([nd.inv_cdf(float(v)) for v in u])
    assert np.max(np.abs(got - ref)) < 1e-8
    nz = np.abs(ref) > 1e-3
    assert np.max(np.abs(got - ref)[nz] / np.abs(ref)[nz]) < 1.2e-9


def test_inverse_normal_cdf_extremes_and_symmetry():
    nd = NormalDist()
    for u in (1e-9, 1 - 1e-9, 0.5 / 2**32, 1 - 0.5 / 2**32):
        got = inverse_normal_cdf(torch.tensor([u], dtype=torch.float64)).item()
        assert abs(got - nd.inv_cdf(u)) < 1e-8
    assert inverse_normal_cdf(torch.tensor([0.5], dtype=torch.float64)).item() == 0.0
    u = torch.tensor(np.linspace(1e-6, 0.5, 500), dtype=torch.float64)
    lo = inverse_normal_cdf(u)
    hi = inverse_normal_cdf(1.0 - u)
    assert torch.allclose(lo, -hi, rtol=0, atol=1e-9)
    assert (
        torch.diff(inverse_normal_cdf(torch.linspace(1e-6, 1 - 1e-6, 10001, dtype=torch.float64)))
        > 0
    ).all()


# --------------------------------------------------------------------------- _log


def test_log_matches_math_log_over_a_wide_range():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            10.0 ** rng.uniform(-300, 300, 20000),
            rng.uniform(0.25, 4.0, 20000),
            1.0 + rng.uniform(-1e-3, 1e-3, 5000),
            2.0 ** np.arange(-1074, 1024, 7, dtype=np.float64),
            [
                np.nextafter(1.0, 2.0),
                np.nextafter(1.0, 0.0),
                math.sqrt(0.5),
                math.sqrt(2.0),
                5e-324,
                np.finfo(np.float64).max,
                np.finfo(np.float64).tiny,
                0.5,
                2.0,
                math.e,
            ],
        ]
    )
    got = _log(torch.tensor(x, dtype=torch.float64)).numpy()
    ref = np.array([math.log(v) for v in x])
    rel = np.abs(got - ref) / np.abs(ref)
    assert np.max(rel) < 1e-15
    assert _log(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0


# --------------------------------------------------------------------------- validation / lanes


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(init="xavier"),
        dict(fan_in=0),
        dict(density=0.0, scale_by_density=True),
        dict(density=1.5),
        dict(density=-0.1),
    ],
)
def test_invalid_arguments(kwargs):
    args = dict(init="signed-constant", seed=0, layer_index=0, fan_in=4)
    args.update(kwargs)
    with pytest.raises(ValueError):
        frozen_weights((4, 4), **args)


@pytest.mark.parametrize("n_lanes", [1, 3, 64])
def test_n_lanes_changes_the_layout_as_documented(n_lanes):
    w = frozen_weights(
        (30, 7), init="signed-constant", seed=4, layer_index=2, fan_in=7, n_lanes=n_lanes
    )
    words = lanes_torch(4, 2, 210, n_lanes)
    assert torch.equal(w.reshape(-1) > 0, (words >> 31) == 1)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("init", INITS)
def test_cuda_weights_bit_identical_to_cpu(init):
    kw = dict(init=init, seed=2**40 + 3, layer_index=5, fan_in=576)
    cpu = frozen_weights((64, 64, 3, 3), **kw)
    gpu = frozen_weights((64, 64, 3, 3), device="cuda", **kw)
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu.view(torch.int32), gpu.cpu().view(torch.int32))
    u = torch.rand(100000, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    assert torch.equal(inverse_normal_cdf(u), inverse_normal_cdf(u.cuda()).cpu())


@pytest.mark.parametrize("init", ["signed-constant", "kaiming-uniform"])
@pytest.mark.parametrize("scaled", [False, True])
def test_cpu_fast_path_equals_the_torch_formula(init, scaled):
    """The CPU path (numpy) gives the same bits as the formula applied with torch ops to the
    torch-kernel words (the path other devices take)."""
    import math

    from hiddenite.prng import STREAM_WEIGHTS, lanes_torch

    shape, fan_in, density = (37, 5, 3, 3), 45, 0.3
    got = frozen_weights(
        shape,
        init=init,
        seed=5,
        layer_index=2,
        fan_in=fan_in,
        density=density,
        scale_by_density=scaled,
        n_lanes=64,
    )
    words = lanes_torch(5, 2, math.prod(shape), 64, STREAM_WEIGHTS, kernel="torch")
    std = math.sqrt(2.0) / math.sqrt(fan_in) / (math.sqrt(density) if scaled else 1.0)
    if init == "signed-constant":
        expected = ((words >> 31).to(torch.float32) * 2.0 - 1.0) * torch.tensor(std)
    else:
        unit = (words.to(torch.float64) + 0.5) * (2.0**-32)
        expected = ((unit * 2.0 - 1.0) * (std * math.sqrt(3.0))).to(torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected.reshape(shape))
