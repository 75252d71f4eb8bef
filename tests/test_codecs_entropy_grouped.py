"""Tests for the ``entropy-grouped`` codec (hiddenite.codecs.entropy_grouped).

The references are independent of the module: the group values are built digit by digit in
plain Python, the product model is multiplied out in plain Python floats, and the payload is
compared with constriction's range coder driven directly.
"""

from __future__ import annotations

import constriction
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiddenite import codecs
from hiddenite.codecs import CodecError, decode, encode
from hiddenite.codecs import entropy_grouped as eg

G = "entropy-grouped"
ONE = 1 << 24


def naive_groups(symbols, alphabet: int, pad: int) -> list[int]:
    """Group values digit by digit: group j = sum_i symbols[j*g + i] * a**i, padded with pad."""
    g = 1
    while alphabet ** (g + 1) <= 256:
        g += 1
    symbols = [int(s) for s in symbols]
    out = []
    for start in range(0, len(symbols), g):
        chunk = symbols[start : start + g]
        chunk += [pad] * (g - len(chunk))
        out.append(sum(d * alphabet**i for i, d in enumerate(chunk)))
    return out


def naive_model(freq, alphabet: int) -> np.ndarray:
    """P(group) = p[d_{g-1}] * (p[d_{g-2}] * (... * p[d_0])), in plain Python floats."""
    g = eg.group_size(alphabet)
    p = [f / ONE for f in freq]
    out = []
    for j in range(alphabet**g):
        digits = [(j // alphabet**i) % alphabet for i in range(g)]
        value = p[digits[0]]
        for d in digits[1:]:
            value = p[d] * value
        out.append(value)
    return np.array(out)


def constriction_payload(groups, model) -> bytes:
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(
        np.asarray(groups, dtype=np.int32),
        constriction.stream.model.Categorical(model, perfect=False),
    )
    return encoder.get_compressed().astype("<u4").tobytes()


def roundtrip(symbols: np.ndarray, alphabet: int) -> bytes:
    data = encode(symbols, G, alphabet)
    out = decode(data, symbols.size, G, alphabet)
    assert out.dtype == (np.bool_ if alphabet == 2 else np.uint8)
    np.testing.assert_array_equal(out, symbols)
    assert len(data) <= codecs.max_bytes(G, symbols.size, alphabet)
    return data


# --------------------------------------------------------------------------- groups and model


def test_group_size():
    expected = {2: 8, 3: 5, 4: 4, 5: 3, 6: 3, 7: 2, 15: 2, 16: 2, 17: 1, 255: 1, 256: 1}
    for alphabet, g in expected.items():
        assert eg.group_size(alphabet) == g
    for alphabet in range(2, 257):
        g = eg.group_size(alphabet)
        assert alphabet**g <= 256 < alphabet ** (g + 1)


@pytest.mark.parametrize("alphabet", [2, 3, 4, 5, 7, 16, 17])
def test_group_model_matches_naive_product(alphabet):
    rng = np.random.default_rng(alphabet)
    counts = rng.integers(0, 50, alphabet).tolist()
    counts[0] += 1
    freq = codecs.entropy.quantize_frequencies(counts)
    model = eg.group_model(freq, alphabet)
    reference = naive_model(freq, alphabet)
    assert model.dtype == np.float64
    np.testing.assert_array_equal(model, reference)  # bit for bit, same multiplication order
    assert model.sum() == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- exact bytes


def test_golden_binary():
    """n = 11, kept 0, 9, 10: the groups are the packed bytes 01 06; q = round(3 * 2**24 / 11)."""
    bits = np.zeros(11, bool)
    bits[[0, 9, 10]] = True
    data = encode(bits, G)
    q = (3 * ONE + 11 // 2) // 11
    assert q == 0x45D174
    assert data[:4] == bytes([0x74, 0xD1, 0x45, 0x00])
    assert naive_groups(bits, 2, 0) == [0x01, 0x06]
    model = naive_model([ONE - q, q], 2)
    assert data[4:] == constriction_payload([0x01, 0x06], model)
    assert data.hex(" ") == "74 d1 45 00 b0 77 73 15"  # the worked example in the docs
    np.testing.assert_array_equal(decode(data, 11, G), bits)


def test_golden_ternary():
    """a = 3 (g = 5): symbols 0 0 1 2 1 | 0 0 -> groups 9 + 2*27 + 81 = 144 and 0 (padded)."""
    symbols = np.array([0, 0, 1, 2, 1, 0, 0], np.uint8)
    freq = codecs.entropy.quantize_frequencies([4, 2, 1])
    assert sum(freq) == ONE
    data = encode(symbols, G, 3)
    assert data[:13] == bytes([2]) + np.array(freq, "<u4").tobytes()
    assert naive_groups(symbols, 3, 0) == [144, 0]
    assert data[13:] == constriction_payload([144, 0], naive_model(freq, 3))
    assert data.hex(" ") == (
        "02 25 49 92 00 92 24 49 00 49 92 24 00 00 14 f3 d6"  # the docs' example
    )
    np.testing.assert_array_equal(decode(data, 7, G, 3), symbols)


def test_pad_symbol_is_smallest_present():
    """Symbol 0 absent: the last group is padded with the smallest symbol that occurs."""
    symbols = np.array([2, 1, 2, 2, 1, 1, 2], np.uint8)  # a = 3, g = 5
    data = roundtrip(symbols, 3)
    freq = codecs.entropy.quantize_frequencies([0, 3, 4])
    assert data[13:] == constriction_payload(naive_groups(symbols, 3, 1), naive_model(freq, 3))


def test_constant_and_empty_have_no_payload():
    assert encode(np.zeros(0, bool), G) == bytes(4)
    assert encode(np.zeros(1000, bool), G) == bytes(4)
    assert encode(np.ones(1000, bool), G) == ONE.to_bytes(4, "little")
    data = encode(np.full(9, 4, np.uint8), G, 5)
    assert len(data) == 1 + 4 * 5
    np.testing.assert_array_equal(decode(data, 9, G, 5), np.full(9, 4, np.uint8))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("alphabet", range(2, 257))
def test_roundtrip_every_alphabet_odd_n(alphabet):
    rng = np.random.default_rng(alphabet)
    for n in (1, 2 * alphabet + 1, 1001):
        if alphabet == 2:
            roundtrip(rng.random(n) < 0.3, 2)
            continue
        roundtrip(rng.integers(0, alphabet, n).astype(np.uint8), alphabet)
        weights = 0.6 ** np.arange(alphabet)
        roundtrip(rng.choice(alphabet, n, p=weights / weights.sum()).astype(np.uint8), alphabet)


@st.composite
def symbol_cases(draw):
    alphabet = draw(st.integers(2, 256))
    n = draw(st.integers(0, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "skewed", "few"]))
    if kind == "uniform":
        symbols = rng.integers(0, alphabet, n)
    elif kind == "skewed":
        weights = draw(st.floats(0.01, 0.99)) ** np.arange(alphabet)
        symbols = rng.choice(alphabet, n, p=weights / weights.sum())
    else:
        values = rng.integers(0, alphabet, draw(st.integers(1, 3)))
        symbols = values[rng.integers(0, values.size, n)]
    symbols = symbols.astype(np.uint8)
    return (symbols.astype(np.bool_) if alphabet == 2 else symbols), alphabet


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbol_cases())
def test_property_roundtrip_and_reference_payload(case):
    symbols, alphabet = case
    data = roundtrip(symbols, alphabet)
    # never more than one 32-bit word larger than the entropy codec's stream of the same model
    assert len(data) <= len(encode(symbols, "entropy", alphabet)) + 4
    # and exactly the reference construction
    counts = np.bincount(symbols.astype(np.uint8), minlength=alphabet).tolist()
    if alphabet == 2:
        q = codecs.entropy.quantize(counts[1], symbols.size)
        freq, header = [ONE - q, q], q.to_bytes(4, "little")
    else:
        freq = codecs.entropy.quantize_frequencies(counts)
        header = bytes([alphabet - 1]) + np.array(freq, "<u4").tobytes()
    assert data[: len(header)] == header
    if max(freq) < ONE:
        pad = min(s for s in range(alphabet) if freq[s])
        groups = naive_groups(symbols.astype(np.uint8), alphabet, pad)
        assert data[len(header) :] == constriction_payload(groups, naive_model(freq, alphabet))


@pytest.mark.parametrize("k", [0.05, 0.1, 0.3, 0.5])
def test_size_at_the_entropy_bound(k):
    bits = np.random.default_rng(int(k * 100)).random(300_000) < k
    grouped, plain = len(encode(bits, G)), len(encode(bits, "entropy"))
    bound = codecs.entropy_bound_bits(bits.mean()) * bits.size / 8
    assert grouped <= plain + 4
    assert grouped <= 1.002 * bound + 16


# --------------------------------------------------------------------------- corrupt streams


def test_rejects_truncated_extended_and_wrong_n():
    bits = np.random.default_rng(3).random(20_000) < 0.2
    data = encode(bits, G)
    for bad, n, message in [
        (data[:3], 20_000, "shorter than its header"),
        (data[:-1], 20_000, "whole number"),
        (data[:-4], 20_000, "corrupt|does not decode|header is not"),
        (data[:4], 20_000, "no payload"),
        (data + bytes(4), 20_000, "corrupt|trailing|does not decode"),
        (data + b"\x12\x34\x56\x78", 20_000, "corrupt|trailing|does not decode"),
        (data, 20_001, "."),
        (data, 19_999, "."),
        (data, 0, "0 symbols"),
        (data[:4] + bytes(4 * 100), 10, "too long"),
        (data[:8], 10**7, "too short"),
        (((ONE + 1).to_bytes(4, "little")), 5, "greater than 1"),
        (bytes(4) + bytes(4), 5, "unexpected payload"),
        (ONE.to_bytes(4, "little"), 0, "must have q = 0"),
    ]:
        with pytest.raises(CodecError, match=message):
            decode(bad, n, G)


def test_rejects_header_that_is_not_the_decoded_counts():
    bits = np.random.default_rng(4).random(5000) < 0.3
    data = encode(bits, G)
    q = int.from_bytes(data[:4], "little")
    for other in (q - 1, q + 1):
        with pytest.raises(CodecError):
            decode(other.to_bytes(4, "little") + data[4:], 5000, G)


def test_rejects_nonzero_padding():
    """Groups 01 86: bit 15 (a padding bit for n = 11) set; header of the 11 decoded bits."""
    q = (3 * ONE + 5) // 11
    payload = constriction_payload([0x01, 0x86], naive_model([ONE - q, q], 2))
    with pytest.raises(CodecError, match="padded"):
        decode(q.to_bytes(4, "little") + payload, 11, G)


def test_rejects_group_with_zero_probability():
    """a = 3 with symbol 2 absent from the header: a group holding a 2 has probability 0."""
    freq = [ONE // 2, ONE // 2, 0]
    header = bytes([2]) + np.array(freq, "<u4").tobytes()
    payload = constriction_payload([2 * 81, 0], naive_model(freq, 3))
    with pytest.raises(CodecError, match="probability 0"):
        decode(header + payload, 10, G, 3)


def test_symbols_header_checks():
    symbols = np.random.default_rng(5).integers(0, 5, 3000).astype(np.uint8)
    data = encode(symbols, G, 5)
    with pytest.raises(CodecError, match="alphabet of 5 symbols, expected 4"):
        decode(data, 3000, G, 4)
    with pytest.raises(CodecError, match="empty"):
        decode(b"", 3000, G, 5)
    with pytest.raises(CodecError, match="shorter than its 21-byte header"):
        decode(data[:20], 3000, G, 5)
    bad = bytearray(data)
    bad[1] ^= 1  # frequencies no longer sum to 2**24
    with pytest.raises(CodecError, match="sum to"):
        decode(bytes(bad), 3000, G, 5)
    with pytest.raises(CodecError):
        decode(data, 3001, G, 5)


@pytest.mark.parametrize("alphabet", [2, 3, 9])
def test_every_single_bit_flip_is_rejected_or_canonical(alphabet):
    """A flip either raises CodecError or yields a stream the encoder itself writes."""
    rng = np.random.default_rng(alphabet)
    n = 301
    symbols = rng.integers(0, alphabet, n).astype(np.uint8)
    if alphabet == 2:
        symbols = rng.random(n) < 0.2
    data = encode(symbols, G, alphabet)
    rejected = 0
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            out = decode(bytes(flipped), n, G, alphabet)
        except CodecError:
            rejected += 1
            continue
        assert encode(out, G, alphabet) == bytes(flipped)
    assert rejected >= 0.95 * len(data) * 8


@st.composite
def corrupted(draw):
    alphabet = draw(st.sampled_from([2, 3, 4, 17]))
    n = draw(st.integers(0, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    symbols = rng.integers(0, alphabet, n).astype(np.uint8)
    if alphabet == 2:
        symbols = symbols.astype(np.bool_)
    data = bytearray(encode(symbols, G, alphabet))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "n"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "n":
            n = draw(st.integers(0, 500))
    return bytes(data), n, alphabet


@settings(max_examples=300, deadline=None)
@given(corrupted())
def test_fuzz_corrupt_raises_only_codec_error_or_is_canonical(case):
    data, n, alphabet = case
    try:
        out = decode(data, n, G, alphabet)
    except CodecError as exc:
        assert str(exc)
        return
    assert out.shape == (n,)
    assert encode(out, G, alphabet) == data  # accepted streams are exactly the encoder's


# --------------------------------------------------------------------------- registry


def test_registered_declarations():
    assert G in codecs.CODECS
    assert codecs.CODECS[:3] == ("packed", "rle", "entropy")  # old names and order kept
    assert codecs.AUTO_CODECS == ("packed", "rle", G)
    assert all(codecs.supports(G, a) for a in (2, 3, 256))
    assert {c: codecs.size_model(c) for c in codecs.CODECS} == {
        "packed": "symbol-bits",
        "rle": "entropy-bound",
        "entropy": "entropy-bound",
        G: "entropy-bound",
    }
    for n in (0, 1, 7, 8, 9, 1000, 10**9):
        assert codecs.max_bytes(G, n) == 4 + (-(-n // 8) * 24) // 8 + 64
        for alphabet in (3, 17, 256):
            g = eg.group_size(alphabet)
            assert codecs.max_bytes(G, n, alphabet) == 1 + 4 * alphabet + (-(-n // g) * 3) + 64


def test_encode_best_prefers_grouped_to_entropy():
    bits = np.random.default_rng(6).random(50_000) < 0.1
    name, data = codecs.encode_best(bits)
    assert name == G
    assert data == encode(bits, G)
