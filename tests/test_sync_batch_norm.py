"""Tests for hiddenite.sync_batch_norm (and the swap in hiddenite.distributed).

Reference: ``torch.nn.BatchNorm1d/2d`` in one process on the whole batch. One launch of
``tests/sync_bn_worker.py`` under ``torch.distributed.run`` (2 gloo CPU processes) runs every
case of its ``CASES`` with each rank holding half of the batch (the split training uses,
including a size-1 and an empty piece); the tests compare outputs, input gradients, summed
parameter gradients, running statistics and eval outputs with the reference.

Tolerance: the same mathematics with different float32 sums (two ranks' partial moments are
merged after the all-gather; torch's kernel sums in one loop and normalises as ``x * a + b``):
outputs and gradients within 2e-5 relative + 1e-5 absolute, running statistics within 1e-6
relative + 1e-6 absolute (measured 2026-12-03 with the one-all-gather function: at most
1.4e-6 on gradients of magnitude up to 15, 4.8e-7 on outputs, 9.5e-7 on running
statistics). The case whose values sit near 1000 with a standard deviation of 3 is
ill-conditioned for float32 itself (its inputs carry rounding of 6e-5, a 2e-5 shift after
normalising): there the absolute tolerance grows by 1 + 1000 / 3 (measured: 1.4e-5 on
outputs, 1.5e-4 on a weight gradient of 32, which is the plain float32 batch norm's own
distance from float64), and the synced outputs, input and weight gradients must be closer
to a float64 batch norm than the plain float32 one is (two passes, not E[x^2] - E[x]^2, and
deviations from a local centre plus a small shift). The worker also counts the collectives:
one all-gather forward and one all-reduce backward per batch norm and step. With one rank
(or no process group) the module IS the plain batch norm: bit for bit; the autograd function
itself, called on a one-rank gloo group, is gradchecked in float64 and compared with
autograd through the written-out formula.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from hiddenite import distributed
from hiddenite.convert import SupermaskConfig
from hiddenite.layers import SupermaskLayer
from hiddenite.methods import method_config
from hiddenite.models import create
from hiddenite.sync_batch_norm import (
    SyncBatchNorm,
    _local_moments,
    _merge,
    global_moments,
    spans_ranks,
    sync_batch_norm,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from sync_bn_worker import CASES, STEPS, case_tensors, counting  # noqa: E402

RTOL, ATOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syncbn")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "sync_bn_worker.py"), str(folder)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder


def reference(name: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One process, plain batch norm, whole batch: the worker's quantities (in ``dtype``)."""
    xs, grads, bn = case_tensors(name)
    xs, grads, bn = [x.to(dtype) for x in xs], [g.to(dtype) for g in grads], bn.to(dtype)
    out = {}
    for step, (x, grad) in enumerate(zip(xs, grads, strict=True)):
        x = x.clone().requires_grad_(True)
        y = bn(x)
        (y * grad).sum().backward()
        out[f"y{step}"], out[f"dx{step}"] = y.detach(), x.grad
        for pname, p in bn.named_parameters():
            out[f"d{pname}{step}"], p.grad = p.grad, None
    out.update({k: b.clone() for k, b in bn.named_buffers()})
    bn.eval()
    out["eval"] = bn(xs[0]).detach()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_match_one_process_on_the_whole_batch(ranks, name):
    expected = reference(name)
    parts = [load_file(ranks / f"{name}-rank{r}") for r in (0, 1)]
    assert parts[0].keys() == expected.keys()
    sizes = [len(p["y0"]) for p in parts]
    assert sum(sizes) == len(expected["y0"])
    offset = CASES[name][4]
    atol = ATOL * (1 + offset / 3)  # inputs ~ offset + 3 N(0, 1): see the docstring
    for key, value in expected.items():
        if key.startswith(("y", "dx", "eval")):  # pieces, in rank order
            got = torch.cat([p[key] for p in parts])
            torch.testing.assert_close(got, value, rtol=RTOL, atol=atol, msg=key)
        elif key.startswith("d"):  # parameter gradients, summed over the ranks
            assert torch.equal(parts[0][key], parts[1][key])
            torch.testing.assert_close(parts[0][key], value, rtol=RTOL, atol=atol, msg=key)
        else:  # running statistics and the batch counter: identical on both ranks
            assert torch.equal(parts[0][key], parts[1][key]), key
            torch.testing.assert_close(parts[0][key], value, rtol=1e-6, atol=1e-6, msg=key)
    if offset:  # as accurate as one process: both against a float64 batch norm
        exact = reference(name, torch.float64)
        for key in [f"y{step}" for step in range(STEPS)]:
            synced = torch.cat([p[key] for p in parts]).double()
            error = float((synced - exact[key]).abs().max())
            plain = float((expected[key].double() - exact[key]).abs().max())
            assert error <= 1.5 * plain, (key, error, plain)
    if name == "bn2d-plain-cumulative":  # momentum None: the average of the STEPS batches
        assert expected["num_batches_tracked"].item() == STEPS
    if name == "bn1d-size-one-piece":  # the plain batch norm refuses rank 1's piece alone
        xs, _, bn = case_tensors(name)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            bn(xs[0][2:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_collective_forward_and_one_backward(ranks, name):
    # the whole cost in communication: one all-gather (count, mean, M2) forward, one
    # all-reduce (sums of dy and dy * xhat) backward; nothing in eval mode
    for rank in (0, 1):
        calls = json.loads((ranks / f"{name}-rank{rank}.json").read_text())
        assert calls == {
            "forward": [["all_gather"]] * STEPS,
            "backward": [["all_reduce"]] * STEPS,
            "eval": [[]],
        }, (rank, calls)


def test_ill_conditioned_case_beats_one_float32_process(ranks):
    # values near 1000 with a spread of 3: the synced batch norm holds the mean as a local
    # float32 centre plus a float64-exact shift, so its outputs and gradients are closer to
    # float64 than torch's float32 kernel on the whole batch (measured 2026-12-03: at least
    # 45x on outputs, 15x on input gradients, 36x on the weight gradient)
    name = "bn2d-offset"
    plain, exact = reference(name), reference(name, torch.float64)
    parts = [load_file(ranks / f"{name}-rank{r}") for r in (0, 1)]
    for step in range(STEPS):
        for key in (f"y{step}", f"dx{step}", f"dweight{step}"):
            if key.startswith("dweight"):
                synced = parts[0][key].double()
            else:
                synced = torch.cat([p[key] for p in parts]).double()
            error = float((synced - exact[key]).abs().max())
            float32 = float((plain[key].double() - exact[key]).abs().max())
            assert error * 4 <= float32, (key, error, float32)


def test_local_statistics_would_differ(ranks):
    # the comparison above can fail: one rank's own statistics are not the global ones
    xs, _, bn = case_tensors("bn2d-affine")
    half = bn(xs[0][:3]).detach()
    synced = load_file(ranks / "bn2d-affine-rank0")["y0"]
    assert (half - synced).abs().max() > 0.05


# --------------------------------------------------------------------------- one process


@pytest.mark.parametrize(
    ("kind", "shape", "affine", "momentum", "track"),
    [
        (nn.BatchNorm2d, (4, 3, 5, 5), True, 0.1, True),
        (nn.BatchNorm2d, (4, 3, 5, 5), False, None, True),
        (nn.BatchNorm1d, (6, 5), True, 0.2, True),
        (nn.BatchNorm1d, (6, 5, 3), False, 0.1, False),
    ],
)
def test_without_a_process_group_it_is_the_plain_batch_norm(kind, shape, affine, momentum, track):
    assert not spans_ranks()
    g = torch.Generator().manual_seed(1)
    plain = kind(shape[1], affine=affine, momentum=momentum, track_running_stats=track)
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5, generator=g)
            plain.bias.normal_(generator=g)
    twin = kind(shape[1], affine=affine, momentum=momentum, track_running_stats=track)
    twin.load_state_dict(plain.state_dict())
    sync = SyncBatchNorm.sharing(twin)
    for mode in ("train", "train", "eval"):
        plain.train(mode == "train")
        sync.train(mode == "train")
        x = torch.randn(shape, generator=g) * 2 + 1
        grad = torch.randn(shape, generator=g)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = plain(a), sync(b)
        assert torch.equal(ya, yb)
        (ya * grad).sum().backward()
        (yb * grad).sum().backward()
        assert torch.equal(a.grad, b.grad)
        for (name, p), q in zip(plain.named_parameters(), twin.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad), name
        for name, value in plain.state_dict().items():
            assert torch.equal(value, twin.state_dict()[name]), name


def test_one_rank_group_is_the_plain_batch_norm_and_moments_are_two_pass(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert not spans_ranks()
        bn = nn.BatchNorm2d(3)
        sync = SyncBatchNorm.sharing(nn.BatchNorm2d(3))
        x = torch.randn(4, 3, 2, 2)
        assert torch.equal(bn(x), sync(x))
        assert torch.equal(bn.running_var, sync.running_var)
        # the collective itself over one rank: two passes, accurate far from zero where
        # E[x^2] - E[x]^2 in float32 loses every digit (float64 reference)
        x = torch.randn(64, 2, 3, 3, generator=torch.Generator().manual_seed(0)) + 4096
        mean, var, count = global_moments(x, [0, 2, 3])
        var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
        assert count == 64 * 9
        torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
        torch.testing.assert_close(var.double(), var64, rtol=1e-3, atol=0)
        naive = (x * x).mean((0, 2, 3)) - x.mean((0, 2, 3)) ** 2
        assert (naive.double() - var64).abs().max() > 0.05  # what two passes avoid
        # the differentiable all-reduce passes gradients through
        x = torch.randn(5, 4, requires_grad=True)
        m, v, _ = global_moments(x, [0])
        (m.sum() + v.sum()).backward()
        x2 = x.detach().clone().requires_grad_(True)
        (x2.mean(0).sum() + x2.var(0, unbiased=False).sum()).backward()
        torch.testing.assert_close(x.grad, x2.grad)
    finally:
        dist.destroy_process_group()


def test_sharing_holds_the_same_tensors():
    bn = nn.BatchNorm2d(4)
    sync = SyncBatchNorm.sharing(bn)
    assert sync.weight is bn.weight and sync.bias is bn.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert getattr(sync, name) is getattr(bn, name)
    assert sync.state_dict().keys() == bn.state_dict().keys()
    plain = SyncBatchNorm.sharing(nn.BatchNorm1d(3, affine=False, track_running_stats=False))
    assert plain.weight is None and plain.running_mean is None and not plain.state_dict()
    with pytest.raises(ValueError, match="at least 2D"):
        sync(torch.zeros(4))


@pytest.mark.parametrize("name", ["conv2-bn", "resnet20"])
def test_swap_keeps_the_state_dict_and_restores_the_modules(name):
    kwargs = {"width": 0.25} if name == "resnet20" else {"width": 0.125}
    model = create(name, SupermaskConfig(density=0.5), **kwargs)
    before = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    originals = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert originals
    if name == "resnet20":
        assert any(not m.affine for m in originals)
    model.eval()
    synced = distributed.sync_batch_norms(model)
    assert synced.count == len(originals)
    swapped = [m for m in model.modules() if isinstance(m, SyncBatchNorm)]
    assert len(swapped) == len(originals)
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    assert not any(m.training for m in swapped)
    during = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    assert during == before  # same keys, same tensors
    model.train()
    synced.restore()
    after = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(after) == len(originals) and all(
        a is b for a, b in zip(after, originals, strict=True)
    )
    assert all(m.training for m in after)  # the mode set while swapped
    assert {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()} == before


def test_swap_synchronises_progressive_any_precision_layers():
    cfg = method_config("progressive", bits=4, train_bits=[2, 4])
    model = create("mlp", SupermaskConfig(method=cfg), image_size=8, hidden=(8,))
    layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    synced = distributed.sync_batch_norms(model)
    assert synced.count == len(layers) and all(m.pnn_sync for m in layers)
    synced.restore()
    assert not any(m.pnn_sync for m in layers)
    qat = create("mlp", SupermaskConfig(method=cfg.replace(train_bits=())), image_size=8)
    assert distributed.sync_batch_norms(qat).count == 0  # no batch statistics to take
    edge = create("mlp", SupermaskConfig(), image_size=8)
    assert distributed.sync_batch_norms(edge).count == 0


# ------------------------------------------- the autograd function on a one-rank group


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def formula(x, weight, bias, eps):
    """The batch norm written out for autograd (the reference's gradients)."""
    dims = [0, *range(2, x.dim())]
    shape = [1 if d in dims else s for d, s in enumerate(x.shape)]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(shape) + bias.reshape(shape)
    return y


@pytest.mark.parametrize(
    ("shape", "affine"), [((6, 3, 2, 2), True), ((5, 4), False), ((4, 3, 5), True)]
)
def test_function_gradcheck_on_one_rank(one_rank, shape, affine):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 7).requires_grad_(True)
    params = [
        (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_(True),
        torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_(True),
    ] if affine else [None, None]  # fmt: skip
    eps = 1e-3

    def synced(x, *p):
        return sync_batch_norm(x, *(p or (None, None)), eps)[0]

    inputs = (x, *params) if affine else (x,)
    assert torch.autograd.gradcheck(synced, inputs)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    with counting() as forward:
        y, mean, m2, count = sync_batch_norm(x, *params, eps)
    with counting() as backward:
        got = torch.autograd.grad((y * dy).sum(), inputs)
    assert forward == ["all_gather"] and backward == ["all_reduce"]
    want_y = formula(x, *params, eps)
    want = torch.autograd.grad((want_y * dy).sum(), inputs)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dims = [0, *range(2, x.dim())]
    var64, mean64 = torch.var_mean(x.detach(), dims, correction=0)
    assert count == x.numel() // shape[1] and mean.dtype == m2.dtype == torch.float64
    torch.testing.assert_close(mean, mean64, rtol=1e-14, atol=0)
    torch.testing.assert_close(m2 / count, var64, rtol=1e-12, atol=0)
    if affine:  # weight and bias gradients only: the rank's own sums, no collective
        with counting() as only_params:
            y = sync_batch_norm(x.detach(), *params, eps)[0]
            grads = torch.autograd.grad((y * dy).sum(), params)
        assert only_params == ["all_gather"]
        for a, b in zip(grads, want[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_function_keeps_a_low_precision_dtype_and_refuses_one_value(one_rank):
    x = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    y = sync_batch_norm(x, None, None, 1e-5)[0]
    assert y.dtype == torch.bfloat16  # computed in float32
    torch.testing.assert_close(y, formula(x.float(), None, None, 1e-5).to(torch.bfloat16))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        sync_batch_norm(torch.zeros(1, 3), None, None, 1e-5)


def test_chan_merge_of_uneven_pieces_matches_float64():
    # values near +1000 and -1000 with a spread of 0.05, in pieces of 5, 1, 0, 14 and 17
    # examples: the per-piece (count, mean, M2) merged in float64 give the whole batch's
    # mean and variance to float64 rounding of the float32 data's own statistics
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 3, 4, 4, generator=g) * 0.05 + 1000
    x[:, 1] -= 2000
    bounds = [0, 5, 6, 6, 20, 37]
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        count, mean, m2, centre, dev = _local_moments(x[lo:hi], [0, 2, 3])
        assert dev.shape == x[lo:hi].shape and centre.dtype == torch.float32
        rows.append(torch.cat([mean.new_full((1,), float(count)), mean, m2]))
    table = torch.stack(rows)
    assert table.dtype == torch.float64 and table[2].abs().max() == 0  # the empty piece
    total, mean, m2 = _merge(table)
    var64, mean64 = torch.var_mean(x.double(), (0, 2, 3), correction=0)
    assert float(total) == 37 * 16
    torch.testing.assert_close(mean, mean64, rtol=1e-12, atol=0)
    torch.testing.assert_close(m2 / total, var64, rtol=1e-6, atol=0)  # measured 4.9e-8
    # why float64: the same merge in float32 is off by 3.8e-5 relative (and the mean by
    # 8.9e-5), the rounding of the centres far from zero carried into the spread term
    total32, mean32, m2_32 = _merge(table.float())
    off = float(((m2_32.double() / float(total32) - var64) / var64).abs().max())
    assert off > 1e-5 and float((mean32.double() - mean64).abs().max()) > 1e-5
