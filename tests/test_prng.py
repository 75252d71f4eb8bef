"""Tests for hiddenite.prng: Marsaglia's Xorshift generators and the seed-derived lanes.

References: Marsaglia's published outputs (J. Stat. Software 8(14), 2003) and naive
pure-Python-integer implementations written here from the recurrences and the lane-seed rule
in the module docstring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiddenite import prng
from hiddenite.prng import (
    DEFAULT_LANES,
    STREAM_SCORES,
    STREAM_WEIGHTS,
    fmix32,
    lane_seeds,
    lanes_numpy,
    lanes_torch,
    seeds_from_key,
    xorshift32,
    xorshift64,
    xorshift128,
)

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------- references


def ref_xorshift32(x: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        x ^= (x << 13) & M32
        x ^= x >> 17
        x ^= (x << 5) & M32
        out.append(x)
    return out


def ref_xorshift64(x: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        out.append(x)
    return out


def ref_xorshift128(state: tuple[int, int, int, int], n: int) -> list[int]:
    x, y, z, w = state
    out = []
    for _ in range(n):
        t = (x ^ (x << 11)) & M32
        x, y, z = y, z, w
        w = (w ^ (w >> 19)) ^ (t ^ (t >> 8))
        out.append(w)
    return out


def ref_fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def ref_splitmix64(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_lane_seed(model_seed: int, layer: int, lane: int, stream: int) -> int:
    m = ref_splitmix64(model_seed + 0x9E3779B97F4A7C15)
    h = (m & M32) ^ (m >> 32)
    h = ref_fmix32(h ^ ((0x9E3779B9 * (layer + 1)) & M32))
    h = ref_fmix32(h ^ ((0xC2B2AE35 * (stream + 1)) & M32))
    return ref_fmix32(h ^ ((0x85EBCA6B * (lane + 1)) & M32)) or 0x6D2B79F5


def ref_lanes(model_seed: int, layer: int, n: int, n_lanes: int, stream: int) -> list[int]:
    lanes = max(1, min(n_lanes, n))
    steps = -(-n // lanes)
    per_lane = [
        ref_xorshift32(ref_lane_seed(model_seed, layer, j, stream), steps) for j in range(lanes)
    ]
    return [per_lane[i % lanes][i // lanes] for i in range(n)]


# --------------------------------------------------------------------------- Marsaglia


def test_xorshift32_marsaglia_published_outputs():
    assert xorshift32(prng.MARSAGLIA_SEED32, 3).tolist() == [723471715, 2497366906, 2064144800]
    assert prng.MARSAGLIA_SEED32 == 2463534242


def test_xorshift64_marsaglia_published_outputs():
    assert xorshift64(prng.MARSAGLIA_SEED64, 3).tolist() == [
        8748534153485358512,
        3040900993826735515,
        3453997556048239312,
    ]
    assert prng.MARSAGLIA_SEED64 == 88172645463325252


def test_xorshift128_marsaglia_published_outputs():
    assert xorshift128(prng.MARSAGLIA_STATE128, 3).tolist() == [3701687786, 458299110, 2500872618]
    assert prng.MARSAGLIA_STATE128 == (123456789, 362436069, 521288629, 88675123)


def test_dtypes_and_lengths():
    assert xorshift32(1, 5).dtype == np.uint32
    assert xorshift64(1, 5).dtype == np.uint64
    assert xorshift128((1, 0, 0, 0), 5).dtype == np.uint32
    for gen, seed in ((xorshift32, 7), (xorshift64, 7), (xorshift128, (0, 0, 0, 7))):
        assert len(gen(seed, 0)) == 0
        assert len(gen(seed, 17)) == 17


def test_single_generators_match_reference_long_run():
    n = 500
    assert xorshift32(prng.MARSAGLIA_SEED32, n).tolist() == ref_xorshift32(prng.MARSAGLIA_SEED32, n)
    assert xorshift64(prng.MARSAGLIA_SEED64, n).tolist() == ref_xorshift64(prng.MARSAGLIA_SEED64, n)
    state = prng.MARSAGLIA_STATE128
    assert xorshift128(state, n).tolist() == ref_xorshift128(state, n)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(1, M32), n=st.integers(0, 300))
def test_xorshift32_matches_reference(seed, n):
    assert xorshift32(seed, n).tolist() == ref_xorshift32(seed, n)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(1, M64), n=st.integers(0, 300))
def test_xorshift64_matches_reference(seed, n):
    assert xorshift64(seed, n).tolist() == ref_xorshift64(seed, n)


@settings(max_examples=60, deadline=None)
@given(
    state=st.tuples(*[st.integers(0, M32)] * 4).filter(any),
    n=st.integers(0, 300),
)
def test_xorshift128_matches_reference(state, n):
    assert xorshift128(state, n).tolist() == ref_xorshift128(state, n)


def test_xorshift_prefix_property():
    # the first k outputs of a longer run are the k outputs of a shorter one
    long = xorshift32(99, 100)
    assert np.array_equal(xorshift32(99, 37), long[:37])
    assert np.array_equal(xorshift32(int(long[36]), 63), long[37:])


def test_numpy_integer_arguments_accepted():
    assert xorshift32(np.uint32(5), np.int64(4)).tolist() == ref_xorshift32(5, 4)
    assert xorshift64(np.uint64(5), 4).tolist() == ref_xorshift64(5, 4)


def test_zero_seed_rejected():
    with pytest.raises(ValueError):
        xorshift32(0, 4)
    with pytest.raises(ValueError):
        xorshift64(0, 4)
    with pytest.raises(ValueError):
        xorshift128((0, 0, 0, 0), 4)


@pytest.mark.parametrize("seed", [-1, 1 << 32, 1 << 40])
def test_xorshift32_out_of_range_seed_rejected(seed):
    with pytest.raises(ValueError):
        xorshift32(seed, 1)


@pytest.mark.parametrize("seed", [-1, 1 << 64])
def test_xorshift64_out_of_range_seed_rejected(seed):
    with pytest.raises(ValueError):
        xorshift64(seed, 1)
    # the largest 64-bit seed is fine
    assert xorshift64(M64, 2).tolist() == ref_xorshift64(M64, 2)


@pytest.mark.parametrize("state", [(1, 2, 3), (1, 2, 3, 4, 5), (1, 2, 3, 1 << 32), (-1, 2, 3, 4)])
def test_xorshift128_bad_state_rejected(state):
    with pytest.raises(ValueError):
        xorshift128(state, 1)


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_non_integer_seed_rejected(bad):
    with pytest.raises((TypeError, ValueError)):
        xorshift32(bad, 1)


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_bad_count_rejected(n):
    with pytest.raises(ValueError):
        xorshift32(1, n)
    with pytest.raises(ValueError):
        lanes_numpy(1, 0, n)


# --------------------------------------------------------------------------- fmix32 / lane seeds


def test_fmix32_matches_reference_and_is_injective_on_a_block():
    h = np.arange(0, 1 << 18, dtype=np.uint32) * np.uint32(2654435761)
    out = fmix32(h)
    assert out.dtype == np.uint32
    assert len(np.unique(out)) == len(h)
    for v in [0, 1, 2, 0xDEADBEEF, M32, *h[:50].tolist()]:
        assert int(fmix32(np.array([v], dtype=np.uint32))[0]) == ref_fmix32(v)
    assert ref_fmix32(0) == 0
    # fmix32 does not modify its input
    before = h.copy()
    fmix32(h)
    assert np.array_equal(h, before)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, M64),
    layer=st.integers(0, 1000),
    n_lanes=st.integers(0, 300),
    stream=st.integers(0, 5),
)
def test_lane_seeds_match_reference_rule(seed, layer, n_lanes, stream):
    got = lane_seeds(seed, layer, n_lanes, stream)
    assert got.dtype == np.uint32
    assert got.tolist() == [ref_lane_seed(seed, layer, j, stream) for j in range(n_lanes)]


def test_lane_seed_zero_is_replaced():
    # the key whose lane-0 mix is 0 (fmix32(0) == 0): key ^ 0x85EBCA6B == 0
    seeds = seeds_from_key(0x85EBCA6B, 4)
    assert seeds[0] == 0x6D2B79F5
    assert (seeds != 0).all()
    assert seeds[1:].tolist() == [
        ref_fmix32(0x85EBCA6B ^ ((0x85EBCA6B * j) & M32)) for j in (2, 3, 4)
    ]


@pytest.mark.parametrize("seed", [0, 1, 12345, (1 << 32) + 5, M64])
def test_lane_seeds_never_zero_and_distinct(seed):
    per_key = [lane_seeds(seed, layer, 4096, stream) for layer in range(24) for stream in range(3)]
    for seeds in per_key:  # within one layer and stream: a bijection of the lane index
        assert (seeds != 0).all()
        assert len(np.unique(seeds)) == len(seeds)
    allseeds = np.concatenate(per_key)
    # across layers/streams the seeds behave like random 32-bit words: a birthday bound of
    # about n**2 / 2**33 = 10 coincidences is expected for n = 294,912
    assert len(allseeds) - len(np.unique(allseeds)) < 40


def test_lane_seeds_differ_between_model_seeds():
    a = lane_seeds(1, 0, 256)
    b = lane_seeds(2, 0, 256)
    assert np.intersect1d(a, b).size == 0


def test_64_bit_model_seeds_accepted_and_not_trivially_folded():
    big = (0xABCDEF01 << 32) | 0x12345678
    seeds = lane_seeds(big, 3, 16, 1)
    assert seeds.tolist() == [ref_lane_seed(big, 3, j, 1) for j in range(16)]
    # seeds equal in their low 32 bits (or in their xor-fold) are unrelated after splitmix64
    assert not np.array_equal(lane_seeds(1, 0, 16), lane_seeds(1 << 32, 0, 16))
    assert not np.array_equal(seeds, lane_seeds(0xABCDEF01 ^ 0x12345678, 3, 16, 1))
    assert np.array_equal(lanes_torch(big, 3, 100, 8).numpy(), lanes_numpy(big, 3, 100, 8))
    lanes_numpy(M64, 0, 10)  # the largest seed works


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 4), (1 << 64, 0, 4), (1, -1, 4), (1, 1 << 32, 4), (1, 0, -1)],
)
def test_lane_seeds_bad_arguments(args):
    with pytest.raises(ValueError):
        lane_seeds(*args)
    with pytest.raises(ValueError):
        lane_seeds(1, 0, 4, stream=-1)


@pytest.mark.parametrize("n_lanes", [0, -3, True, 2.0])
def test_bad_lane_count_rejected(n_lanes):
    with pytest.raises(ValueError):
        lanes_numpy(1, 0, 10, n_lanes)
    with pytest.raises(ValueError):
        lanes_torch(1, 0, 10, n_lanes)


# --------------------------------------------------------------------------- multi-lane


LANE_CASES = [
    # (seed, layer, n, n_lanes, stream)
    (0, 0, 0, 4096, 0),
    (0, 0, 1, 4096, 0),
    (5, 2, 10, 4096, 0),  # n < n_lanes
    (5, 2, 4096, 4096, 1),  # exactly one step
    (5, 2, 4097, 4096, 1),  # one word of a second step
    (7, 9, 1000, 7, 0),  # not a multiple of n_lanes
    (7, 9, 300, 1, 0),  # a single lane
    (123456789, 40, 20000, 4096, 0),
    ((1 << 63) + 17, 1, 999, 64, 1),
    (M64, 0, 333, 333, 2),
]


@pytest.mark.parametrize("case", LANE_CASES)
def test_lanes_numpy_equals_torch(case):
    seed, layer, n, n_lanes, stream = case
    a = lanes_numpy(seed, layer, n, n_lanes, stream)
    b = lanes_torch(seed, layer, n, n_lanes, stream, kernel="torch")
    assert a.dtype == np.uint32 and a.shape == (n,)
    assert b.dtype == torch.int64 and tuple(b.shape) == (n,)
    assert np.array_equal(a.astype(np.int64), b.numpy())


@pytest.mark.parametrize("case", LANE_CASES)
def test_lane_layout_matches_per_lane_xorshift32(case):
    """Word i is output i // L of lane i % L, each lane a plain xorshift32 from its seed."""
    seed, layer, n, n_lanes, stream = case
    words = lanes_numpy(seed, layer, n, n_lanes, stream)
    lanes = max(1, min(n_lanes, n))
    steps = -(-n // lanes)
    seeds = lane_seeds(seed, layer, lanes, stream)
    for j in range(lanes):
        expected = xorshift32(int(seeds[j]), steps)
        got = words[j::lanes]
        assert np.array_equal(got, expected[: len(got)])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, M64),
    layer=st.integers(0, 200),
    n=st.integers(0, 600),
    n_lanes=st.integers(1, 70),
    stream=st.integers(0, 3),
)
def test_lanes_match_pure_python_reference(seed, layer, n, n_lanes, stream):
    expected = ref_lanes(seed, layer, n, n_lanes, stream)
    assert lanes_numpy(seed, layer, n, n_lanes, stream).tolist() == expected
    assert lanes_torch(seed, layer, n, n_lanes, stream, kernel="torch").tolist() == expected


