"""Tests for the compiled lane kernels (hiddenite.kernels.xorshift_cpu, numba) against the
numpy reference.

The reference is :func:`hiddenite.prng.lanes_numpy` (itself checked against Marsaglia's
published outputs and a pure-Python implementation in test_prng.py) and the reference paths
of :mod:`hiddenite.init` (``kernel="numpy"``). Sizes above 2**16 words take the parallel
path, whose chunks start from jumped-ahead states; smaller ones the serial path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiddenite import SupermaskConfig, fileformat, is_supermask, models
from hiddenite.init import INITS, frozen_weights, uniform_values
from hiddenite.kernels import xorshift_cpu as kernels
from hiddenite.prng import (
    STREAM_SCORES,
    lane_seeds,
    lanes_cpu,
    lanes_numba,
    lanes_numpy,
    lanes_torch,
    xorshift32,
)

# (words, lanes): odd sizes, one lane (a plain xorshift32), a few lanes, odd lane counts,
# partial last rows, serial and parallel paths
CASES = [
    (0, 4096),
    (1, 4096),
    (5, 1),
    (4097, 4096),
    (65_535, 7),
    (200_003, 1),
    (200_003, 3),
    (131_073, 4095),
    (300_001, 4096),
    (100_000, 100_000),
]


@pytest.mark.parametrize(("n", "n_lanes"), CASES)
def test_numba_words_equal_the_numpy_reference(n, n_lanes):
    expected = lanes_numpy(12345, 6, n, n_lanes, 0)
    got = lanes_numba(12345, 6, n, n_lanes, 0)
    assert got.dtype == np.uint32
    assert np.array_equal(got, expected)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    layer=st.integers(0, 2**32 - 1),
    stream=st.integers(0, 5),
    n=st.integers(0, 140_000),
    n_lanes=st.integers(1, 5000),
)
def test_numba_words_equal_numpy_for_any_arguments(seed, layer, stream, n, n_lanes):
    assert np.array_equal(
        lanes_numba(seed, layer, n, n_lanes, stream), lanes_numpy(seed, layer, n, n_lanes, stream)
    )


@pytest.mark.parametrize("steps", [0, 1, 2, 31, 1000, 12_345])
def test_jump_ahead_is_that_many_xorshift32_steps(steps):
    seed = 2463534242  # Marsaglia's
    columns = kernels._jump_columns(steps)
    state = 0
    for b in range(32):
        if (seed >> b) & 1:
            state ^= int(columns[b])
    expected = int(xorshift32(seed, steps)[-1]) if steps else seed
    assert state == expected


def test_lane_count_does_not_change_the_split_result():
    # one lane: the words are exactly xorshift32 from the lane's seed, whatever the chunking
    seed = int(lane_seeds(7, 1, 1, 0)[0])
    assert np.array_equal(lanes_numba(7, 1, 150_001, 1, 0), xorshift32(seed, 150_001))


def test_kernel_choice_and_errors():
    assert np.array_equal(lanes_cpu(3, 1, 999, 64, kernel="numpy"), lanes_numpy(3, 1, 999, 64))
    assert np.array_equal(lanes_cpu(3, 1, 999, 64), lanes_numpy(3, 1, 999, 64))
    torch_words = lanes_torch(3, 1, 999, 64, kernel="numba")
    assert torch_words.dtype == torch.int64
    assert np.array_equal(torch_words.numpy(), lanes_numpy(3, 1, 999, 64).astype(np.int64))
    with pytest.raises(ValueError, match="kernel must be one of"):
        lanes_cpu(3, 1, 10, kernel="cuda")
    with pytest.raises(ValueError, match="numpy words"):
        lanes_cpu(3, 1, 10, kernel="torch")
    with pytest.raises(ValueError, match="n_lanes"):
        lanes_numba(3, 1, 10, 0)
    with pytest.raises(ValueError, match="kernel mode"):
        kernels.lane_values(lane_seeds(1, 0, 4), 10, 99, 1.0)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize(
    ("shape", "n_lanes"),
    [((7,), 4096), ((33, 17, 3, 3), 4096), ((301, 401), 5), ((257, 513), 4096), ((9, 11), 1)],
)
def test_fused_weights_equal_the_reference(init, shape, n_lanes):
    kw = dict(init=init, seed=2026, layer_index=3, fan_in=math.prod(shape[1:]) or 1)
    expected = frozen_weights(shape, n_lanes=n_lanes, kernel="numpy", **kw)
    got = frozen_weights(shape, n_lanes=n_lanes, kernel="numba", **kw)
    default = frozen_weights(shape, n_lanes=n_lanes, **kw)
    assert got.dtype == torch.float32 and got.shape == shape
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # bit for bit
    assert torch.equal(default.view(torch.int32), expected.view(torch.int32))


def test_fused_normal_covers_both_tails_and_the_centre():
    shape = (400, 500)
    kw = dict(init="kaiming-normal", seed=5, layer_index=0, fan_in=500)
    expected = frozen_weights(shape, kernel="torch", **kw)
    got = frozen_weights(shape, kernel="numba", **kw)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    z = got * math.sqrt(500) / math.sqrt(2.0)
    assert (z < -1.97).sum() > 1000 and (z > 1.97).sum() > 1000  # Acklam's tail branch ran


def test_fused_scaled_signed_constant_equals_reference():
    kw = dict(init="signed-constant", seed=1, layer_index=2, fan_in=9, density=0.3)
    expected = frozen_weights((64, 1, 3, 3), scale_by_density=True, kernel="numpy", **kw)
    got = frozen_weights((64, 1, 3, 3), scale_by_density=True, kernel="numba", **kw)
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("shape", "n_lanes"), [((10, 3), 4096), ((300, 700), 4096), ((999,), 2)])
def test_fused_uniform_equals_reference(shape, n_lanes):
    kw = dict(seed=8, layer_index=1, stream=STREAM_SCORES, n_lanes=n_lanes)
    expected = uniform_values(shape, 0.25, kernel="numpy", **kw)
    got = uniform_values(shape, 0.25, kernel="numba", **kw)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert float(got.abs().max()) < 0.25


def test_loaded_file_matches_the_reference_weights(tmp_path):
    """A file loaded with the compiled kernel gives the outputs of the reference weights."""
    config = SupermaskConfig(density=0.3, seed=4, init="kaiming-normal", scale_by_density=False)
    model = models.create("conv4", config).eval()
    for layer in model.modules():
        if is_supermask(layer):  # the weights as the numpy reference makes them
            layer.weight = frozen_weights(
                tuple(layer.weight.shape),
                init=layer.init,
                seed=layer.seed,
                layer_index=layer.layer_index,
                fan_in=layer.fan_in,
                gain=layer.gain,
                n_lanes=layer.n_lanes,
                kernel="numpy",
            )
    before = {id(m): m.weight for m in model.modules() if is_supermask(m)}
    path = tmp_path / "conv4.hnn"
    fileformat.save(model, path, arch=model.hiddenite_arch, config=config)
    loaded = fileformat.load(path)
    for layer in loaded.modules():
        if is_supermask(layer):
            assert torch.equal(layer.weight, before[id(model.get_submodule(_name(loaded, layer)))])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _partition_reference(values: np.ndarray, k: int) -> tuple[float, bool | None]:
    part = np.partition(values, k)
    return part[k], (bool(part[:k].max() < part[k]) if k else None)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).standard_normal(70_001).astype(np.float32),
        (np.random.default_rng(1).random(70_000) < 0.3).astype(np.float32),  # a restored mask
        np.array([0.0, -0.0, 1, -1, np.nan, np.inf, -np.inf, 2, 2, -0.0] * 7001, np.float32),
        np.full(40_000, 3.5, np.float32),
    ],
)
def test_radix_selection_equals_numpy_partition(values):
    for k in (0, 1, values.size // 3, values.size // 2, values.size - 2, values.size - 1):
        t, exact = kernels.kth_smallest_float32(values, k)
        want, want_exact = _partition_reference(values, k)
        assert t == want or (np.isnan(t) and np.isnan(want))
        if k:
            assert exact == want_exact


def test_top_fraction_mask_of_a_large_tied_layer_keeps_the_count():
    from hiddenite.masks import kept_count, top_fraction_mask

    scores = torch.from_numpy((np.random.default_rng(2).random(100_000) < 0.5).astype(np.float32))
    mask = top_fraction_mask(scores, 0.3)  # ties at the threshold: lowest indices kept
    m = kept_count(100_000, 0.3)
    assert int(mask.sum()) == m
    ones = torch.nonzero(scores).flatten()
    assert torch.equal(torch.nonzero(mask).flatten(), ones[:m])
