"""Mitchell's log multiplier (hiddenite.ops.logmul) and the operator seam (hiddenite.ops)."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hiddenite
from hiddenite import SupermaskConfig
from hiddenite.errors import UserError
from hiddenite.fileformat import load, save
from hiddenite.hw import spec as hw_spec
from hiddenite.hw.model import estimate_layer, simulate
from hiddenite.hw.workload import workloads_from_module
from hiddenite.ops import OPERATORS, get_operator, operator_choice, operator_for, use_operator
from hiddenite.ops import logmul as lm
from hiddenite.ops.logmul import (
    logmul_conv2d,
    logmul_linear,
    mitchell_matmul,
    mitchell_mul,
    mitchell_scalar,
    mitchell_scalar_bits,
)

NAN = 0x7FC00000
INF = 0x7F800000
NEG = 0x80000000


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def tensor_of_bits(values: list[int]) -> torch.Tensor:
    arr = np.array(values, dtype=np.uint32).view(np.int32)
    return torch.from_numpy(arr.copy()).view(torch.float32)


def bits_of(t: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in t.contiguous().view(torch.int32).reshape(-1).tolist()]


# ---------------------------------------------------------------------------------------------
# the scalar reference against the formula and hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_worst_case_is_minus_one_ninth_at_half_mantissas():
    assert mitchell_scalar(1.5, 1.5) == 2.0  # exact 2.25
    err = (Fraction(mitchell_scalar(1.5, 1.5)) - Fraction(9, 4)) / Fraction(9, 4)
    assert err == Fraction(-1, 9)
    # exponents move the result, not the relative error
    # 3 = 2^1 x 1.5, -0.375 = -2^-2 x 1.5: -2^(1 - 2 + 1) x (0.5 + 0.5) = -1 (exact -1.125)
    assert mitchell_scalar(3.0, -0.375) == -1.0


def test_relative_error_grid_minimum_is_at_half_half():
    step = 64  # mantissas j / 64
    worst, where = Fraction(0), None
    for i in range(step):
        for j in range(step):
            a, b = 1 + Fraction(i, step), 1 + Fraction(j, step)
            got = Fraction(mitchell_scalar(float(a), float(b)))
            err = got / (a * b) - 1
            assert err <= 0
            if err < worst:
                worst, where = err, (a, b)
    assert worst == Fraction(-1, 9) and where == (Fraction(3, 2), Fraction(3, 2))


@settings(max_examples=300, deadline=None)
@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)
def test_relative_error_never_positive_and_at_least_minus_one_ninth(a, b):
    got = mitchell_scalar(a, b)
    exact = Fraction(a) * Fraction(b)
    if exact == 0 or got == 0 or abs(got) == float("inf"):
        return  # zeros, flush-to-zero underflow, overflow: see the special-value tests
    rel = Fraction(got) / exact - 1
    assert Fraction(-1, 9) <= rel <= 0


def test_hand_computed_products():
    # 1.25 x 1.25: ma + mb = 0.5 < 1 -> 1.5 (exact 1.5625)
    assert mitchell_scalar(1.25, 1.25) == 1.5
    # 1.75 x 1.5: ma + mb = 1.25 >= 1 -> 2 x 1.25 = 2.5 (exact 2.625)
    assert mitchell_scalar(1.75, 1.5) == 2.5
    # powers of two are exact; sign is the xor
    assert mitchell_scalar(-4.0, 0.125) == -0.5
    assert mitchell_scalar(-3.0, -5.0) == 14.0  # 2^3 (1 + 0.5 + 0.25)


SPECIALS = [
    # (a bits, b bits, expected bits, why)
    (bits(0.0), bits(3.0), 0, "+0 x +"),
    (bits(-0.0), bits(3.0), NEG, "-0 x +"),
    (bits(0.0), bits(-3.0), NEG, "+0 x -"),
    (bits(-0.0), bits(-0.0), 0, "-0 x -0"),
    (0x00000001, bits(2.0), 0, "subnormal is zero (DAZ)"),
    (0x80400000, bits(5.0), NEG, "negative subnormal is -0"),
    (INF, bits(2.0), INF, "inf x finite"),
    (INF, bits(-2.0), INF | NEG, "inf x negative"),
    (INF | NEG, INF | NEG, INF, "-inf x -inf"),
    (INF, 0, NAN, "inf x 0"),
    (INF, 0x00000005, NAN, "inf x subnormal (DAZ: zero)"),
    (0x7FC00001, bits(1.0), NAN, "NaN payload -> canonical"),
    (0xFFC00000, bits(1.0), NAN, "negative NaN -> canonical"),
    (0x7F800001, INF, NAN, "signalling NaN x inf"),
    (bits(1.0), 0x7FBFFFFF, NAN, "x NaN"),
    (bits(2.0**100), bits(2.0**100), INF, "overflow -> inf"),
    (bits(-(2.0**100)), bits(2.0**100), INF | NEG, "overflow -> -inf"),
    (bits(1.5 * 2.0**127), bits(1.5), INF, "carry overflows the top exponent"),
    (bits(1.5 * 2.0**126), bits(1.5), bits(2.0**127), "carry lands on the top exponent"),
    (bits(2.0**-100), bits(2.0**-100), 0, "underflow -> +0 (FTZ)"),
    (bits(-(2.0**-100)), bits(2.0**-30), NEG, "underflow -> -0"),
    (bits(2.0**-63), bits(2.0**-63), bits(2.0**-126), "smallest normal result"),
    (bits(1.5 * 2.0**-63), bits(1.5 * 2.0**-64), bits(2.0**-126), "carry lifts out of FTZ"),
    (bits(1.25 * 2.0**-64), bits(2.0**-63), 0, "just below the normal range -> 0"),
    (bits(1.5), bits(1.5), bits(2.0), "worst case"),
]


@pytest.mark.parametrize("a, b, want, why", SPECIALS, ids=[s[3] for s in SPECIALS])
def test_special_values(a, b, want, why):
    assert mitchell_scalar_bits(a, b) == want
    assert mitchell_scalar_bits(b, a) == want  # commutative
    for backend in ("numba", "torch"):
        fast = mitchell_mul(tensor_of_bits([a, b]), tensor_of_bits([b, a]), backend=backend)
        assert bits_of(fast) == [want, want]


# ---------------------------------------------------------------------------------------------
# fast paths == the scalar reference, bit for bit
# ---------------------------------------------------------------------------------------------
word = st.integers(0, 2**32 - 1)
interesting = st.sampled_from(
    [0, NEG, 1, 0x807FFFFF, 0x00800000, INF, INF | NEG, NAN, 0x7F800001, 0x3F800000, 0x7F7FFFFF]
)
any_bits = st.one_of(word, interesting)
any_float = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(any_bits, any_bits), min_size=1, max_size=64))
def test_elementwise_equals_reference_on_bit_patterns(pairs):
    a = tensor_of_bits([p[0] for p in pairs])
    b = tensor_of_bits([p[1] for p in pairs])
    want = [mitchell_scalar_bits(x, y) for x, y in pairs]
    assert bits_of(mitchell_mul(a, b, backend="numba")) == want
    assert bits_of(mitchell_mul(a, b, backend="torch")) == want


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(any_float, any_float), min_size=1, max_size=64))
def test_elementwise_equals_reference_on_floats(pairs):
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    want = [mitchell_scalar_bits(x, y) for x, y in zip(bits_of(a), bits_of(b), strict=True)]
    assert bits_of(mitchell_mul(a, b, backend="numba")) == want
    assert bits_of(mitchell_mul(a, b, backend="torch")) == want


def test_elementwise_chunks_and_broadcasting(monkeypatch):
    torch.manual_seed(0)
    a, b = torch.randn(7, 1, 5), torch.randn(1, 3, 5)
    whole = mitchell_mul(a, b)
    monkeypatch.setattr(lm, "_CHUNK_ELEMS", 4)
    assert torch.equal(
        mitchell_mul(a, b, backend="torch").view(torch.int32), whole.view(torch.int32)
    )
    k_blocks = mitchell_matmul(a[:, 0], b[0], backend="torch")  # k blocks of 1
    assert same_bits(k_blocks, mitchell_matmul(a[:, 0], b[0], backend="numba"))
    assert whole.shape == (7, 3, 5)


def naive_matmul(a: torch.Tensor, w: torch.Tensor, bias=None) -> np.ndarray:
    """out[m, n] = float32 sum over k in order of the scalar reference's products, + bias."""
    ab, wb = bits_of(a), bits_of(w)
    m_rows, k_len = a.shape
    out = np.zeros((m_rows, w.shape[0]), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, as IEEE says
        for m in range(m_rows):
            for n in range(w.shape[0]):
                acc = np.float32(0.0)
                for k in range(k_len):
                    p = from_bits(mitchell_scalar_bits(ab[m * k_len + k], wb[n * k_len + k]))
                    acc = np.float32(acc + np.float32(p))
                if bias is not None:
                    acc = np.float32(acc + np.float32(bias[n].item()))
                out[m, n] = acc
    return out


def same_bits(a, b) -> bool:
    a = torch.as_tensor(a).contiguous().view(torch.int32)
    b = torch.as_tensor(b).contiguous().view(torch.int32)
    return a.shape == b.shape and torch.equal(a, b)


def test_matmul_backends_equal_the_naive_reference_with_specials():
    torch.manual_seed(1)
    a = torch.randn(5, 9)
    w = torch.randn(4, 9) * 3
    a[0, 0], a[1, 2], a[2, :] = 0.0, -0.0, torch.relu(a[2])
    a[3, 4] = 1e-40  # subnormal
    w[1, 3] = float("inf")  # makes row 0's zero a NaN, others inf
    w[2, 5] = float("nan")
    a[4, 1] = 1e30  # overflow with large w
    w[3, 1] = 1e30
    bias = torch.randn(4)
    ref = naive_matmul(a, w, bias)
    for backend in ("numba", "torch"):
        assert same_bits(mitchell_matmul(a, w, bias, backend=backend), torch.from_numpy(ref))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(0, 6),
    st.integers(1, 3),
    st.lists(any_float, min_size=48, max_size=48),
)
def test_matmul_equals_naive_on_hypothesis_values(m, k, n, values):
    pool = torch.tensor(values, dtype=torch.float32)
    a = pool[: m * k].reshape(m, k) if k else torch.zeros(m, 0)
    w = pool[24 : 24 + n * k].reshape(n, k) if k else torch.zeros(n, 0)
    ref = torch.from_numpy(naive_matmul(a, w))
    assert same_bits(mitchell_matmul(a, w, backend="numba"), ref)
    assert same_bits(mitchell_matmul(a, w, backend="torch"), ref)


