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
    assert len(data) == {"packed": 0, "rle": 1, "entropy": 4, "entropy-grouped": 4}[codec]


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
    # Only the codecs declaring AUTO compete: entropy-grouped stands in for entropy.
    assert codecs.AUTO_CODECS == ("packed", "rle", "entropy-grouped")
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
        sizes = [len(encode(bits, c)) for c in codecs.AUTO_CODECS]
        assert len(data) == min(sizes)
        assert name == codecs.AUTO_CODECS[sizes.index(min(sizes))]
        assert data == encode(bits, name)
        np.testing.assert_array_equal(decode(data, bits.size, name), bits)
        chosen.add(name)
    assert chosen == set(codecs.AUTO_CODECS)


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


# =========================================================================== alphabets > 2
#
# Symbols over an alphabet of a = 3 .. 256 values (ternary signs, multicoat levels, ...).

ALPHABETS = [3, 4, 5, 9, 256]
SYMBOL_LENGTHS = [0, 1, 7, 8, 9, 1000, 100003]
SYMBOL_CODECS = ("packed", "entropy", "entropy-grouped")
AUTO_SYMBOL_CODECS = ("packed", "entropy-grouped")  # the codecs encode_best tries for a > 2


def random_symbols(n: int, alphabet: int, dist: str = "uniform", seed: int = 0) -> np.ndarray:
    """n random symbols in [0, alphabet): uniform, or skewed (P(s) proportional to 4**-s)."""
    rng = np.random.default_rng(seed)
    if dist == "uniform":
        return rng.integers(0, alphabet, n).astype(np.uint8)
    weights = 0.25 ** np.arange(alphabet)
    return rng.choice(alphabet, n, p=weights / weights.sum()).astype(np.uint8)


def roundtrip_symbols(symbols: np.ndarray, codec: str, alphabet: int) -> bytes:
    data = encode(symbols, codec, alphabet)
    assert isinstance(data, bytes)
    out = decode(data, symbols.size, codec, alphabet)
    assert out.dtype == np.uint8
    assert out.shape == symbols.shape
    np.testing.assert_array_equal(out, symbols)
    assert len(data) <= codecs.max_bytes(codec, symbols.size, alphabet)
    if codec == "packed":
        assert len(data) == (symbols.size * codecs.symbol_bits(alphabet) + 7) // 8
    return data


@pytest.mark.parametrize("codec", SYMBOL_CODECS)
@pytest.mark.parametrize("n", SYMBOL_LENGTHS)
@pytest.mark.parametrize("dist", ["skewed", "uniform"])
@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_symbols_roundtrip(codec, n, dist, alphabet):
    roundtrip_symbols(random_symbols(n, alphabet, dist, seed=n + alphabet), codec, alphabet)


@pytest.mark.parametrize("codec", SYMBOL_CODECS)
@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_symbols_constant_and_extreme(codec, alphabet):
    for value in (0, 1, alphabet - 1):
        roundtrip_symbols(np.full(1001, value, dtype=np.uint8), codec, alphabet)
    rare = np.zeros(200_000, dtype=np.uint8)
    rare[[7, 150_000]] = [alphabet - 1, 1]  # two symbols far below 2**-24 * n each
    roundtrip_symbols(rare, codec, alphabet)


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_symbols_entropy_constant_has_no_payload(alphabet):
    header = codecs.entropy.header_bytes(alphabet)
    assert header == 1 + 4 * alphabet
    data = encode(np.full(50, alphabet - 1, dtype=np.uint8), "entropy", alphabet)
    freq = [0] * alphabet
    freq[alphabet - 1] = 1 << 24
    assert data == bytes([alphabet - 1]) + np.array(freq, dtype="<u4").tobytes()
    # no symbols at all: symbol 0 gets everything
    empty = encode(np.zeros(0, np.uint8), "entropy", alphabet)
    assert empty[1:5] == (1 << 24).to_bytes(4, "little")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint64])
def test_symbols_any_integer_dtype(dtype):
    symbols = random_symbols(999, 9, "skewed", seed=1)
    for codec in SYMBOL_CODECS:
        assert encode(symbols.astype(dtype), codec, 9) == encode(symbols, codec, 9)
    assert encode_best(symbols.astype(dtype), 9) == encode_best(symbols, 9)
    # non-contiguous input
    twice = np.repeat(symbols, 2).astype(dtype)
    for codec in SYMBOL_CODECS:
        np.testing.assert_array_equal(decode(encode(twice[::2], codec, 9), 999, codec, 9), symbols)


