"""Tests for hiddenite.masks: exact top-k selection, straight-through gradient, global scope.

Reference: a full sort (``torch.sort``) of |scores|, keeping the first ``m``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiddenite import masks
from hiddenite.masks import (
    GlobalThreshold,
    kept_count,
    masked_weight,
    straight_through,
    threshold_for_top,
    top_fraction_mask,
)

SMALL = 1 << 15  # the size up to which threshold_for_top runs kthvalue directly
DENSITIES = [0.0, 1e-5, 0.1, 0.3, 0.5, 0.9, 1.0]
SIZES = [1, 2, 7, 100, 1000, SMALL - 1, SMALL, SMALL + 1, 40000, 100003]


def sort_reference_mask(scores: torch.Tensor, m: int) -> torch.Tensor:
    flat = scores.reshape(-1).abs()
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:m]] = True
    return mask.reshape(scores.shape)


def mth_largest(values: torch.Tensor, m: int) -> torch.Tensor:
    return torch.sort(values, descending=True).values[m - 1]


def untied(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a random permutation of distinct magnitudes with random signs: no ties in |scores|
    mags = (torch.randperm(n, generator=g).double() + 1.0) / n
    signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    return (mags * signs).float() if n < (1 << 24) else mags * signs


# --------------------------------------------------------------------------- kept_count


def test_kept_count_formula():
    for n in [0, 1, 2, 3, 10, 99, 1000, 12345, 10**6]:
        for k in [0.0, 1e-7, 0.05, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.75, 0.9, 0.999, 1.0]:
            assert kept_count(n, k) == math.floor(k * n + 0.5)
    assert kept_count(10, 0.25) == 3  # 2.5 rounds half up
    assert kept_count(10, 0.24) == 2
    assert kept_count(3, 0.5) == 2
    assert kept_count(1, 0.5) == 1
    assert kept_count(1, 0.49) == 0
    assert kept_count(100, 1.0) == 100
    assert kept_count(100, 0.0) == 0


@pytest.mark.parametrize("density", [-0.1, 1.0001, 2.0, float("nan")])
def test_kept_count_rejects_bad_density(density):
    with pytest.raises(ValueError):
        kept_count(10, density)


# --------------------------------------------------------------------------- top_fraction_mask


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("density", DENSITIES)
def test_top_fraction_mask_equals_full_sort(n, density):
    scores = untied(n, seed=n)
    m = kept_count(n, density)
    mask = top_fraction_mask(scores, density)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int(mask.sum()) == m
    assert torch.equal(mask, sort_reference_mask(scores, m))


def test_top_fraction_mask_keeps_shape_and_uses_magnitude():
    scores = torch.tensor([[-5.0, 1.0, 0.5], [4.0, -0.1, 3.0]])
    mask = top_fraction_mask(scores, 0.5)
    assert torch.equal(mask, torch.tensor([[True, False, False], [True, False, True]]))
    scores4 = untied(2 * 3 * 5 * 5, 1).reshape(2, 3, 5, 5)
    m = kept_count(150, 0.3)
    assert torch.equal(top_fraction_mask(scores4, 0.3), sort_reference_mask(scores4, m))


def test_top_fraction_mask_does_not_modify_scores_and_ignores_grad():
    scores = torch.randn(50000, requires_grad=True)
    before = scores.detach().clone()
    mask = top_fraction_mask(scores, 0.3)
    assert not mask.requires_grad
    assert torch.equal(scores.detach(), before)


@pytest.mark.parametrize("n", [10, 1000, 40000, 100001])
@pytest.mark.parametrize("density", [1e-4, 0.1, 0.3, 0.5, 0.7, 0.99])
def test_heavy_ties_count_is_exact(n, density):
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(-1, 2, (n,), generator=g).float()  # values in {-1, 0, 1}
    mask = top_fraction_mask(scores, density)
    m = kept_count(n, density)
    assert int(mask.sum()) == m
    # everything kept is at least as large as everything dropped
    if 0 < m < n:
        assert scores.abs()[mask].min() >= scores.abs()[~mask].max()


def test_all_equal_scores():
    for n in (100, 50000):
        scores = torch.full((n,), 0.25)
        for density in (0.1, 0.5, 0.9):
            assert int(top_fraction_mask(scores, density).sum()) == kept_count(n, density)


def test_float64_and_float16_scores():
    for dtype in (torch.float64, torch.float16):
        scores = untied(1000, 3).to(dtype)
        assert torch.equal(top_fraction_mask(scores, 0.3), sort_reference_mask(scores, 300))


# --------------------------------------------------------------------------- threshold_for_top


def adversarial_cases():
    g = torch.Generator().manual_seed(1234)
    n = SMALL + 5
    cases = {}
    base = torch.zeros(n)
    base[torch.randperm(n, generator=g)[:7]] = torch.arange(1.0, 8.0)
    cases["all equal except a few"] = base
    cases["heavy tailed (cauchy)"] = torch.empty(100000).cauchy_(generator=g).abs()
    cases["lognormal wide"] = torch.exp(torch.randn(70000, generator=g, dtype=torch.float64) * 20)
    cases["sorted"] = torch.arange(60000, dtype=torch.float32)
    cases["reverse sorted"] = torch.arange(60000, 0, -1, dtype=torch.float32)
    # many duplicates near the threshold: a block of 5000 equal values around the median
    dup = torch.rand(80000, generator=g)
    dup[torch.randperm(80000, generator=g)[:5000]] = 0.5
    cases["duplicates near threshold"] = dup
    cases["two values"] = (torch.rand(50000, generator=g) < 0.3).float()
    cases["just above 32768"] = torch.rand(SMALL + 1, generator=g)
    cases["just above 32768 (sorted)"] = torch.arange(SMALL + 2, dtype=torch.float32)
    # a strided pattern aligned with the sampler: 2654435761 % n structure
    cases["periodic"] = (torch.arange(65536) % 17).float()
    cases["clustered extremes"] = torch.cat(
        [torch.full((40000,), 1e-30), torch.full((40,), 1e30), torch.rand(100, generator=g)]
    )
    return cases


ADVERSARIAL = adversarial_cases()


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_threshold_for_top_equals_full_sort_on_adversarial_inputs(name):
    values = ADVERSARIAL[name]
    n = values.numel()
    ms = sorted({1, 2, 7, n // 1000 + 1, n // 10, n * 3 // 10, n // 2, n - 7, n - 1, n} - {0})
    srt = torch.sort(values, descending=True).values
    for m in ms:
        t = threshold_for_top(values, m)
        assert t.dim() == 0
        assert t.item() == srt[m - 1].item(), (name, m)


def test_threshold_for_top_rejects_bad_m():
    v = torch.rand(10)
    for m in (0, 11, -1):
        with pytest.raises(ValueError):
            threshold_for_top(v, m)


def test_threshold_bracket_miss_falls_back(monkeypatch):
    # a tiny bracket forces the fallback to a full kthvalue; the answer must stay exact
    monkeypatch.setattr(masks, "_BRACKET_SIGMAS", 0.0)
    values = torch.rand(100000, generator=torch.Generator().manual_seed(5))
    srt = torch.sort(values, descending=True).values
    for m in (1, 3, 100, 30000, 50000, 99999, 100000):
        assert threshold_for_top(values, m).item() == srt[m - 1].item()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 70000),
    density=st.floats(0.0, 1.0),
    levels=st.integers(1, 100000),
    seed=st.integers(0, 2**31),
)
def test_property_mask_count_and_order(n, density, levels, seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randint(-levels, levels + 1, (n,), generator=g).float()) / levels
    mask = top_fraction_mask(scores, density)
    m = kept_count(n, density)
    assert int(mask.sum()) == m
    a = scores.abs()
    if 0 < m < n:
        t = mth_largest(a, m)
        assert threshold_for_top(a, m).item() == t.item()
        assert (a[mask] >= t).all() and (a[~mask] <= t).all()
        assert bool((a > t)[~mask].any()) is False


@settings(max_examples=20, deadline=None)
@given(n=st.integers(SMALL + 1, 120000), m_frac=st.floats(0.0, 1.0), seed=st.integers(0, 999))
def test_property_threshold_large_path(n, m_frac, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=g).abs()
    m = min(n, max(1, round(m_frac * n)))
    assert threshold_for_top(values, m).item() == mth_largest(values, m).item()


# --------------------------------------------------------------------------- straight-through


def test_straight_through_forward_and_gradient():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 30, generator=g, requires_grad=True)
    w = torch.randn(40, 30, generator=g)
    mask = top_fraction_mask(scores, 0.3)
    out = straight_through(scores, mask)
    assert out.dtype == scores.dtype
    assert torch.equal(out, mask.float())
    (w * out).sum().backward()
    assert torch.equal(scores.grad, w)  # the gradient passes through the mask unchanged


def test_straight_through_in_a_masked_linear():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(8, 5, generator=g, requires_grad=True)
    weight = torch.randn(8, 5, generator=g)
    x = torch.randn(3, 5, generator=g)
    mask = top_fraction_mask(scores, 0.5)
    y = torch.nn.functional.linear(x, weight * straight_through(scores, mask))
    upstream = torch.randn(3, 8, generator=g)
    y.backward(upstream)
    # d y / d (effective weight) = upstream^T x, then times weight (d eff / d ste = weight)
    expected = (upstream.t() @ x) * weight
    assert torch.allclose(scores.grad, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, torch.nn.functional.linear(x, weight * mask.float()))


def test_straight_through_double_dtype():
    scores = torch.randn(10, dtype=torch.float64, requires_grad=True)
    out = straight_through(scores, top_fraction_mask(scores, 0.5))
    assert out.dtype == torch.float64
    out.sum().backward()
    assert torch.equal(scores.grad, torch.ones(10, dtype=torch.float64))


# --------------------------------------------------------------------------- GlobalThreshold


class _Holder:
    def __init__(self, scores: torch.Tensor) -> None:
        self.scores = scores


def test_global_threshold_keeps_kept_count_over_all_layers():
    all_scores = untied(100 + 5000 + 40000, 9)
    parts = torch.split(all_scores, [100, 5000, 40000])
    layers = [_Holder(p.clone().reshape(-1, 50)) for p in parts]
    for density in (0.01, 0.3, 0.5, 0.77):
        group = GlobalThreshold(density)
        for layer in layers:
            group.register(layer)
        t = group.threshold()
        kept = sum(int((layer.scores.abs() >= t).sum()) for layer in layers)
        m = kept_count(all_scores.numel(), density)
        assert kept == m
        assert t.item() == mth_largest(all_scores.abs(), m).item()
        assert group.layers == layers


def test_global_threshold_lets_layers_keep_different_fractions():
    small = _Holder(untied(1000, 1) * 0.01)
    large = _Holder(untied(3000, 2) * 100.0)
    group = GlobalThreshold(0.5)  # keeps 2000 of 4000: all from the large-score layer
    group.register(small)
    group.register(large)
    t = group.threshold()
    assert int((small.scores.abs() >= t).sum()) == 0
    assert int((large.scores.abs() >= t).sum()) == 2000


def test_global_threshold_all_and_nothing():
    layers = [_Holder(torch.randn(10)), _Holder(torch.randn(20))]
    full = GlobalThreshold(1.0)
    for layer in layers:
        full.register(layer)
    assert full.threshold() is None
    none = GlobalThreshold(0.001)  # kept_count(30, 0.001) == 0
    for layer in layers:
        none.register(layer)
    t = none.threshold()
    assert t is not None and sum(int((layer.scores.abs() >= t).sum()) for layer in layers) == 0


def test_global_threshold_recomputes_only_when_scores_change(monkeypatch):
    calls = []
    real = masks.threshold_for_top

    def counting(values, m):
        calls.append(m)
        return real(values, m)

    monkeypatch.setattr(masks, "threshold_for_top", counting)
    layers = [_Holder(torch.randn(300)), _Holder(torch.randn(700))]
    group = GlobalThreshold(0.3)
    for layer in layers:
        group.register(layer)
    t1 = group.threshold()
    t2 = group.threshold()
    t3 = group.threshold()
    assert len(calls) == 1
    assert t1 is t2 is t3
    with torch.no_grad():
        layers[1].scores.mul_(10.0)  # in place: version counter moves
    t4 = group.threshold()
    assert len(calls) == 2
    assert t4.item() == mth_largest(torch.cat([layers[0].scores, layers[1].scores]).abs(), 300)
    layers[0].scores = torch.randn(300) * 100  # a new tensor
    group.threshold()
    assert len(calls) == 3
    group.threshold()
    assert len(calls) == 3


def test_global_threshold_validates_density():
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError):
            GlobalThreshold(bad)


def test_global_threshold_count_exact_with_ties():
    g = torch.Generator().manual_seed(3)
    layers = [_Holder(torch.randint(-1, 2, (n,), generator=g).float()) for n in (300, 700)]
    group = GlobalThreshold(0.3)
    for layer in layers:
        group.register(layer)
    masks_ = [group.layer_mask(layer) for layer in layers]
    assert sum(int(m.sum()) for m in masks_) == kept_count(1000, 0.3)
    # the ties at the threshold go to the earliest layer and lowest indices
    t = group.threshold()
    first = layers[0].scores.abs().reshape(-1)
    tied_first = torch.nonzero(first == t).reshape(-1)
    kept_tied_first = torch.nonzero(masks_[0].reshape(-1) & (first == t)).reshape(-1)
    assert torch.equal(kept_tied_first, tied_first[: len(kept_tied_first)])


def test_masked_weight_matches_straight_through_through_abs():
    """The fused node equals ``weight * straight_through(|scores|, mask)``, values and grads."""
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(40, 30, generator=g)
    scores_a = torch.randn(40, 30, generator=g, requires_grad=True)
    scores_b = scores_a.detach().clone().requires_grad_(True)
    mask = top_fraction_mask(scores_a, 0.3)
    upstream = torch.randn(40, 30, generator=g)
    fused = masked_weight(weight, scores_a, mask)
    reference = weight * straight_through(scores_b.abs(), mask)
    assert torch.equal(fused, reference)
    (fused * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert torch.allclose(scores_a.grad, scores_b.grad, rtol=0, atol=1e-6)
    assert torch.equal(scores_a.grad, upstream * weight * torch.sgn(scores_a.detach()))