def test_linear_equals_naive_and_keeps_leading_dims():
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 3, 6), torch.randn(5, 6), torch.randn(5)
    out = logmul_linear(x, w, b)
    ref = naive_matmul(x.reshape(6, 6), w, b).reshape(2, 3, 5)
    assert same_bits(out, torch.from_numpy(ref))
    rel = ((out - F.linear(x, w, b)).abs() / F.linear(x, w, b).abs().clamp_min(1)).max()
    assert 0 < rel < 0.5


def naive_conv2d(x, w, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """Loops over every output, summing over (in_channel, kh, kw) in order with the scalar
    reference's products and float32 adds; zero padding."""
    b, _, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((b, oc, oh, ow), np.float32)
    ocg = oc // groups
    for n in range(b):
        for o in range(oc):
            g = o // ocg
            for i in range(oh):
                for j in range(ow):
                    acc = np.float32(0.0)
                    for ci in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                xv = xp[n, g * cg + ci, i * stride[0] + u * dilation[0]]
                                xv = xv[j * stride[1] + v * dilation[1]].item()
                                p = mitchell_scalar(xv, w[o, ci, u, v].item())
                                acc = np.float32(acc + np.float32(p))
                    if bias is not None:
                        acc = np.float32(acc + np.float32(bias[o].item()))
                    out[n, o, i, j] = acc
    return torch.from_numpy(out)


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, with_bias",
    [((1, 1), (1, 1), (1, 1), 1, False), ((2, 1), (0, 2), (1, 2), 2, True)],
)
def test_conv2d_equals_naive_loops(stride, padding, dilation, groups, with_bias, monkeypatch):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 6, 7)
    w = torch.randn(6, 4 // groups, 3, 2)
    bias = torch.randn(6) if with_bias else None
    ref = naive_conv2d(x, w, bias, stride, padding, dilation, groups)
    out = logmul_conv2d(x, w, bias, stride, padding, dilation, groups)
    assert same_bits(out, ref)
    monkeypatch.setattr(lm, "_CHUNK_BYTES", 1)  # one image per chunk: same bits
    assert same_bits(logmul_conv2d(x, w, bias, stride, padding, dilation, groups), ref)
    exact = F.conv2d(x, w, bias, stride, padding, dilation, groups)
    assert out.shape == exact.shape


def test_conv2d_same_padding_and_unbatched():
    torch.manual_seed(4)
    x, w = torch.randn(3, 5, 5), torch.randn(2, 3, 3, 3)
    same = logmul_conv2d(x, w, padding="same")
    assert same.shape == (2, 5, 5)
    assert same_bits(same, logmul_conv2d(x.unsqueeze(0), w, padding=1)[0])


def test_non_float32_is_a_user_error():
    with pytest.raises(UserError, match="float32"):
        logmul_linear(torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3))
    with pytest.raises(UserError, match="backward"):
        logmul_linear(torch.randn(2, 3), torch.randn(4, 3), backward="exact")


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def test_linear_gradients_ste_and_mitchell():
    torch.manual_seed(5)
    x = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    g = torch.randn(6, 3)
    logmul_linear(x, w, b, backward="ste").backward(g)
    ste = (x.grad.clone(), w.grad.clone(), b.grad.clone())
    x.grad = w.grad = b.grad = None
    F.linear(x, w, b).backward(g)
    for got, want in zip(ste, (x.grad, w.grad, b.grad), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    x.grad = w.grad = b.grad = None
    logmul_linear(x, w, b, backward="mitchell").backward(g)
    assert same_bits(x.grad, torch.from_numpy(naive_matmul(g, w.detach().t().contiguous())))
    assert same_bits(w.grad, torch.from_numpy(naive_matmul(g.t(), x.detach().t())))
    assert torch.allclose(b.grad, g.sum(0))


def test_conv2d_gradients_ste_and_mitchell(monkeypatch):
    torch.manual_seed(6)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    args = ((1, 1), (1, 1), (1, 1), 2)
    g = torch.randn(2, 6, 5, 5)
    F.conv2d(x, w, None, *args).backward(g)
    exact = (x.grad.clone(), w.grad.clone())
    x.grad = w.grad = None
    logmul_conv2d(x, w, None, *args, backward="ste").backward(g)
    assert torch.allclose(x.grad, exact[0], atol=1e-5)
    assert torch.allclose(w.grad, exact[1], atol=1e-5)
    x.grad = w.grad = None
    logmul_conv2d(x, w, None, *args, backward="mitchell").backward(g)
    mitchell = (x.grad.clone(), w.grad.clone())
    for got, want in zip(mitchell, exact, strict=True):  # approximate, never wild
        assert not torch.equal(got, want)
        assert (got - want).norm() < 0.15 * want.norm()
    # weight gradient: grad rows x unfolded columns, summed over the batch in order
    cols = F.unfold(x.detach(), (3, 3), padding=1)  # (2, 36, 25)
    for grp in range(2):
        rows = cols[:, grp * 18 : (grp + 1) * 18].transpose(1, 2).reshape(-1, 18)
        g_rows = g[:, grp * 3 : (grp + 1) * 3].reshape(2, 3, 25).transpose(1, 2).reshape(-1, 3)
        want = naive_matmul(g_rows.t().contiguous(), rows.t().contiguous())
        assert same_bits(mitchell[1][grp * 3 : (grp + 1) * 3].reshape(3, 18), want)
    x.grad = w.grad = None
    monkeypatch.setattr(lm, "_CHUNK_BYTES", 1)  # batch chunks continue one accumulator
    logmul_conv2d(x, w, None, *args, backward="mitchell").backward(g)
    assert same_bits(x.grad, mitchell[0]) and same_bits(w.grad, mitchell[1])


# ---------------------------------------------------------------------------------------------
# the operator seam
# ---------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect", bias=True)
        self.fc1 = nn.Linear(3 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _hidden_net():
    torch.manual_seed(7)
    return hiddenite.supermask_(Net(), SupermaskConfig(density=0.5, seed=3))


def test_registry_declares_datapaths():
    assert set(OPERATORS) == {"exact", "mitchell", "mitchell-bwd"}
    assert get_operator("exact").datapath == "exact"
    assert get_operator("mitchell").datapath == get_operator("mitchell-bwd").datapath == "log"
    with pytest.raises(UserError, match="unknown operator"):
        get_operator("mitchel")


@pytest.mark.parametrize("build", [lambda: (torch.manual_seed(7), Net())[1], _hidden_net])
def test_phase_switch_changes_the_path(build):
    model = build()
    x = torch.randn(5, 1, 4, 4)
    model.eval()
    exact_out = model(x)
    with use_operator(model, "mitchell", phase="inference") as handle:
        assert handle.layers == ["conv", "fc1", "fc2"]
        eval_out = model(x)
        model.train()
        train_out = model(x)  # training still exact
        assert operator_for(model.fc1).name == "exact"
        model.eval()
        assert operator_for(model.fc1).name == "mitchell"
    assert same_bits(train_out, exact_out)
    assert not torch.allclose(eval_out, exact_out, atol=1e-6)
    # the mitchell output equals the functional path layer by layer
    conv = model.conv
    w = conv.effective_weight() if hasattr(conv, "effective_weight") else conv.weight
    h = logmul_conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, conv.bias)
    for fc in (model.fc1, model.fc2):
        fw = fc.effective_weight() if hasattr(fc, "effective_weight") else fc.weight
        h = logmul_linear(torch.relu(h).flatten(1), fw, fc.bias)
    assert same_bits(eval_out, h)
    # restored: exact again, nothing left on the modules
    assert same_bits(model(x), exact_out)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert operator_choice(model.fc1).inference == "exact"


def test_training_phase_and_layer_selection():
    model = _hidden_net().train()
    x = torch.randn(5, 1, 4, 4)
    before = model(x)
    handle = use_operator(model, "mitchell-bwd", phase="training", layers=["fc1"])
    assert handle.layers == ["fc1"]
    assert operator_for(model.fc1).name == "mitchell-bwd"
    assert operator_for(model.fc2).name == "exact"
    out = model(x)
    assert not torch.allclose(out, before)
    out.sum().backward()  # gradients flow through the method's straight-through estimator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fc1.parameters())
    model.eval()
    assert operator_for(model.fc1).name == "exact"
    handle.restore()
    use_operator(model, "mitchell", layers=lambda name, m: isinstance(m, nn.Linear))
    assert [operator_for(m).name for m in (model.conv, model.fc1, model.fc2)] == [
        "exact",
        "mitchell",
        "mitchell",
    ]


def test_state_dict_unchanged_and_model_file_declares_operators(tmp_path):
    model = _hidden_net().eval()
    keys = list(model.state_dict())
    use_operator(model, "mitchell")
    assert list(model.state_dict()) == keys
    x = torch.randn(3, 1, 4, 4)
    save(model, tmp_path / "m.hnn")
    loaded = load(tmp_path / "m.hnn", model=_hidden_net()).eval()
    assert operator_for(loaded.fc1).name == "mitchell"  # declared per layer in the file
    assert same_bits(loaded(x), model(x))
    use_operator(model, "exact")
    save(model, tmp_path / "e.hnn")  # nothing to declare: loads as exact everywhere
    loaded = load(tmp_path / "e.hnn", model=_hidden_net()).eval()
    assert {operator_for(m).name for m in (loaded.conv, loaded.fc1, loaded.fc2)} == {"exact"}


def test_operator_errors():
    model = Net()
    with pytest.raises(UserError, match="phase"):
        use_operator(model, "mitchell", phase="eval")
    with pytest.raises(UserError, match="no layer named 'fc9'"):
        use_operator(model, "mitchell", layers=["fc9"])
    with pytest.raises(UserError, match="not a Linear or Conv2d"):
        use_operator(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), "mitchell", layers=["0"])

    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(UserError, match="own forward"):
        use_operator(nn.Sequential(Custom(2, 2)), "mitchell")


