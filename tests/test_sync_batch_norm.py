"""Tests for hiddenite.sync_batch_norm (and the swap in hiddenite.distributed).

Reference: ``torch.nn.BatchNorm1d/2d`` in one process on the whole batch. One launch of
``tests/sync_bn_worker.py`` under ``torch.distributed.run`` (2 gloo CPU processes) runs every
case of its ``CASES`` with each rank holding half of the batch (the split training uses,
including a size-1 and an empty piece); the tests compare outputs, input gradients, summed
parameter gradients, running statistics and eval outputs with the reference.

Tolerance: the same mathematics with different float32 sums (two ranks' partial sums are
added by the all-reduce; torch's kernel sums in one loop and normalises as ``x * a + b``):
outputs and gradients within 2e-5 relative + 1e-5 absolute, running statistics within 1e-6
relative + 1e-6 absolute (measured 2026-12-03: at most 1.4e-6 on gradients of magnitude up to
15, 4.8e-7 on outputs and running statistics). The case whose values sit near 1000 with a
standard deviation of 3 is ill-conditioned for float32 itself (its inputs carry rounding of
6e-5, a 2e-5 shift after normalising): there the absolute tolerance grows by 1 + 1000 / 3
(measured: 1.4e-5 on outputs, 5.4e-4 on a weight gradient of 32, where the plain float32
batch norm is itself 1.5e-4 from float64), and the synced outputs must be as close to a
float64 batch norm as the plain float32 one is (two passes, not E[x^2] - E[x]^2). With one
rank (or no process group) the module IS the plain batch norm: bit for bit.
"""

from __future__ import annotations

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
from hiddenite.sync_batch_norm import SyncBatchNorm, global_moments, spans_ranks

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from sync_bn_worker import CASES, STEPS, case_tensors  # noqa: E402

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
