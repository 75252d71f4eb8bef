"""Tests for hiddenite.storage: a layer's parts coded exactly as the model file stores them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hiddenite import codecs
from hiddenite.layers import SupermaskLinear
from hiddenite.methods import Part
from hiddenite.storage import decode_float, encode_layer, encode_part, entropy_of_counts


def test_entropy_of_counts_by_hand():
    assert entropy_of_counts([2, 1, 1]) == pytest.approx(1.5)  # 1/2, 1/4, 1/4
    assert entropy_of_counts([7, 3]) == pytest.approx(codecs.entropy_bound_bits(0.3))
    assert entropy_of_counts([5, 0, 0]) == 0.0
    assert entropy_of_counts([]) == 0.0


def test_a_binary_part_is_coded_with_the_asked_codec_and_counted():
    bits = np.zeros(100, dtype=np.bool_)
    bits[::4] = True
    stored = encode_part(Part("mask", 100, 2), bits, "packed")
    assert stored.codec == "packed" and stored.data == codecs.encode(bits, "packed")
    assert stored.counts == (75, 25)
    assert stored.entropy_bound_bits == pytest.approx(100 * codecs.entropy_bound_bits(0.25))


def test_none_picks_the_smallest_codec_and_rle_falls_back_for_three_symbols():
    rng = np.random.default_rng(0)
    symbols = rng.choice(3, size=5000, p=[0.9, 0.05, 0.05]).astype(np.uint8)
    part = Part("signs", 5000, 3)
    best = encode_part(part, symbols, None)
    assert best.codec == codecs.encode_best(symbols, alphabet=3)[0]
    fallback = encode_part(part, symbols, "rle")  # rle codes bits only: the smallest instead
    assert fallback.codec != "rle" and fallback.data == best.data
    assert np.array_equal(codecs.decode(best.data, 5000, best.codec, alphabet=3), symbols)


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("float16", 2)])
def test_a_float_part_is_little_endian_at_the_param_dtype(dtype, size):
    values = np.array([1.5, -2.25, 1e-3], dtype=np.float32)
    stored = encode_part(Part("weight", 3, None), values, None, dtype)
    assert stored.codec is None and stored.counts is None and stored.nbytes == 3 * size
    back = decode_float(stored.data, 3, dtype)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, values, rtol=1e-3)
    if dtype == "float32":
        assert stored.data == values.astype("<f4").tobytes()


def test_a_part_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="exports 3 values, declares 4"):
        encode_part(Part("mask", 4, 2), np.ones(3, dtype=np.bool_), "packed")


def test_encode_layer_codes_every_declared_part():
    layer = SupermaskLinear(30, 10, density=0.2, seed=5, method="signed")
    (stored,) = encode_layer(layer, "packed")
    assert stored.part == Part("signs", 300, 3)
    assert stored.nbytes == math.ceil(300 * 2 / 8)
    assert sum(stored.counts[1:]) == 60  # kept_count(300, 0.2) visible weights
    dense = SupermaskLinear(3, 2, method="dense")
    (weight,) = encode_layer(dense, None, "float32")
    assert weight.data == dense.weight.detach().reshape(-1).numpy().astype("<f4").tobytes()
    assert torch.equal(torch.from_numpy(decode_float(weight.data, 6, "float32")).reshape(2, 3),
                       dense.weight.detach())  # fmt: skip