# ---------------------------------------------------------------------------------------------
# the hardware model reads the operator's datapath
# ---------------------------------------------------------------------------------------------
def test_energy_entry_and_mac_cost():
    raw = hw_spec.EnergyTable.horowitz_45nm()  # the derivation: a b-bit add, Horowitz 45 nm
    assert raw.log_mult(32) == pytest.approx(0.1) and raw.log_mult(8) == pytest.approx(0.03)
    table = hw_spec.EnergyTable()  # calibrated: scaled like every other dynamic energy
    for bits in (8, 16, 32):
        assert table.log_mult(bits) == pytest.approx(table.add(bits))
        assert table.log_mult(bits) / raw.log_mult(bits) == pytest.approx(40 / 45)
    assert table.log_mult(8) < table.mult(8)
    assert "log_mult_pj" in table.to_dict()
    assert table.replace(log_mult_pj={8: 0.05}).log_mult(8) == pytest.approx(0.05)
    dense = {"kind": "linear", "in_channels": 64, "out_channels": 32, "weight_source": "stored"}
    dense |= {"weight_bits": 8, "op": "mac"}
    exact = estimate_layer(dense, "hiddenite")
    log = estimate_layer({**dense, "datapath": "log"}, "hiddenite")
    spec = hw_spec.get_preset("hiddenite")
    e = spec.energy
    assert exact.energy_compute_pj == pytest.approx(exact.pe_ops * (e.mac(8, 24)))
    assert log.energy_compute_pj == pytest.approx(log.pe_ops * (e.log_mult(8) + e.add(24)))
    assert log.datapath == "log" and exact.datapath == "exact"
    # a hidden layer's PEs only add: no multiplier, nothing changes
    hidden = {"kind": "linear", "in_channels": 64, "out_channels": 32}
    assert (
        estimate_layer({**hidden, "datapath": "log"}, "hiddenite").energy_pj
        == estimate_layer(hidden, "hiddenite").energy_pj
    )
    # the int8 baseline's MACs follow the layer's operator too
    int8_log = estimate_layer({**hidden, "datapath": "log"}, "int8")
    int8 = estimate_layer(hidden, "int8")
    assert int8_log.energy_compute_pj < int8.energy_compute_pj
    with pytest.raises(UserError, match="datapath"):
        estimate_layer({**hidden, "datapath": "mitchell"}, "hiddenite")


