"""The compiled passes of the training step (hiddenite.kernels.topk_cpu) and the warm-started
selection that drives them (hiddenite.masks.TopKSelector).

References: numpy/torch expressions for each kernel, and for the selector the full top-k
selection ``top_fraction_mask`` with the torch masked product and score gradient it replaces,
compared bit for bit (signed zeros and tie-breaking included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiddenite.kernels import topk_cpu
from hiddenite.layers import SupermaskLinear
from hiddenite.masks import TopKSelector, _weight_factors, kept_count, top_fraction_mask


def torch_reference(weight, scores, density, upstream):
    """The previous implementation: full selection, torch product and gradient."""
    mask = top_fraction_mask(scores, density)
    product = weight * mask.view(torch.uint8)
    grad = upstream * weight
    grad.mul_(torch.sgn(scores))
    return mask, product, grad


def bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.int32)


def factors_of(w: np.ndarray, compact: bool):
    """The kernels' (weight, scale) arguments for ``w``: float32 and 1, or int8 signs and the
    one magnitude (``w`` is then made signed-constant, its magnitude 0.3)."""
    if not compact:
        return w, np.float32(1.0)
    return np.where(np.signbit(w), -1, 1).astype(np.int8), np.float32(0.3)


def weights(rng, n: int, compact: bool) -> np.ndarray:
    w = rng.standard_normal(n).astype(np.float32)
    return np.where(np.signbit(w), np.float32(-0.3), np.float32(0.3)) if compact else w


@pytest.mark.parametrize("compact", [False, True])
def test_bracket_product_counts_gathers_and_fix_band_finishes(compact):
    rng = np.random.default_rng(0)
    s = rng.standard_normal(5000).astype(np.float32)
    w = weights(rng, 5000, compact)
    f, scale = factors_of(w, compact)
    lo, hi = np.float32(0.9), np.float32(1.1)
    band = np.empty(5001, dtype=np.float32)
    where = np.empty(5001, dtype=np.int64)
    out = np.empty_like(w)
    above, inside = topk_cpu.bracket_product(f, scale, s, lo, hi, out, band, where)
    a = np.abs(s)
    members = (a >= lo) & (a <= hi)
    assert above == np.count_nonzero(a > hi)
    assert inside == np.count_nonzero(members)
    np.testing.assert_array_equal(band[:inside], a[members])
    np.testing.assert_array_equal(where[:inside], np.flatnonzero(members))
    np.testing.assert_array_equal(out[~members], (w * (a > hi))[~members])
    t = np.float32(1.0)
    topk_cpu.fix_band(f, scale, band, where, inside, t, 0, out)
    np.testing.assert_array_equal(out.view(np.int32), (w * (a > t)).view(np.int32))
    small = np.empty(4, dtype=np.float32)  # too small to gather: the counts stay exact
    assert topk_cpu.bracket_product(f, scale, s, lo, hi, out, small, where) == (above, inside)


@pytest.mark.parametrize(
    "at",
    [[3], [0, 127, 128], [3, 130, 131, 300, 301, 302, 999], list(range(896, 1000))],
)
def test_bracket_product_gathers_from_the_blocks_it_noted(at):
    """Band values in one block, at block edges, in several, and filling the last (partial)
    128-value block: gathered in index order, the product written everywhere else."""
    s = np.full(1000, 5.0, dtype=np.float32)
    s[at] = -np.linspace(0.95, 1.05, len(at), dtype=np.float32)
    w = np.arange(1000, dtype=np.float32)
    band = np.empty(len(at) + 1, dtype=np.float32)
    where = np.empty(len(at) + 1, dtype=np.int64)
    out = np.empty_like(w)
    above, inside = topk_cpu.bracket_product(
        w, np.float32(1.0), s, np.float32(0.9), np.float32(1.1), out, band, where
    )
    assert (above, inside) == (1000 - len(at), len(at))
    np.testing.assert_array_equal(where[:inside], at)
    np.testing.assert_array_equal(band[:inside], np.abs(s[at]))
    outside = np.ones(1000, dtype=bool)
    outside[at] = False
    np.testing.assert_array_equal(out[outside], w[outside])


@pytest.mark.parametrize("compact", [False, True])
def test_masked_product_and_score_gradient_match_torch_bitwise(compact):
    rng = np.random.default_rng(1)
    s = rng.standard_normal(1000).astype(np.float32)
    s[:5] = [0.0, -0.0, np.nan, 0.5, -0.5]
    w = weights(rng, 1000, compact)
    f, scale = factors_of(w, compact)
    g = rng.standard_normal(1000).astype(np.float32)
    g[5:8] = [0.0, -0.0, np.inf]
    t = np.float32(0.5)
    out = np.empty_like(w)
    topk_cpu.masked_product(f, scale, s, t, 1, False, out)  # two tie at 0.5: keep the first
    keep = (np.abs(s) > t) | ((np.abs(s) == t) & (np.arange(1000) == 3))
    want = torch.from_numpy(w) * torch.from_numpy(keep).view(torch.uint8)
    np.testing.assert_array_equal(out.view(np.int32), bits(want))
    topk_cpu.score_gradient(g, f, scale, s, out)
    ref = torch.from_numpy(g) * torch.from_numpy(w)
    ref.mul_(torch.sgn(torch.from_numpy(s)))
    np.testing.assert_array_equal(out.view(np.int32), bits(ref))


def naive_top(scores: np.ndarray, m: int) -> np.ndarray:
    """The top ``m`` of ``|scores|`` by a full stable sort: ties to the lowest index."""
    order = np.argsort(-np.abs(scores), kind="stable")
    keep = np.zeros(scores.size, dtype=bool)
    keep[order[:m]] = True
    return keep


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_select_product_hits_inside_the_bracket_and_misses_outside(compact, tied):
    rng = np.random.default_rng(2)
    n, m = 3000, 900
    s = rng.standard_normal(n).astype(np.float32)
    if tied:
        s = np.round(s * 4) / 4
    w = weights(rng, n, compact)
    f, scale = factors_of(w, compact)
    keep = naive_top(s, m)
    t = float(np.abs(s)[keep].min())
    band = np.empty(2001, dtype=np.float32)
    where = np.empty(2001, dtype=np.int64)
    out = np.full(n, np.nan, dtype=np.float32)
    state = np.array([t * 1.001, t * 0.01, 1.0])  # holds t: a hit
    assert topk_cpu.select_product(f, scale, s, m, state, band, where, out)
    np.testing.assert_array_equal(out.view(np.int32), (w * keep).view(np.int32))
    assert state[0] == np.float32(t) and state[2] == 1.0
    lo, hi = np.float32(t * 1.001 - t * 0.01), np.float32(t * 1.001 + t * 0.01)
    inside = np.count_nonzero((np.abs(s) >= lo) & (np.abs(s) <= hi))
    spacing = (float(hi) - float(lo)) / inside
    assert state[1] == max(2 * abs(t - t * 1.001), t * 2.0**-12, 4 * spacing)
    for missing in ([t * 2, t * 0.01, 1.0], [t, 0.0, 0.0]):  # away from t; or none known
        state = np.array(missing)
        assert not topk_cpu.select_product(f, scale, s, m, state, band, where, out)
        np.testing.assert_array_equal(state, missing)  # unchanged
    state = np.array([t, t * 0.5, 1.0])  # holds t, but more values than the band can take
    assert not topk_cpu.select_product(f, scale, s, m, state, band[:10], where, out)


scores_strategy = st.one_of(
    st.floats(-2.0, 2.0, width=32, allow_subnormal=False),
    st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0, -1.0]),  # ties
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 300),
    density=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31 - 1),
    tied=st.booleans(),
    steps=st.integers(1, 6),
    shift=st.sampled_from([0.0, 1e-6, 1e-3, 0.1, 1.0]),
    constant=st.booleans(),
    in_place=st.booleans(),
)
def test_selector_equals_full_selection_bit_for_bit(
    n, density, seed, tied, steps, shift, constant, in_place
):
    """Against the full selection, step after step: with weights of one magnitude (read as
    int8 signs) or not, and with the scores a new tensor each step or one leaf updated in
    place (as an optimizer does: the selector's cached views then serve every step)."""
    gen = torch.Generator().manual_seed(seed)
    if tied:  # a few distinct values: ties at the threshold almost surely
        values = torch.tensor([0.0, -0.0, 0.25, -0.25, 0.5, 1.0, -1.0])
        scores = values[torch.randint(0, 7, (n,), generator=gen)]
    else:
        scores = torch.randn(n, generator=gen)
    weight = torch.randn(n, generator=gen)  # negative weights: masked to -0.0
    if constant:
        weight = torch.where(weight < 0, -0.125, 0.125)
    upstream = torch.randn(n, generator=gen)
    selector = TopKSelector()
    leaf = scores.clone().requires_grad_(True)
    for _ in range(steps):
        if in_place:
            with torch.no_grad():
                leaf.copy_(scores)
            leaf.grad = None
        else:
            leaf = scores.clone().requires_grad_(True)
        product = selector.masked_weight(weight, leaf, density)
        product.backward(upstream)
        mask, want_product, want_grad = torch_reference(weight, scores, density, upstream)
        assert int(mask.sum()) == kept_count(n, density)
        np.testing.assert_array_equal(bits(product), bits(want_product))
        np.testing.assert_array_equal(bits(leaf.grad), bits(want_grad))
        # the next step's scores: small moves keep the bracket, large ones miss it
        scores = scores + shift * torch.randn(n, generator=gen)
        if tied:
            scores = torch.round(scores * 4) / 4
    compiled = 0 < kept_count(n, density) < n  # keeping none or all needs no selection
    assert selector.hits + selector.misses == (steps if compiled else 0)


def test_selector_uses_the_bracket_when_scores_move_a_little():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(300, 784, generator=gen)
    weight = torch.randn(300, 784, generator=gen)
    selector = TopKSelector()
    for _ in range(5):
        want = weight * top_fraction_mask(scores, 0.3).view(torch.uint8)
        got = selector.masked_weight(weight, scores.requires_grad_(True), 0.3)
        assert torch.equal(got, want)
        scores = (scores + 1e-3 * torch.randn(300, 784, generator=gen)).detach()
    assert selector.misses == 1 and selector.hits == 4


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_selector_keeps_none_or_all(density):
    weight, scores = torch.randn(10), torch.randn(10, requires_grad=True)
    got = TopKSelector().masked_weight(weight, scores, density)
    assert torch.equal(got, weight * top_fraction_mask(scores, density).view(torch.uint8))


def test_selector_on_float64_takes_the_full_selection():
    weight = torch.randn(50, dtype=torch.float64)
    scores = torch.randn(50, dtype=torch.float64, requires_grad=True)
    selector = TopKSelector()
    got = selector.masked_weight(weight, scores, 0.4)
    assert torch.equal(got, weight * top_fraction_mask(scores, 0.4).view(torch.uint8))
    assert selector.hits == selector.misses == 0  # the compiled path never ran


@pytest.mark.parametrize("init", ["signed-constant", "kaiming-normal"])
def test_edge_popup_layer_trains_identically_to_the_full_selection(init):
    layer = SupermaskLinear(40, 30, density=0.3, seed=2, layer_index=0, init=init)
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    scores = layer.scores.detach().clone()
    for _ in range(4):
        layer.scores.grad = None
        layer(x).square().sum().backward()
        mask = top_fraction_mask(scores, 0.3)
        effective = (layer.weight * mask.view(torch.uint8)).requires_grad_(True)
        (x @ effective.T).square().sum().backward()
        _, _, want = torch_reference(layer.weight, scores, 0.3, effective.grad)
        assert torch.equal(layer.scores.grad, want)
        with torch.no_grad():
            layer.scores -= 0.5 * layer.scores.grad
            scores -= 0.5 * want
    assert torch.equal(layer.scores, scores)
    assert layer.mask_selector.hits + layer.mask_selector.misses == 4


def test_weight_factors_give_every_weight_exactly():
    constant = np.array([0.25, -0.25, 0.25, -0.25], dtype=np.float32)
    factors, scale = _weight_factors(constant)
    assert factors.dtype == np.int8 and scale == np.float32(0.25)
    np.testing.assert_array_equal(factors * scale, constant)
    zeros = np.array([0.0, -0.0, 0.0], dtype=np.float32)  # signed zeros kept
    factors, scale = _weight_factors(zeros)
    np.testing.assert_array_equal((factors * scale).view(np.int32), zeros.view(np.int32))
    mixed = np.array([0.25, -0.5, 0.25], dtype=np.float32)
    factors, scale = _weight_factors(mixed)
    assert factors is mixed and scale == np.float32(1.0)


def reference_product(layer):
    mask = top_fraction_mask(layer.scores, layer.density)
    return layer.weight * mask.view(torch.uint8)


def test_selector_follows_weights_regenerated_or_written_in_place():
    """The cached plan (views, int8 signs) is rebuilt when the weights change: new
    weights from another seed (a new tensor), an in-place write, another init."""
    layer = SupermaskLinear(50, 20, density=0.3, seed=2, layer_index=0)
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    layer.seed = 9
    layer.regenerate_weights_()
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    with torch.no_grad():
        layer.weight[0, :7].neg_()
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 1.5, 50))  # magnitudes differ: float32 read
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    assert layer.mask_selector._plan.weight.dtype == np.float32