def test_default_lanes_is_pe_count():
    assert DEFAULT_LANES == 4096
    assert STREAM_WEIGHTS == 0 and STREAM_SCORES == 1
    n = 3 * 4096 + 5
    assert np.array_equal(lanes_numpy(3, 1, n), lanes_numpy(3, 1, n, 4096))


def test_lanes_prefix_stable_and_streams_independent():
    a = lanes_numpy(11, 4, 50000)
    assert np.array_equal(lanes_numpy(11, 4, 20000), a[:20000])
    w = lanes_numpy(11, 4, 10000, stream=STREAM_WEIGHTS)
    s = lanes_numpy(11, 4, 10000, stream=STREAM_SCORES)
    other_layer = lanes_numpy(11, 5, 10000)
    other_seed = lanes_numpy(12, 4, 10000)
    for other in (s, other_layer, other_seed):
        assert (w == other).mean() < 0.001


def test_lane_words_look_uniform():
    words = lanes_numpy(2024, 0, 1 << 18).astype(np.float64)
    u = (words + 0.5) / 2**32
    assert abs(u.mean() - 0.5) < 0.003  # std of the mean: 0.29/512 = 0.00056
    assert abs(u.var() - 1 / 12) < 0.002
    # every bit is set about half the time
    bits = (lanes_numpy(2024, 0, 1 << 18)[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.01)


@pytest.mark.gpu
@needs_cuda
def test_lanes_torch_cuda_equals_numpy():
    for seed, layer, n, n_lanes, stream in LANE_CASES:
        a = lanes_numpy(seed, layer, n, n_lanes, stream)
        b = lanes_torch(seed, layer, n, n_lanes, stream, device="cuda", kernel="torch")
        assert b.device.type == "cuda"
        assert np.array_equal(a.astype(np.int64), b.cpu().numpy())


def test_no_shift_relation_between_neighbouring_lanes_layers_and_streams():
    """Lane j+1 / layer l+1 / stream s+1 of one seed is not lane j / layer l / stream s of a
    seed offset by the salt constant (the weakness of a linear mix before hashing)."""
    for seed in (1, 12345, 2**40 + 7):
        a = lane_seeds(seed, 0, 64)
        assert not np.array_equal(a[1:], lane_seeds((seed + 0x85EBCA6B) % 2**64, 0, 64)[:-1])
        assert not np.array_equal(
            lane_seeds(seed, 1, 64), lane_seeds((seed + 0x9E3779B9) % 2**64, 0, 64)
        )
        assert not np.array_equal(
            lane_seeds(seed, 0, 64, 1), lane_seeds((seed + 0xC2B2AE35) % 2**64, 0, 64, 0)
        )


@pytest.mark.parametrize("kernel", ["auto", "torch", "numpy"])
def test_lanes_torch_kernels_agree(kernel):
    expected = lanes_numpy(99, 4, 20_000, 512, 1).astype(np.int64)
    got = lanes_torch(99, 4, 20_000, 512, 1, kernel=kernel)
    assert got.dtype == torch.int64
    assert np.array_equal(got.numpy(), expected)


def test_lanes_torch_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        lanes_torch(1, 0, 10, kernel="cuda")


# --------------------------------------------------------------------------- named streams


@pytest.fixture
def scratch_streams(monkeypatch):
    """A private copy of the stream registry, so a test's registrations do not leak."""
    monkeypatch.setattr(prng, "_STREAMS", dict(prng._STREAMS))
    return prng._STREAMS


def test_version_1_streams_have_fixed_numbers():
    assert prng.stream_id("weights") == 0 == STREAM_WEIGHTS
    assert prng.stream_id("scores") == 1 == STREAM_SCORES
    assert prng.stream_id("bias") == 2 == prng.STREAM_BIAS
    registered = prng.streams()
    assert {"weights": 0, "scores": 1, "bias": 2}.items() <= registered.items()
    # one name per number
    assert len(set(registered.values())) == len(registered)


def test_streams_returns_a_copy():
    registered = prng.streams()
    registered["not-registered"] = 12345
    with pytest.raises(ValueError):
        prng.stream_id("not-registered")


def test_register_stream_accepts_the_same_pair_again(scratch_streams):
    number = 0xFFFF0001
    assert prng.register_stream("test-stream", number) == number
    assert prng.stream_id("test-stream") == number
    assert prng.register_stream("test-stream", number) == number  # a no-op
    assert prng.register_stream("scores", 1) == 1  # the built-in pairs too
    assert prng.stream_id("test-stream") == number
    assert list(prng.streams().values()).count(number) == 1


def test_register_stream_refuses_a_name_rebound_to_another_number(scratch_streams):
    prng.register_stream("test-stream", 0xFFFF0001)
    with pytest.raises(ValueError, match="test-stream"):
        prng.register_stream("test-stream", 0xFFFF0002)
    with pytest.raises(ValueError, match="'scores'"):
        prng.register_stream("scores", 0xFFFF0003)
    # nothing changed
    assert prng.stream_id("test-stream") == 0xFFFF0001
    assert prng.stream_id("scores") == 1
    assert 0xFFFF0002 not in prng.streams().values()


def test_register_stream_refuses_a_number_taken_by_another_name(scratch_streams):
    before = prng.streams()
    with pytest.raises(ValueError, match="'weights'"):
        prng.register_stream("my-weights", 0)
    with pytest.raises(ValueError, match="'bias'"):
        prng.register_stream("my-bias", 2)
    prng.register_stream("test-stream", 0xFFFF0001)
    with pytest.raises(ValueError, match="'test-stream'"):
        prng.register_stream("other-stream", 0xFFFF0001)
    assert prng.streams() == {**before, "test-stream": 0xFFFF0001}


@pytest.mark.parametrize("name, number", [("", 5), (None, 5), (3, 5), ("x", -1), ("x", 2**32)])
def test_register_stream_rejects_bad_names_and_numbers(scratch_streams, name, number):
    before = prng.streams()
    with pytest.raises(ValueError):
        prng.register_stream(name, number)
    assert prng.streams() == before


def test_unknown_stream_names_the_registered_ones():
    with pytest.raises(ValueError, match="no-such-stream") as info:
        prng.stream_id("no-such-stream")
    message = str(info.value)
    for name in prng.streams():
        assert name in message
    assert "weights" in message and "scores" in message and "bias" in message


def test_a_registered_stream_draws_its_own_words(scratch_streams):
    number = prng.register_stream("test-stream", 0xFFFF0001)
    words = lanes_numpy(5, 1, 1000, 64, prng.stream_id("test-stream"))
    assert np.array_equal(words, lanes_numpy(5, 1, 1000, 64, number))
    assert not np.array_equal(words, lanes_numpy(5, 1, 1000, 64, prng.stream_id("scores")))