@pytest.mark.parametrize("alphabet", [3, 4])
def test_symbols_entropy_within_one_percent(alphabet):
    n = 100_000
    for dist in ("skewed", "uniform"):
        symbols = random_symbols(n, alphabet, dist, seed=alphabet)
        data = roundtrip_symbols(symbols, "entropy", alphabet)
        header = 1 + 4 * alphabet
        payload_bits = (len(data) - header) * 8
        bound = codecs.empirical_entropy_bits(symbols, alphabet) * n
        assert payload_bits <= 1.01 * bound
        assert len(data) <= header + 1.01 * bound / 8


def test_binary_alphabet_unchanged():
    # alphabet=2 is exactly the binary API, byte for byte
    bits = random_mask(5001, 0.2, seed=12)
    for codec in CODECS:
        data = encode(bits, codec)
        assert encode(bits, codec, alphabet=2) == data
        out = decode(data, 5001, codec, alphabet=2)
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, bits)
    assert encode_best(bits, 2) == encode_best(bits)
    # the general packed path at a = 2 is the binary packed format
    assert codecs.packed.encode_symbols(bits.astype(np.uint8), 2) == encode(bits, "packed")
    np.testing.assert_array_equal(
        codecs.packed.decode_symbols(encode(bits, "packed"), 5001, 2), bits.astype(np.uint8)
    )
    # the binary entropy header stays the 4-byte Bernoulli one
    assert len(encode(np.ones(10, bool), "entropy")) == 4


# --------------------------------------------------------------------------- API details


def test_symbol_bits():
    expected = {2: 1, 3: 2, 4: 2, 5: 3, 8: 3, 9: 4, 16: 4, 17: 5, 128: 7, 129: 8, 256: 8}
    for alphabet, b in expected.items():
        assert codecs.symbol_bits(alphabet) == b == math.ceil(math.log2(alphabet))
    for bad in (0, 1, 257):
        with pytest.raises(ValueError, match=r"2\.\.256"):
            codecs.symbol_bits(bad)
    for bad in (True, 3.0, "3"):
        with pytest.raises(TypeError):
            codecs.symbol_bits(bad)


def test_supports():
    for alphabet in (2, 3, 4, 9, 255, 256):
        assert codecs.supports("packed", alphabet)
        assert codecs.supports("entropy", alphabet)
        assert codecs.supports("rle", alphabet) == (alphabet == 2)
    for codec in CODECS:
        assert not codecs.supports(codec, 1)
        assert not codecs.supports(codec, 257)
    with pytest.raises(ValueError, match="packed, rle, entropy"):
        codecs.supports("zip", 3)


def test_unsupported_pair_raises():
    symbols = np.array([0, 1, 2], dtype=np.uint8)
    with pytest.raises(ValueError, match="codecs that do: packed, entropy"):
        encode(symbols, "rle", 3)
    with pytest.raises(ValueError, match="codecs that do: packed, entropy"):
        decode(b"\x01", 3, "rle", 3)
    with pytest.raises(ValueError, match="codecs that do: packed, entropy"):
        codecs.max_bytes("rle", 3, 3)
    # ValueError, but never the data error
    with pytest.raises(ValueError) as info:
        decode(b"\x01", 3, "rle", 3)
    assert not isinstance(info.value, CodecError)