def test_workloads_carry_the_inference_operator():
    model = Net()
    use_operator(model, "mitchell", phase="inference", layers=["fc1"])
    use_operator(model, "mitchell", phase="training", layers=["fc2"])
    model.train()
    work = workloads_from_module(model, (1, 1, 4, 4))
    assert [w.datapath for w in work] == ["exact", "log", "exact"]
    assert model.training  # the trace put the mode back
    report = simulate(model, "int8", input_shape=(1, 1, 4, 4))
    assert [r.datapath for r in report.rows] == ["exact", "log", "exact"]


_TRITON_CHECK = """
import numpy as np, torch
from hiddenite.ops.logmul import logmul_linear, mitchell_matmul
torch.manual_seed(0)
vals = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x7F800000, 0xFF800000, 0x7FC00000,
                 0x7F800001, 0x3F800000, 0x7F7FFFFF, 0x3FC00000, 0xBFC00000, 0x1F000000],
                dtype=np.uint32).view(np.int32)
a = torch.from_numpy(vals.copy()).view(torch.float32).reshape(-1, 1)
cases = [(a, a), (torch.randn(5, 7), torch.randn(3, 7)), (torch.randn(33, 9), torch.randn(40, 9))]
for x, w in cases:
    got = mitchell_matmul(x, w, backend="triton").view(torch.int32)
    assert torch.equal(got, mitchell_matmul(x, w, backend="numba").view(torch.int32)), x.shape
print("triton ok")
"""


def test_triton_kernel_equals_numba_under_the_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "triton ok" in done.stdout
