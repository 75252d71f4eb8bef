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

from hiddenite import SupermaskConfig, fileformat, init, is_supermask, models
from hiddenite.init import INITS, frozen_weights, uniform_values
from hiddenite.kernels import xorshift_cpu as kernels
from hiddenite.prng import (
    STREAM_SCORES,
    lane_seeds,
    lanes_cpu,
    lanes_numba,
    lanes_numpy,
    lanes_torch,
    layer_seeds,
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


# The Kaiming-normal kernel (_fill_normal): blocks of values in passes, the tails gathered.

_ACKLAM = (*(np.array(v) for v in (init._A, init._B, init._C, init._D)), init._P_LOW)
_TAIL_WORDS = kernels._tail_words(init._P_LOW)


def _normal_reference(words: np.ndarray, scale: float) -> np.ndarray:
    """float32 Kaiming-normal values of uint32 ``words`` by the torch reference path."""
    u = init.words_to_unit_interval(torch.from_numpy(words.astype(np.int64)))
    return (init.inverse_normal_cdf(u) * scale).to(torch.float32).numpy()


def _unstep(y: int) -> int:
    """The xorshift32 state whose next state is ``y`` (the step undone, shift by shift)."""
    for shift, left in ((5, True), (17, False), (13, True)):
        x = y
        for _ in range(32 // shift + 1):  # x = y ^ (x << shift): a fixed point in 32 // s steps
            x = y ^ (((x << shift) & 0xFFFFFFFF) if left else (x >> shift))
        y = x
    return y


def test_unstep_inverts_the_xorshift32_step():
    for y in (1, 2, 0x80000000, 0xFFFFFFFF, 2463534242, 12345):
        assert int(xorshift32(_unstep(y), 1)[0]) == y


def test_tail_word_count_is_the_reference_branch_test():
    lo = _TAIL_WORDS
    assert 0 < lo < 2**31
    for w in [0, 1, lo - 2, lo - 1, lo, lo + 1, 2**31 - 1, 2**31]:
        for word in (w, 2**32 - 1 - w):  # and the mirror word, for the upper tail
            u = (word + 0.5) * 2.0**-32
            in_tail = min(u, 1.0 - u) < init._P_LOW
            assert in_tail == (((word + lo) % 2**32) < 2 * lo), word
            assert kernels._in_tail_array(np.array([word], np.uint32), lo)[0] == in_tail
    assert (lo - 1 + 0.5) * 2.0**-32 < init._P_LOW <= (lo + 0.5) * 2.0**-32
    with pytest.raises(ValueError, match="p_low"):
        kernels._tail_words(0.5)


def _branch_point_words() -> np.ndarray:
    lo = _TAIL_WORDS
    chosen = {0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32 - 2}
    for w in range(lo - 3, lo + 3):  # both tails' edges
        chosen |= {w, 2**32 - 1 - w}
    for k in range(1, 27):  # tail_u whose mantissa sits just below / above sqrt(1/2)
        v = int(math.sqrt(0.5) * 2**k - 0.5)
        for w in range(max(0, v - 1), v + 2):
            if w < lo:
                chosen |= {w, 2**32 - 1 - w}
    rng = np.random.default_rng(11)
    chosen |= set(rng.integers(0, lo, 300).tolist())  # deep in the tails
    chosen |= set(rng.integers(0, 2**32, 300).tolist())
    return np.array(sorted(chosen), dtype=np.uint32)


@pytest.mark.parametrize("scale", [1.0, 0.0208])
def test_fused_normal_at_the_branch_points(scale):
    """Lanes seeded so that their first words are the chosen ones: every branch edge, both
    tails and the frexp mantissa edge, against the reference values bit for bit."""
    words = _branch_point_words()
    seeds = np.array([_unstep(int(w)) for w in words], dtype=np.uint32)
    assert np.array_equal(kernels.lane_words(seeds, words.size), words)
    got = kernels.lane_values(seeds, words.size, kernels.NORMAL, scale, _ACKLAM)
    assert np.array_equal(got.view(np.uint32), _normal_reference(words, scale).view(np.uint32))


@pytest.mark.parametrize(
    ("n", "n_lanes"),
    [
        (1, 1),
        (63, 1),
        (4097, 1),
        (70_001, 3),  # few lanes: blocks of 1,365 steps
        (65, 15),
        (4_099, 16),  # the first lane count stepped across the lanes
        (9_001, 17),
        (12_289, 4095),
        (8_191, 4096),
        (300_001, 4096),  # chunks on threads, a partial last row
        (262_145, 4097),  # one row per block, longer than the block
        (20_011, 5000),
        (40_013, 9000),  # rows wider than a block: pieces of 4,096 lanes
        (100_000, 100_000),
    ],
)
def test_fused_normal_equals_the_reference_over_sizes_and_lanes(n, n_lanes):
    seeds = layer_seeds(77, 5, n, n_lanes, 0)
    got = kernels.lane_values(seeds, n, kernels.NORMAL, 0.75, _ACKLAM)
    expected = _normal_reference(lanes_numpy(77, 5, n, n_lanes, 0), 0.75)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    n=st.integers(0, 150_000),
    n_lanes=st.integers(1, 6000),
)
def test_fused_normal_equals_the_reference_for_any_arguments(seed, n, n_lanes):
    kw = dict(init="kaiming-normal", seed=seed, layer_index=1, fan_in=9, n_lanes=n_lanes)
    expected = frozen_weights((n,), kernel="numpy", **kw)
    got = frozen_weights((n,), kernel="numba", **kw)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("mode", [None, kernels.SIGN, kernels.UNIFORM, kernels.NORMAL])
def test_chunks_on_two_threads_give_the_one_thread_values(mode):
    """Just past two chunks of the mode's size, so two threads each fill one (checked through
    the plan), with a partial last row: the same bits as one thread, and as the reference."""
    n = 2 * kernels._TASK_WORDS[kernels.SIGN if mode is None else mode] + 4_099
    seeds = layer_seeds(3, 2, n, 4096, 0)

    def values() -> np.ndarray:
        if mode is None:
            return kernels.lane_words(seeds, n)
        return kernels.lane_values(seeds, n, mode, 0.5, _ACKLAM).view(np.uint32)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        task = kernels._TASK_WORDS[kernels.SIGN if mode is None else mode]
        assert kernels._plan(seeds, n, task)[0].shape[0] == 2
        two = values()
        torch.set_num_threads(1)
        one = values()
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(two, one)
    if mode is None:
        assert np.array_equal(two, lanes_numpy(3, 2, n, 4096, 0))