def test_symbols_argument_errors():
    good = np.array([0, 1, 2], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[0, 3\]"):
        encode(np.array([0, 1, 3], dtype=np.uint8), "packed", 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        encode(np.array([0, -1, 2], dtype=np.int64), "entropy", 3)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        encode(np.array([0, 256], dtype=np.int16), "packed", 256)
    with pytest.raises(TypeError, match="integer array"):
        encode(good.astype(np.float64), "packed", 3)
    with pytest.raises(TypeError, match="integer array"):
        encode(good.astype(np.bool_), "entropy", 3)
    with pytest.raises(TypeError, match="numpy array"):
        encode([0, 1, 2], "packed", 3)
    with pytest.raises(ValueError, match="1-D"):
        encode(np.zeros((2, 2), np.uint8), "packed", 3)
    for bad in (1, 257, -3):
        with pytest.raises(ValueError, match=r"2\.\.256"):
            encode(good, "packed", bad)
        with pytest.raises(ValueError, match=r"2\.\.256"):
            decode(b"", 0, "packed", bad)
    with pytest.raises(TypeError):
        encode(good, "packed", 3.0)
    with pytest.raises(TypeError):
        encode_best(good, True)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        encode_best(np.array([5], np.uint8), 3)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codecs.empirical_entropy_bits(np.array([4], np.uint8), 4)
    with pytest.raises(ValueError, match=">= 0"):
        decode(b"", -1, "entropy", 3)
    with pytest.raises(TypeError):
        decode("abc", 3, "packed", 3)
    # binary masks keep today's strict input rule
    with pytest.raises(ValueError, match="0 or 1"):
        encode(good, "packed", 2)


def test_max_bytes():
    for n in (0, 1, 7, 8, 9, 1000, 10**9):
        assert codecs.max_bytes("packed", n) == (n + 7) // 8
        assert codecs.max_bytes("rle", n) == 1 + (n * 32 + 7) // 8
        assert codecs.max_bytes("entropy", n) == 4 + (n * 24) // 8 + 64
        assert codecs.max_bytes("entropy", n, 2) == 4 + (n * 24) // 8 + 64
        for alphabet in (3, 4, 5, 9, 256):
            b = codecs.symbol_bits(alphabet)
            assert codecs.max_bytes("packed", n, alphabet) == (n * b + 7) // 8
            assert codecs.max_bytes("entropy", n, alphabet) == 1 + 4 * alphabet + 3 * n + 64
    with pytest.raises(ValueError, match=">= 0"):
        codecs.max_bytes("packed", -1, 3)
    with pytest.raises(ValueError, match="packed, rle, entropy"):
        codecs.max_bytes("zip", 1)


def test_empirical_entropy_bits():
    h = codecs.empirical_entropy_bits
    assert h(np.array([0, 1, 2, 0]), 3) == pytest.approx(1.5)
    assert h(np.array([0, 1, 2, 3]), 4) == pytest.approx(2.0)
    assert h(np.array([3, 3, 1, 1]), 4) == pytest.approx(1.0)
    assert h(np.array([0, 0, 0, 1]), 3) == pytest.approx(entropy_bound_bits(0.25))
    # p = 1/2, 1/4, 1/8, 1/8: 0.5 + 0.5 + 0.375 + 0.375
    assert h(np.array([4, 4, 4, 4, 0, 0, 8, 2]), 9) == pytest.approx(1.75)
    assert h(np.arange(256), 256) == pytest.approx(8.0)
    assert h(np.zeros(0, np.uint8), 3) == 0.0
    assert h(np.full(17, 2, np.uint8), 3) == 0.0
    assert h(np.zeros(0, bool)) == 0.0
    assert h(np.ones(9, bool)) == 0.0
    for k in (0.01, 0.3, 0.5, 0.77):
        bits = random_mask(10007, k, seed=int(k * 100))
        assert h(bits) == entropy_bound_bits(bits.mean())
        assert h(bits, 2) == entropy_bound_bits(bits.mean())
        assert h(bits.astype(np.uint8)) == entropy_bound_bits(bits.mean())
        assert h(bits.astype(np.uint8), 3) == pytest.approx(entropy_bound_bits(bits.mean()))


# --------------------------------------------------------------------------- packed, a > 2

GOLDEN_PACKED_SYMBOLS = [
    # (alphabet, symbols, encoding) -- the worked examples in docs/mask-codecs.md
    (3, [0, 1, 2, 1], "64"),  # 2 bits each: 00 | 01<<2 | 10<<4 | 01<<6 = 0b01100100
    (5, [1, 4, 3], "e1 00"),  # 3 bits each: 1 | 4<<3 | 3<<6 = 0xe1, bit 8 = 0 + padding
    (9, [3, 8, 5], "83 05"),  # 4 bits each: nibbles low first
    (256, [7, 255, 0], "07 ff 00"),  # 8 bits: the bytes themselves
]


@pytest.mark.parametrize(("alphabet", "symbols", "golden"), GOLDEN_PACKED_SYMBOLS)
def test_packed_symbols_golden(alphabet, symbols, golden):
    symbols = np.array(symbols, dtype=np.uint8)
    assert encode(symbols, "packed", alphabet) == bytes.fromhex(golden)
    out = decode(bytes.fromhex(golden), symbols.size, "packed", alphabet)
    np.testing.assert_array_equal(out, symbols)
    assert f"`{golden}`" in DOCS.read_text(), "docs/mask-codecs.md must show the same bytes"


def test_packed_symbols_bit_layout():
    # symbol i occupies stream bits [i*b, (i+1)*b), stream bit j = bit j % 8 of byte j // 8
    for alphabet in (3, 5, 6, 7, 9, 17, 33, 65, 129):
        b = codecs.symbol_bits(alphabet)
        symbols = random_symbols(37, alphabet, seed=alphabet)
        data = encode(symbols, "packed", alphabet)
        stream = int.from_bytes(data, "little")
        assert [(stream >> (i * b)) & ((1 << b) - 1) for i in range(37)] == symbols.tolist()
        assert stream >> (37 * b) == 0


@pytest.mark.parametrize(
    ("data", "n", "alphabet", "message"),
    [
        (b"", 1, 3, "needs 1 bytes"),
        (b"\x64\x00", 4, 3, "needs 1 bytes"),
        (b"\x64", 3, 3, "padding"),  # n = 3 uses 6 bits; bit 6 (0x40) set
        (b"\x03", 1, 3, "symbol value 3"),
        (b"\x07", 1, 5, "symbol value 7"),
        (b"\x00\x0f", 4, 9, "symbol value 15"),
        (b"\xff", 1, 129, "symbol value 255"),
        (b"\x00", 0, 3, "needs 0 bytes"),
    ],
)
def test_packed_symbols_rejects_bad_data(data, n, alphabet, message):
    with pytest.raises(CodecError, match=message):
        decode(data, n, "packed", alphabet)


# --------------------------------------------------------------------------- entropy, a > 2


def test_quantize_frequencies():
    q = entropy_codec.quantize_frequencies
    one = 1 << 24
    assert q([0, 0, 0]) == [one, 0, 0]
    assert q([0, 5, 0]) == [0, one, 0]
    assert q([2, 1, 1]) == [one // 2, one // 4, one // 4]
    # 2**24 / 3 = 5592405 rem 1 each: the one unit left goes to the smallest symbol
    assert q([1, 1, 1]) == [5592406, 5592405, 5592405]
    # a symbol far below 2**-24 still gets 1, taken from the largest
    assert q([10**12 - 2, 1, 1, 0]) == [one - 2, 1, 1, 0]
    for counts in ([3, 0, 7, 1], [1] * 256, [10**9, 1, 0, 5, 10**9], list(range(256))):
        freq = q(counts)
        assert sum(freq) == one
        assert all((f > 0) == (c > 0) for f, c in zip(freq, counts, strict=True))


def test_symbols_entropy_header():
    # [0, 0, 1, 2]: frequencies 1/2, 1/4, 1/4 of 2**24 after the alphabet byte a - 1 = 2
    data = encode(np.array([0, 0, 1, 2], np.uint8), "entropy", 3)
    assert data[:13] == bytes.fromhex("02 00008000 00004000 00004000")
    assert len(data) > 13 and (len(data) - 13) % 4 == 0
    assert data.hex(" ", 1).startswith("02 00 00 80 00 00 00 40 00 00 00 40 00")


def _symbols_header(alphabet: int, freq: list[int]) -> bytes:
    return bytes([alphabet - 1]) + np.array(freq, dtype="<u4").tobytes()


def test_symbols_entropy_rejects_bad_data():
    n = 10000
    symbols = random_symbols(n, 3, "skewed", seed=5)
    data = encode(symbols, "entropy", 3)
    header = 13
    with pytest.raises(CodecError, match="empty"):
        decode(b"", n, "entropy", 3)
    with pytest.raises(CodecError, match="alphabet of 3 symbols, expected 4"):
        decode(data, n, "entropy", 4)
    with pytest.raises(CodecError, match="alphabet of 4 symbols, expected 3"):
        decode(b"\x03" + data[1:], n, "entropy", 3)
    with pytest.raises(CodecError, match="header"):
        decode(data[:12], n, "entropy", 3)
    bad_sum = bytearray(data)
    bad_sum[1] ^= 1
    with pytest.raises(CodecError, match="sum to"):
        decode(bytes(bad_sum), n, "entropy", 3)
    overflow = _symbols_header(3, [0xFFFFFFFF, 0xFFFFFFFF, (1 << 24) + 2]) + data[header:]
    with pytest.raises(CodecError, match="sum to"):
        decode(overflow, n, "entropy", 3)
    constant = _symbols_header(3, [0, 0, 1 << 24])
    np.testing.assert_array_equal(decode(constant, 5, "entropy", 3), np.full(5, 2, np.uint8))
    with pytest.raises(CodecError, match="constant input"):
        decode(constant + b"\x00" * 4, 5, "entropy", 3)
    with pytest.raises(CodecError, match="0 symbols"):
        decode(data, 0, "entropy", 3)
    with pytest.raises(CodecError, match="no payload"):
        decode(data[:header], n, "entropy", 3)
    with pytest.raises(CodecError, match="32-bit words"):
        decode(data[:-1], n, "entropy", 3)
    with pytest.raises(CodecError, match="too long"):
        decode(data[:header] + bytes(4 * 100), 10, "entropy", 3)
    with pytest.raises(CodecError, match="too short"):
        decode(data[: header + 4], 10**7, "entropy", 3)
    for bad in (data[:-4], data + b"\x00" * 4, data + data[-4:]):
        with pytest.raises(CodecError):
            decode(bad, n, "entropy", 3)
    for bad_n in (n - 1, n + 1, 2 * n):
        with pytest.raises(CodecError):
            decode(data, bad_n, "entropy", 3)
    for i in range(header, len(data), max(1, (len(data) - header) // 16)):
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        with pytest.raises(CodecError):
            decode(bytes(flipped), n, "entropy", 3)


def test_symbols_entropy_rejects_symbol_with_zero_frequency():
    # constriction gives every symbol of the alphabet a nonzero probability, so a payload can
    # code a symbol whose header frequency is 0; the decoder must refuse it.
    freq = np.array([1 << 23, 1 << 23, 0], dtype=np.int64)
    symbols = np.array([0, 1, 2, 1, 0] * 10, dtype=np.uint8)
    payload = entropy_codec._encode_symbols_payload(symbols, freq)
    data = _symbols_header(3, freq.tolist()) + payload
    with pytest.raises(CodecError, match="frequency is 0"):
        decode(data, symbols.size, "entropy", 3)
    ok = symbols[symbols < 2]
    good = _symbols_header(3, freq.tolist()) + entropy_codec._encode_symbols_payload(ok, freq)
    np.testing.assert_array_equal(decode(good, ok.size, "entropy", 3), ok)


def test_symbols_entropy_requires_canonical_header():
    # the header must be exactly quantize_frequencies() of the decoded symbols' counts
    freq = np.array([1 << 22, 3 << 22, 0, 0, 0], dtype=np.int64)
    symbols = random_symbols(5000, 2, "uniform", seed=3)
    payload = entropy_codec._encode_symbols_payload(symbols, freq)
    with pytest.raises(CodecError, match="quantized counts"):
        decode(_symbols_header(5, freq.tolist()) + payload, 5000, "entropy", 5)
    canonical = entropy_codec.quantize_frequencies(np.bincount(symbols, minlength=5))
    data = _symbols_header(5, canonical) + entropy_codec._encode_symbols_payload(
        symbols, np.array(canonical)
    )
    assert data == encode(symbols, "entropy", 5)
    np.testing.assert_array_equal(decode(data, 5000, "entropy", 5), symbols)
    # a constant header for no symbols must name symbol 0
    with pytest.raises(CodecError, match="0 symbols"):
        decode(_symbols_header(5, [0, 1 << 24, 0, 0, 0]), 0, "entropy", 5)


# --------------------------------------------------------------------------- encode_best, a > 2


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_symbols_encode_best(alphabet):
    cases = [
        ("skewed", 100_000),
        ("uniform", 100_000),
        ("uniform", 10),
        ("skewed", 1),
        ("skewed", 0),
    ]
    for dist, n in cases:
        symbols = random_symbols(n, alphabet, dist, seed=n)
        name, data = encode_best(symbols, alphabet)
        assert name in AUTO_SYMBOL_CODECS
        sizes = [len(encode(symbols, c, alphabet)) for c in AUTO_SYMBOL_CODECS]
        assert len(data) == min(sizes)
        assert name == AUTO_SYMBOL_CODECS[sizes.index(min(sizes))]
        assert len(data) <= len(encode(symbols, "packed", alphabet))
        assert data == encode(symbols, name, alphabet)
        np.testing.assert_array_equal(decode(data, n, name, alphabet), symbols)
        if dist == "skewed" and n == 100_000:
            assert name == "entropy-grouped"
        if n <= 10:
            assert name == "packed"  # the categorical header alone outweighs the data


# --------------------------------------------------------------------------- import hygiene, a > 2


def test_constriction_imported_lazily():
    # only inside functions: importing hiddenite.codecs loads numpy and nothing else
    for path in CODECS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "constriction" for a in node.names), path.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "constriction", path.name


# --------------------------------------------------------------------------- hypothesis, a > 2


@st.composite
def symbol_arrays(draw, max_size: int = 2000, alphabets=(3, 4, 5, 9, 17, 255, 256)):
    """(symbols, alphabet): uniform, skewed, sparse, runs, or a few distinct values."""
    alphabet = draw(st.sampled_from(alphabets))
    n = draw(st.integers(0, max_size))
    kind = draw(st.sampled_from(["uniform", "skewed", "sparse", "runs", "few"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        symbols = rng.integers(0, alphabet, n)
    elif kind == "skewed":
        weights = draw(st.floats(0.01, 0.99)) ** np.arange(alphabet)
        symbols = rng.choice(alphabet, n, p=weights / weights.sum())
    elif kind == "sparse":
        symbols = np.where(rng.random(n) < 0.002, rng.integers(0, alphabet, n), 0)
    elif kind == "runs":
        runs = rng.geometric(1.0 / draw(st.integers(1, 300)), size=n + 1)
        symbols = np.repeat(rng.integers(0, alphabet, runs.size), runs)[:n]
    else:
        values = rng.integers(0, alphabet, draw(st.integers(1, 3)))
        symbols = values[rng.integers(0, values.size, n)]
    return symbols.astype(np.uint8), alphabet


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=symbol_arrays())
def test_property_symbols_roundtrip_and_max_bytes(case):
    symbols, alphabet = case
    for codec in CODECS:
        if codecs.supports(codec, alphabet):
            roundtrip_symbols(symbols, codec, alphabet)  # also checks max_bytes
    name, data = encode_best(symbols, alphabet)
    assert len(data) <= len(encode(symbols, "packed", alphabet))
    assert len(data) <= codecs.max_bytes(name, symbols.size, alphabet)
    np.testing.assert_array_equal(decode(data, symbols.size, name, alphabet), symbols)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=masks())
def test_property_binary_max_bytes(bits):
    for codec in CODECS:
        assert len(encode(bits, codec)) <= codecs.max_bytes(codec, bits.size)


@st.composite
def corrupted_symbols(draw):
    """A valid a = 3 or a = 9 encoding of small symbols, then mutated."""
    codec = draw(st.sampled_from(SYMBOL_CODECS))
    symbols, alphabet = draw(symbol_arrays(max_size=300, alphabets=(3, 9)))
    data = bytearray(encode(symbols, codec, alphabet))
    n = symbols.size
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "n", "freq"]))
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
        elif op == "freq" and codec == "entropy" and len(data) >= 1 + 4 * alphabet:
            # move probability between two symbols, keeping a valid-looking header
            freq = np.frombuffer(bytes(data[1 : 1 + 4 * alphabet]), "<u4").astype(np.int64)
            i, j = draw(st.integers(0, alphabet - 1)), draw(st.integers(0, alphabet - 1))
            moved = min(int(freq[i]), draw(st.integers(0, 1 << 24)))
            freq[i] -= moved
            freq[j] += moved
            data[1 : 1 + 4 * alphabet] = freq.astype("<u4").tobytes()
    return codec, alphabet, bytes(data), n


def _decode_only_codec_error(data: bytes, n: int, codec: str, alphabet: int) -> None:
    try:
        out = decode(data, n, codec, alphabet)
    except CodecError as exc:
        assert str(exc)
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.shape == (n,)
    assert out.size == 0 or int(out.max()) < alphabet
    np.testing.assert_array_equal(decode(encode(out, codec, alphabet), n, codec, alphabet), out)


@settings(max_examples=500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_symbols())
def test_fuzz_symbols_corrupt_data_raises_only_codec_error(case):
    codec, alphabet, data, n = case
    _decode_only_codec_error(data, n, codec, alphabet)


@st.composite
def random_symbol_streams(draw):
    """Random bytes, or a plausible entropy header (right alphabet, sum 2**24) + random words."""
    codec = draw(st.sampled_from(SYMBOL_CODECS))
    alphabet = draw(st.sampled_from([3, 9]))
    n = draw(st.integers(0, 2000))
    if codec == "entropy" and draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, 1 << 24), min_size=alphabet - 1)))
        freq = np.diff([0, *cuts[: alphabet - 1], 1 << 24])
        payload = draw(st.binary(max_size=64))
        return codec, alphabet, _symbols_header(alphabet, freq.tolist()) + payload, n
    return codec, alphabet, draw(st.binary(max_size=64)), n


@settings(max_examples=300, deadline=2000)
@given(case=random_symbol_streams())
def test_fuzz_symbols_random_bytes_raise_only_codec_error(case):
    codec, alphabet, data, n = case
    _decode_only_codec_error(data, n, codec, alphabet)
