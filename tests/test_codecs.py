"""Tests for hiddenite.codecs: round trips, formats, golden bytes, corrupt data, fuzzing."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiddenite import codecs
from hiddenite.codecs import (
    CODECS,
    CodecError,
    decode,
    encode,
    encode_best,
    entropy_bound_bits,
    rle,
)
from hiddenite.codecs import entropy as entropy_codec

CODECS_DIR = Path(codecs.__file__).parent
DOCS = Path(__file__).resolve().parents[1] / "docs" / "mask-codecs.md"


def random_mask(n: int, k: float, seed: int = 0) -> np.ndarray:
    """A random 1-D bool mask of n bits, each kept with probability k."""
    return np.random.default_rng(seed).random(n) < k


def mask_from(n: int, kept: list[int]) -> np.ndarray:
    bits = np.zeros(n, dtype=np.bool_)
    bits[kept] = True
    return bits


def roundtrip(bits: np.ndarray, codec: str) -> bytes:
    data = encode(bits, codec)
    assert isinstance(data, bytes)
    out = decode(data, bits.size, codec)
    assert out.dtype == np.bool_
    assert out.shape == bits.shape
    np.testing.assert_array_equal(out, bits)
    return data


# --------------------------------------------------------------------------- round trips

DENSITIES = [0.0, "tiny", 0.1, 0.3, 0.5, 0.9, 1.0]
LENGTHS = [0, 1, 7, 8, 9, 1000003]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("k", DENSITIES)
def test_roundtrip_densities_and_lengths(codec, n, k):
    if k == "tiny":
        bits = np.zeros(n, dtype=np.bool_)
        if n:
            bits[n // 3] = True
    else:
        bits = random_mask(n, k, seed=n)
    roundtrip(bits, codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("where", [0, 5003, 10006])
def test_roundtrip_one_kept_of_10007(codec, where):
    roundtrip(mask_from(10007, [where]), codec)
    roundtrip(~mask_from(10007, [where]), codec)


@pytest.mark.parametrize("codec", CODECS)
def test_empty(codec):
    data = roundtrip(np.zeros(0, dtype=np.bool_), codec)
    assert len(data) == {"packed": 0, "rle": 1, "entropy": 4}[codec]


@pytest.mark.parametrize("codec", CODECS)
def test_huge_layer(codec):
    n = 25_000_000  # a ResNet-50-sized layer set
    bits = random_mask(n, 0.3, seed=7)
    data = roundtrip(bits, codec)
    assert len(data) * 8 < 0.95 * n or codec == "packed"


@pytest.mark.parametrize("codec", CODECS)
def test_uint8_input_accepted(codec):
    bits = random_mask(1001, 0.2, seed=3)
    assert encode(bits.astype(np.uint8), codec) == encode(bits, codec)


def test_noncontiguous_input():
    bits = random_mask(2000, 0.3, seed=4)
    for codec in CODECS:
        np.testing.assert_array_equal(decode(encode(bits[::2], codec), 1000, codec), bits[::2])


# --------------------------------------------------------------------------- arguments


def test_argument_errors():
    bits = random_mask(10, 0.5)
    with pytest.raises(ValueError, match="packed, rle, entropy"):
        encode(bits, "zip")
    with pytest.raises(ValueError, match="packed, rle, entropy"):
        decode(b"", 0, "zip")
    with pytest.raises(ValueError, match="1-D"):
        encode(bits.reshape(2, 5), "packed")
    with pytest.raises(TypeError):
        encode(bits.astype(np.float32), "packed")
    with pytest.raises(TypeError):
        encode([True, False], "packed")
    with pytest.raises(ValueError, match="0 or 1"):
        encode(np.array([0, 1, 2], dtype=np.uint8), "rle")
    with pytest.raises(ValueError, match=">= 0"):
        decode(b"", -1, "packed")
    with pytest.raises(TypeError):
        decode(b"", 1.5, "packed")
    with pytest.raises(TypeError):
        decode("abc", 3, "packed")
    with pytest.raises(ValueError):
        rle.encode(bits, width=33)
    assert issubclass(CodecError, ValueError)


def test_bytes_like_data_accepted():
    bits = random_mask(100, 0.3)
    for codec in CODECS:
        data = encode(bits, codec)
        for view in (bytearray(data), memoryview(data)):
            np.testing.assert_array_equal(decode(view, 100, codec), bits)


# --------------------------------------------------------------------------- packed


def test_packed_bit_order():
    # Bit i is bit (i % 8) of byte i // 8, least significant first.
    bits = mask_from(11, [0, 9, 10])
    assert encode(bits, "packed") == bytes([0x01, 0x06])
    assert encode(mask_from(8, [7]), "packed") == b"\x80"
    np.testing.assert_array_equal(decode(b"\x01\x06", 11, "packed"), bits)


def test_packed_rejects_bad_data():
    with pytest.raises(CodecError, match="needs 2 bytes"):
        decode(b"\x01", 11, "packed")
    with pytest.raises(CodecError, match="needs 2 bytes"):
        decode(b"\x01\x06\x00", 11, "packed")
    with pytest.raises(CodecError, match="padding"):
        decode(b"\x01\x0e", 11, "packed")


# --------------------------------------------------------------------------- rle

GOLDEN_RLE = [
    # (n, kept indices, encoding) -- the worked examples in docs/mask-codecs.md
    (20, [1, 2, 11, 13], "02 4f 9f"),
    (14, [0, 1, 10, 11], "02 0f 88"),
]


@pytest.mark.parametrize(("n", "kept", "golden"), GOLDEN_RLE)
def test_rle_golden_bytes(n, kept, golden):
    bits = mask_from(n, kept)
    assert encode(bits, "rle") == bytes.fromhex(golden)
    np.testing.assert_array_equal(decode(bytes.fromhex(golden), n, "rle"), bits)
    assert golden in DOCS.read_text(), "docs/mask-codecs.md must show the same bytes"


def test_rle_escape_chaining():
    # w = 2, E = 3: a gap of 10 zeros is 3 3 3 1; a gap of 6 is 3 3 0; 6 trailing zeros 3 3.
    bits = mask_from(25, [10, 17, 18])  # gaps 10, 6, 0; trailing 6
    data = rle.encode(bits, width=2)
    # fields 3 3 3 1 | 3 3 0 | 0 | 3 3 -> 11111101 11110000 1111(0000)
    assert data == bytes([2, 0b11111101, 0b11110000, 0b11110000])
    np.testing.assert_array_equal(rle.decode(data, 25), bits)
    # long gaps at every width, including chains of many escapes
    for w in range(1, 33):
        for gap in (0, 1, (1 << min(w, 12)) - 2, (1 << min(w, 12)) - 1, 5000, 70000):
            n = gap + 3
            for kept in ([gap], [gap, n - 1], [0, gap + 1]):
                b = mask_from(n, kept)
                np.testing.assert_array_equal(rle.decode(rle.encode(b, width=w), n), b)


@pytest.mark.parametrize("w", range(1, 33))
def test_rle_every_width_roundtrips(w):
    for k in (0.0, 0.02, 0.3, 0.97, 1.0):
        bits = random_mask(3001, k, seed=w)
        np.testing.assert_array_equal(rle.decode(rle.encode(bits, width=w), 3001), bits)


@pytest.mark.parametrize("w", [2, 5, 8, 9, 16, 23, 32])
def test_rle_many_chunks_every_reader(w):
    # > 2**16 fields, so decoding crosses chunk boundaries in each field-reader path
    bits = random_mask(300_001, 0.45, seed=w)
    data = rle.encode(bits, width=w)
    np.testing.assert_array_equal(rle.decode(data, bits.size), bits)


def test_rle_trailing_zeros_multiple_of_escape():
    # 6 trailing zeros at w = 2 are two escapes landing exactly on n, no final field.
    bits = mask_from(7, [0])
    data = rle.encode(bits, width=2)
    assert data == bytes([2, 0b00111100])
    np.testing.assert_array_equal(rle.decode(data, 7), bits)


def test_rle_chooses_smallest_width():
    for k in (0.0, 0.001, 0.05, 0.1, 0.3, 0.5, 0.9):
        bits = random_mask(20000, k, seed=11)
        sizes = {w: len(rle.encode(bits, width=w)) for w in range(1, 33)}
        assert len(rle.encode(bits)) == min(sizes.values())
        assert rle.choose_width(bits) == rle.encode(bits)[0]


def test_rle_width_one_is_inverted_bitmap():
    bits = random_mask(1003, 0.5, seed=5)
    data = rle.encode(bits, width=1)
    assert data == b"\x01" + np.packbits(~bits, bitorder="big").tobytes()
    # the general field packer produces the same stream as the w = 1 fast path
    gaps, trailing = rle._gaps(bits)
    assert data[1:] == rle._pack_fields(rle._fields(gaps, trailing, 1), 1)


@pytest.mark.parametrize(
    ("data", "n", "message"),
    [
        (b"", 5, "empty"),
        (b"\x00", 5, "width 0"),
        (b"\x21\x00", 5, "width 33"),
        (b"\x02", 5, "truncated"),
        (b"\x02\x4f", 20, "truncated"),
        (b"\x02\x4f\x9f\x00", 20, "too long|trailing"),
        (b"\x02\x0f\x89", 14, "padding"),
        (b"\x02\x4f\x9f", 19, "overshoot"),
        (b"\x02\x4f\x9f", 21, "truncated"),
        (b"\x01\x00", 0, "too long"),
        (b"\x01\xff\x00", 8, "too long|trailing"),
        (b"\x01\xff", 9, "truncated"),
        (b"\x01\xff", 10**12, "truncated"),
        (b"\x03\xff\xff", 10**12, "truncated"),
        (b"\x20\xff\xff\xff\xff", 3, "overshoot"),
    ],
)
def test_rle_rejects_bad_data(data, n, message):
    with pytest.raises(CodecError, match=message):
        rle.decode(data, n)


def test_rle_accepts_any_valid_width():
    bits = random_mask(5000, 0.2, seed=8)
    for w in (1, 3, 7, 13, 32):
        np.testing.assert_array_equal(decode(rle.encode(bits, width=w), 5000, "rle"), bits)


# --------------------------------------------------------------------------- entropy


@pytest.mark.parametrize("k", [0.05, 0.1, 0.3, 0.5])
def test_entropy_within_one_percent_of_bound(k):
    n = 1_000_000
    bits = random_mask(n, k, seed=int(k * 1000))
    data = roundtrip(bits, "entropy")
    payload_bits = (len(data) - entropy_codec.HEADER_BYTES) * 8
    assert payload_bits <= 1.01 * entropy_bound_bits(k) * n
    empirical = entropy_bound_bits(bits.mean())
    assert payload_bits <= 1.01 * empirical * n


def test_entropy_constant_masks_have_no_payload():
    assert encode(np.zeros(1000, bool), "entropy") == b"\x00\x00\x00\x00"
    assert encode(np.ones(1000, bool), "entropy") == (1 << 24).to_bytes(4, "little")
    np.testing.assert_array_equal(decode(b"\x00\x00\x00\x00", 5, "entropy"), np.zeros(5, bool))
    np.testing.assert_array_equal(
        decode((1 << 24).to_bytes(4, "little"), 5, "entropy"), np.ones(5, bool)
    )


def test_entropy_quantized_probability():
    assert entropy_codec.quantize(0, 10) == 0
    assert entropy_codec.quantize(10, 10) == 1 << 24
    assert entropy_codec.quantize(1, 10**12) == 1
    assert entropy_codec.quantize(10**12 - 1, 10**12) == (1 << 24) - 1
    assert entropy_codec.quantize(3, 10) == round(0.3 * (1 << 24))


@pytest.mark.parametrize("n", [2_000_000, 3])
def test_entropy_extreme_empirical_density(n):
    for bits in (mask_from(n, [n // 2]), ~mask_from(n, [n - 1]), mask_from(n, [0, n - 1])):
        data = roundtrip(bits, "entropy")
        assert len(data) <= 4 + 8 + 8 * (n < 10)


def test_entropy_rejects_bad_data():
    bits = random_mask(10000, 0.2, seed=9)
    data = encode(bits, "entropy")
    with pytest.raises(CodecError, match="header"):
        decode(data[:3], 10000, "entropy")
    with pytest.raises(CodecError, match="greater than 1"):
        decode(((1 << 24) + 1).to_bytes(4, "little") + data[4:], 10000, "entropy")
    with pytest.raises(CodecError, match="constant mask"):
        decode(b"\x00\x00\x00\x00\x00\x00\x00\x00", 10, "entropy")
    with pytest.raises(CodecError, match="32-bit words"):
        decode(data[:-1], 10000, "entropy")
    with pytest.raises(CodecError):
        decode(data[:-4], 10000, "entropy")
    with pytest.raises(CodecError):
        decode(data + b"\x00\x00\x00\x00", 10000, "entropy")
    with pytest.raises(CodecError):
        decode(data, 20000, "entropy")
    with pytest.raises(CodecError, match="too long"):
        decode(data[:4] + bytes(4 * 100), 10, "entropy")
    with pytest.raises(CodecError, match="too short"):
        decode(data[:8], 10**7, "entropy")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(CodecError):
        decode(bytes(flipped), 10000, "entropy")


# --------------------------------------------------------------------------- encode_best


def test_encode_best_picks_smallest_then_simplest():
    masks = [
        np.zeros(0, bool),
        np.zeros(8, bool),
        np.ones(8, bool),
        random_mask(7, 0.5),
        random_mask(100000, 0.5, seed=1),
        random_mask(100000, 0.3, seed=2),
        random_mask(100000, 0.1, seed=3),
        random_mask(100000, 0.0005, seed=4),
        np.zeros(100000, bool),
    ]
    chosen = set()
    for bits in masks:
        name, data = encode_best(bits)
        sizes = [len(encode(bits, c)) for c in CODECS]
        assert len(data) == min(sizes)
        assert name == CODECS[sizes.index(min(sizes))]
        assert data == encode(bits, name)
        np.testing.assert_array_equal(decode(data, bits.size, name), bits)
        chosen.add(name)
    assert chosen == set(CODECS)


def test_entropy_bound_bits():
    assert entropy_bound_bits(0.0) == 0.0
    assert entropy_bound_bits(1.0) == 0.0
    assert entropy_bound_bits(0.5) == pytest.approx(1.0)
    assert entropy_bound_bits(0.3) == pytest.approx(0.8813, abs=1e-4)
    assert entropy_bound_bits(0.1) == pytest.approx(0.4690, abs=1e-4)
    assert entropy_bound_bits(0.05) == pytest.approx(entropy_bound_bits(0.95))
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            entropy_bound_bits(bad)


# --------------------------------------------------------------------------- import hygiene


def test_codecs_import_neither_torch_nor_anything_unexpected():
    allowed = {"__future__", "math", "operator", "numpy", "constriction"}
    for path in CODECS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# --------------------------------------------------------------------------- hypothesis


@st.composite
def masks(draw, max_size: int = 3000) -> np.ndarray:
    """Arbitrary masks: uniform random bits, or a random density, or runs of one value."""
    n = draw(st.integers(0, max_size))
    kind = draw(st.sampled_from(["bits", "density", "runs"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "bits":
        raw = draw(st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8))
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(np.bool_)
    if kind == "density":
        k = draw(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0]))
        return rng.random(n) < k
    runs = rng.geometric(1.0 / draw(st.integers(1, 500)), size=n + 1)
    values = np.arange(runs.size) % 2 == draw(st.integers(0, 1))
    return np.repeat(values, runs)[:n]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=masks())
def test_property_roundtrip_all_codecs(bits):
    for codec in CODECS:
        roundtrip(bits, codec)
    name, data = encode_best(bits)
    np.testing.assert_array_equal(decode(data, bits.size, name), bits)


@st.composite
def corrupted(draw):
    """A valid encoding of a small mask, then mutated: flips, cuts, extensions, splices."""
    codec = draw(st.sampled_from(CODECS))
    bits = draw(masks(max_size=400))
    data = bytearray(encode(bits, codec))
    n = bits.size
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "n"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "n":
            n = max(0, n + draw(st.integers(-20, 20)))
    return codec, bytes(data), n


@settings(max_examples=1500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted())
def test_fuzz_corrupt_data_raises_only_codec_error(case):
    codec, data, n = case
    try:
        out = decode(data, n, codec)
    except CodecError as exc:
        assert str(exc)
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.bool_
    assert out.shape == (n,)
    # whatever decoded must be exactly what its own encoding round-trips to
    np.testing.assert_array_equal(decode(encode(out, codec), n, codec), out)


@settings(max_examples=300, deadline=2000)
@given(
    codec=st.sampled_from(CODECS),
    data=st.binary(max_size=64),
    n=st.integers(0, 2000),
)
def test_fuzz_random_bytes_raise_only_codec_error(codec, data, n):
    try:
        out = decode(data, n, codec)
    except CodecError:
        return
    assert out.dtype == np.bool_ and out.shape == (n,)