def test_selector_follows_scores_replaced_or_of_another_layout():
    layer = SupermaskLinear(30, 30, density=0.4, seed=3, layer_index=1)
    layer.effective_weight()
    layer.scores.data = torch.randn(30, 30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    layer.scores.data = layer.scores.data.t()  # same memory, transposed: not contiguous
    assert torch.equal(layer.effective_weight(), reference_product(layer))
    layer.scores.data = layer.scores.data.double()
    assert torch.equal(layer.effective_weight(), reference_product(layer).double())


def test_scores_written_between_forward_and_backward_are_caught():
    weight = torch.randn(200)
    scores = torch.randn(200, requires_grad=True)
    product = TopKSelector().masked_weight(weight, scores, 0.3)
    with torch.no_grad():
        scores.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.sum().backward()


def test_selector_gradient_with_create_graph_matches_torch():
    gen = torch.Generator().manual_seed(4)
    weight, scores = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    upstream = torch.randn(100, generator=gen, requires_grad=True)
    leaf = scores.clone().requires_grad_(True)
    product = TopKSelector().masked_weight(weight, leaf, 0.3)
    (grad,) = torch.autograd.grad(product, leaf, upstream, create_graph=True)
    _, _, want = torch_reference(weight, scores, 0.3, upstream.detach())
    assert torch.equal(grad.detach(), want)
    assert grad.requires_grad  # differentiable in the upstream gradient


def test_bracket_holds_the_threshold_of_a_small_layer_step_after_step():
    """A 1,000-weight layer trained by small steps: its threshold stays put for a step, then
    jumps a gap between values; the bracket's floor of a few value spacings keeps serving
    it (a bracket of 2**-12 of the threshold alone missed 31 of these 100 steps)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.where(torch.randn(1000, generator=gen) < 0, -0.1, 0.1)
    leaf = (torch.rand(1000, generator=gen) * 0.1).requires_grad_(True)
    selector = TopKSelector()
    for _ in range(100):
        want = weight * top_fraction_mask(leaf, 0.3).view(torch.uint8)
        product = selector.masked_weight(weight, leaf, 0.3)
        assert torch.equal(product, want)
        product.backward(torch.randn(1000, generator=gen))
        with torch.no_grad():
            leaf -= 0.001 * leaf.grad
        leaf.grad = None
    assert selector.misses <= 5


def test_selector_on_inference_tensors_reads_the_weights_themselves():
    """Tensors made under ``torch.inference_mode`` keep no version counter: the selector
    then views the weights (no int8 copy), so a write to them in place is still seen."""
    with torch.inference_mode():
        layer = SupermaskLinear(40, 20, density=0.3, seed=5, layer_index=0)
        assert torch.equal(layer.effective_weight(), reference_product(layer))
        assert layer.mask_selector._plan.weight.dtype == np.float32
        layer.weight[:3].neg_()
        assert torch.equal(layer.effective_weight(), reference_product(layer))
