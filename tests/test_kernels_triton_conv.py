"""The weight-free hidden convolution (hiddenite.kernels.triton_conv) and whole-model swap
(hiddenite.kernels.triton_model).

As in ``test_kernels_triton.py``, the kernels run under Triton's interpreter
(``TRITON_INTERPRET=1``) in ONE child process, which writes what they produced; this process
computes every reference independently: :func:`hiddenite.init.frozen_weights` times the
method's factor, ``F.conv2d``, and the original (unswapped) model's forward.

The regenerated weights must be bit-identical to ``frozen_weights`` (times the factor). The
outputs agree to float32 rounding only: the kernel adds the products in another order.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hiddenite.errors import UserError
from hiddenite.init import frozen_weights
from hiddenite.kernels.triton_conv import gemm_rows, hidden_conv2d, pack_conv2d
from hiddenite.kernels.triton_linear import PackedLinear, hidden_linear, pack_linear
from hiddenite.kernels.triton_model import (
    WeightFreeConv2d,
    WeightFreeLinear,
    weight_free_,
    weight_free_problem,
)
from hiddenite.layers import SupermaskConv2d, SupermaskLinear
from hiddenite.ops import use_operator

HAS_TRITON = importlib.util.find_spec("triton") is not None
SRC = Path(__file__).resolve().parents[1] / "src"

# (in, out, kernel, stride, padding, dilation, padding_mode, batch, (H, W), lanes, init,
#  method, bias, density, block_steps)
CASES = [
    # 1x1, odd channels, 7 lanes for 15 weights: the channels-last path
    (5, 3, 1, 1, 0, 1, "zeros", 3, (4, 3), 7, "kaiming-uniform", "edge-popup", True, 0.4, None),
    # 3x3 stride 2 padding 1, batch 1; 4 lanes: 34 steps over 5 programs (jumps), signs
    (3, 5, 3, 2, 1, 1, "zeros", 1, (5, 4), 4, "signed-constant", "signed", False, 0.4, 8),
    # 3x3 stride 2 padding 1, batch 3; frozen method, scaled by density
    (3, 2, 3, 2, 1, 1, "zeros", 3, (5, 5), 4096, "kaiming-uniform", "frozen", True, 0.3, None),
    # 1x1 stride 2, full density (no mask plane): the strided channels-last path
    (4, 3, 1, 2, 0, 1, "zeros", 3, (5, 5), 5, "signed-constant", "edge-popup", False, 1.0, None),
    # a 3x2 kernel, stride (2, 1), padding (1, 0), dilation (1, 2)
    (2, 3, (3, 2), (2, 1), (1, 0), (1, 2), "zeros", 1, (6, 7), 6, "signed-constant", "signed",
     True, 0.5, None),
    # padding "same" with dilation 2 (its even total split as F.conv2d splits it)
    (2, 2, 3, 1, "same", 2, "zeros", 1, (5, 5), 3, "kaiming-uniform", "edge-popup", False,
     0.5, 4),
    # 1x1 with padding 1 (im2col) and reflect padding of a 2x2 kernel ('same': odd split)
    (3, 2, 1, 1, 1, 1, "zeros", 1, (3, 3), 2, "signed-constant", "edge-popup", True, 0.5, None),
    (2, 3, 2, 1, "same", 1, "reflect", 1, (4, 3), 5, "signed-constant", "signed", True, 0.5,
     None),
]  # fmt: skip


def make_conv(case) -> SupermaskConv2d:
    cin, cout, kernel, stride, padding, dilation, mode, *_ = case
    lanes, init, method, bias, density = case[9:14]
    layer = SupermaskConv2d(
        cin,
        cout,
        kernel,
        stride,
        padding,
        dilation,
        bias=bias,
        padding_mode=mode,
        density=density,
        init=init,
        seed=4321,
        layer_index=2,
        method=method,
        scale_by_density=method == "frozen",
        n_lanes=lanes,
    )
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-0.5, 0.5, cout))
    return layer


def make_conv_input(case) -> torch.Tensor:
    cin, batch, (h, w) = case[0], case[7], case[8]
    return torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(11))


def geometry(layer: SupermaskConv2d, x: torch.Tensor):
    """(input, stride, padding, dilation) for hidden_conv2d: non-zero padding modes pad first."""
    if layer.padding_mode != "zeros":
        pad = layer._reversed_padding_repeated_twice
        return F.pad(x, pad, mode=layer.padding_mode), layer.stride, 0, layer.dilation
    return x, layer.stride, layer.padding, layer.dilation


def reference_conv(case) -> torch.Tensor:
    """``F.conv2d`` on ``frozen_weights * factor``: regenerated independently of the kernels."""
    layer = make_conv(case)
    weight = frozen_weights(**layer.frozen_spec()) * layer.method.weight_factor(layer)
    x, stride, padding, dilation = geometry(layer, make_conv_input(case))
    bias = None if layer.bias is None else layer.bias.detach()
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def make_model() -> nn.Sequential:
    """Eligible layers (0, 3, 7, and 8 reached twice) among ineligible ones."""

    def conv(cin, cout, k, index, **kw):
        return SupermaskConv2d(cin, cout, k, seed=77, layer_index=index, **kw)

    def linear(fin, fout, index, **kw):
        return SupermaskLinear(fin, fout, seed=77, layer_index=index, **kw)

    shared = linear(6, 6, 8, bias=True, method="signed", n_lanes=5)
    model = nn.Sequential(
        conv(3, 5, 3, 0, stride=2, padding=1, bias=True, n_lanes=7),
        nn.ReLU(),
        conv(5, 5, 3, 1, padding=1, groups=5),  # grouped
        conv(5, 4, 1, 3, method="signed", init="kaiming-uniform", n_lanes=3),
        nn.ReLU(),
        conv(4, 4, 1, 5, init="kaiming-normal"),  # an init the kernel does not regenerate
        nn.Flatten(),
        linear(36, 6, 7, bias=True, method="frozen"),
        shared,
        shared,
        linear(6, 6, 9, method="multicoat"),  # no weight factor
        linear(6, 3, 10, method="dense"),  # trains its weights
        linear(3, 3, 11),  # computes with Mitchell's multiplier at inference
        nn.Linear(3, 2),
    )
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(torch.linspace(-0.3, 0.4, module.bias.numel()))
        model[-1].weight.copy_(torch.linspace(-1, 1, 6).reshape(2, 3))
    use_operator(model, "mitchell", phase="inference", layers=["12"])
    return model.eval()


ELIGIBLE = ["0", "3", "7", "8", "9"]


def make_model_input() -> torch.Tensor:
    return torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(5))


_CHILD = """
import json, sys
import numpy as np
import torch
sys.path.insert(0, {test_dir!r})
from test_kernels_triton_conv import (
    CASES, geometry, make_conv, make_conv_input, make_model, make_model_input
)
from hiddenite.kernels import triton_linear
from hiddenite.kernels.triton_conv import hidden_conv2d, pack_conv2d
from hiddenite.kernels.triton_linear import kernel_weights
from hiddenite.kernels.triton_model import weight_free_

results = {{}}
for k, case in enumerate(CASES):
    layer = make_conv(case)
    packed = pack_conv2d(layer)
    steps = case[-1]
    results[f"weights{{k}}"] = kernel_weights(packed, block_steps=steps).numpy()
    x, stride, padding, dilation = geometry(layer, make_conv_input(case))
    for im2col in (False, True):
        out = hidden_conv2d(
            packed, x, stride, padding, dilation, backend="triton", block_steps=steps,
            im2col=im2col,
        )
        results[f"{{'im2col' if im2col else 'implicit'}}{{k}}"] = out.numpy()
# the first case again, its 36 rows split over three launches of one program of 16 rows
triton_linear._MAX_BATCH_PROGRAMS = 1
x = make_conv_input(CASES[0])
packed = pack_conv2d(make_conv(CASES[0]))
results["split"] = hidden_conv2d(packed, x, backend="triton").numpy()
results["split_im2col"] = hidden_conv2d(packed, x, backend="triton", im2col=True).numpy()
triton_linear._MAX_BATCH_PROGRAMS = 65535
model = make_model()
swapped = weight_free_(model, backend="triton")
with torch.no_grad():
    results["model"] = model(make_model_input()).numpy()
np.savez({out!r}, **results)
print(json.dumps({{"keys": sorted(results), "swapped": swapped}}))
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    """Run every case through the interpreted kernels in one child process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    out = tmp_path_factory.mktemp("triton_conv") / "results.npz"
    code = _CHILD.format(test_dir=str(Path(__file__).parent), out=str(out))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["keys"]) == 3 * len(CASES) + 3
    with np.load(out) as data:
        results = {key: data[key] for key in data.files}
    results["swapped"] = report["swapped"]
    return results


@pytest.mark.parametrize("k", range(len(CASES)))
def test_kernel_weights_bit_identical_to_frozen_weights(interpreted, k):
    layer = make_conv(CASES[k])
    frozen = frozen_weights(**layer.frozen_spec())
    want = (frozen * layer.method.weight_factor(layer)).numpy()
    got = interpreted[f"weights{k}"]
    assert got.dtype == np.float32 and got.shape == tuple(layer.weight.shape)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    if layer.density == 1.0 and layer.method.name == "edge-popup":  # all kept: the weights
        np.testing.assert_array_equal(got.view(np.int32), frozen.numpy().view(np.int32))


@pytest.mark.parametrize("path", ["implicit", "im2col"])
@pytest.mark.parametrize("k", range(len(CASES)))
def test_kernel_conv_matches_f_conv2d(interpreted, k, path):
    want = reference_conv(CASES[k])
    got = torch.from_numpy(interpreted[f"{path}{k}"])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["split", "split_im2col"])
def test_rows_split_over_launches_give_the_same_conv(interpreted, key):
    layer = make_conv(CASES[0])
    x = make_conv_input(CASES[0])
    assert x.shape[0] * x.shape[2] * x.shape[3] == 36
    want = F.conv2d(x, layer.effective_weight().detach(), layer.bias.detach())
    torch.testing.assert_close(torch.from_numpy(interpreted[key]), want, rtol=1e-5, atol=1e-6)


def test_weight_free_model_matches_the_model(interpreted):
    assert interpreted["swapped"] == ELIGIBLE
    with torch.no_grad():
        want = make_model()(make_model_input())
    torch.testing.assert_close(torch.from_numpy(interpreted["model"]), want, rtol=1e-5, atol=1e-5)


def test_cases_cover_the_paths():
    packs = [pack_conv2d(make_conv(case)) for case in CASES]
    assert any(p.invert is not None for p in packs)  # signed inverts some weights
    assert any(p.mask is None for p in packs)  # density 1: no mask plane
    assert any(p.n % p.lanes != 0 for p in packs)  # the last step is partial
    assert any(p.steps > (case[-1] or 64) for p, case in zip(packs, CASES, strict=True))


# -- CPU parts that need no triton ------------------------------------------------------------


@pytest.mark.parametrize("k", range(len(CASES)))
def test_gemm_rows_are_in_the_weights_flat_order(k):
    """The rows times the flattened weight are the convolution: im2col's column order is the
    weight's flat order (channel, kernel row, kernel column)."""
    layer = make_conv(CASES[k])
    x, stride, padding, dilation = geometry(layer, make_conv_input(CASES[k]))
    if padding == "same":
        pytest.skip("'same' is padded before the rows are taken")
    weight = layer.effective_weight().detach()
    want = F.conv2d(x, weight, None, stride, padding, dilation)
    rows = gemm_rows(x, weight.shape[2:], stride, _pair(padding), dilation)
    got = (rows.double() @ weight.reshape(weight.shape[0], -1).double().T).float()
    got = got.reshape(want.shape[0], want.shape[2], want.shape[3], -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_reference_path_equals_layer_forward(k):
    layer = make_conv(CASES[k])
    x = make_conv_input(CASES[k])
    want = layer(x).detach()
    xin, stride, padding, dilation = geometry(layer, x)
    packed = pack_conv2d(layer)
    got = hidden_conv2d(packed, xin, stride, padding, dilation, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(hidden_conv2d(packed, xin, stride, padding, dilation), got)  # auto: CPU
    unbatched = hidden_conv2d(packed, xin[0], stride, padding, dilation)
    torch.testing.assert_close(unbatched, got[0], rtol=1e-6, atol=1e-6)


def test_pack_linear_packs_a_convolution_as_its_gemm():
    layer = make_conv(CASES[1])
    packed = pack_linear(layer)
    assert isinstance(packed, PackedLinear)
    assert (packed.out_features, packed.in_features) == (5, 27)
    assert packed.nbytes() == 4 * 4 + 2 * 4 * -(-135 // 32)  # seeds, mask and sign bits
    # the packed conv is a Linear on its im2col rows
    x = make_conv_input(CASES[1])
    rows = gemm_rows(x, (3, 3), (2, 2), (1, 1), (1, 1))
    got = hidden_linear(rows, packed, backend="reference").reshape(1, 3, 2, 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, layer(x).detach(), rtol=1e-6, atol=1e-6)


def test_conv_user_errors():
    layer = make_conv(CASES[1])
    packed = pack_conv2d(layer)
    x = make_conv_input(CASES[1])
    with pytest.raises(UserError, match="groups=2"):
        pack_conv2d(SupermaskConv2d(4, 4, 3, groups=2))
    with pytest.raises(UserError, match="SupermaskConv2d"):
        pack_conv2d(SupermaskLinear(4, 3))
    with pytest.raises(UserError, match="SupermaskConv2d"):
        pack_conv2d(nn.Conv2d(4, 3, 1))
    with pytest.raises(UserError, match="trains its weights"):
        pack_conv2d(SupermaskConv2d(4, 3, 1, method="dense"))
    with pytest.raises(UserError, match="no weight-free kernel"):
        pack_conv2d(SupermaskConv2d(4, 3, 1, method="multicoat"))
    with pytest.raises(UserError, match="pack_conv2d"):
        hidden_conv2d(pack_linear(SupermaskLinear(4, 3)), x)
    with pytest.raises(UserError, match="3 channels"):
        hidden_conv2d(packed, torch.ones(1, 4, 5, 5))
    with pytest.raises(UserError, match="3 channels"):
        hidden_conv2d(packed, torch.ones(3, 5))
    with pytest.raises(UserError, match="fewer than the 3x3 kernel"):
        hidden_conv2d(packed, torch.ones(1, 3, 2, 2))
    with pytest.raises(UserError, match="stride 1"):
        hidden_conv2d(packed, x, stride=2, padding="same")
    with pytest.raises(UserError, match="padding"):
        hidden_conv2d(packed, x, padding="full")
    with pytest.raises(UserError, match="stride must be"):
        hidden_conv2d(packed, x, stride=(1, 2, 3))
    with pytest.raises(UserError, match=">= 1"):
        hidden_conv2d(packed, x, dilation=0)
    with pytest.raises(UserError, match="backend"):
        hidden_conv2d(packed, x, backend="cudnn")
    normal = pack_conv2d(SupermaskConv2d(3, 2, 1, init="kaiming-normal"))
    with pytest.raises(UserError, match="kaiming-normal"):
        hidden_conv2d(normal, x, backend="triton")


def test_model_swap_on_the_reference_path_and_what_it_leaves():
    model = make_model()
    x = make_model_input()
    with torch.no_grad():
        want = model(x)
    old = {name: model.get_submodule(name) for name in ELIGIBLE}
    ineligible = {n: m for n, m in model.named_children() if n not in ELIGIBLE}
    freed = [weakref.ref(layer.weight) for layer in old.values()]
    problems = {n: weight_free_problem(m) for n, m in ineligible.items()}
    assert problems["2"].startswith("it is a grouped")
    assert "kaiming-normal" in problems["5"] and "not the frozen weight" in problems["10"]
    assert "trains the weights" in problems["11"] and "mitchell" in problems["12"]
    assert "not a hidden" in problems["13"] and "not a hidden" in problems["1"]
    assert all(weight_free_problem(m) is None for m in old.values())

    assert weight_free_(model, backend="reference") == ELIGIBLE
    for name in ELIGIBLE:
        kind = WeightFreeConv2d if name in ("0", "3") else WeightFreeLinear
        assert type(model.get_submodule(name)) is kind
    assert model[8] is model[9]  # a shared layer keeps one twin
    for name, module in ineligible.items():
        assert model.get_submodule(name) is module  # left as it was, weights and all
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    # the swapped layers hold seeds and bits, no weight: the frozen weights are freed
    for twin in (model[0], model[3], model[7], model[8]):
        assert not any(t.is_floating_point() and t.dim() > 1 for t in twin.buffers())
        assert twin.seeds.dtype == torch.int32 and list(twin.parameters()) == []
    del old, ineligible
    gc.collect()
    assert [ref() for ref in freed] == [None] * len(freed)
    assert weight_free_(model) == []  # nothing eligible is left
    assert "lanes=7" in repr(model[0]) and "stride=(2, 2)" in repr(model[0])


def test_model_swap_user_errors():
    with pytest.raises(UserError, match="wrap the layer"):
        weight_free_(SupermaskLinear(4, 3))
    with pytest.raises(UserError, match="backend"):
        weight_free_(nn.Sequential(SupermaskLinear(4, 3)), backend="cuda")
    on_meta = nn.Sequential(SupermaskLinear(4, 3, device="meta"))
    assert "meta" in weight_free_problem(on_meta[0])
    assert weight_free_(on_meta) == []


@pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="needs triton, without the interpreter",
)
@pytest.mark.parametrize("im2col", [False, True])
def test_kernel_on_a_cpu_tensor_without_the_interpreter_is_a_user_error(im2col):
    packed = pack_conv2d(SupermaskConv2d(3, 2, 3))
    with pytest.raises(UserError, match="CUDA"):
        hidden_conv2d(packed, torch.ones(1, 3, 4, 4), backend="triton", im2col=im2col)


# -- the compiled kernels on a GPU ------------------------------------------------------------

needs_gpu = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA device"
)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, hw",
    [(64, 33, 1, 1, 0, 14), (31, 64, 3, 2, 1, 15), (32, 48, 3, 1, 1, 7)],
)
@pytest.mark.parametrize("method", ["edge-popup", "signed"])
@pytest.mark.parametrize("im2col", [False, True])
def test_gpu_conv_matches_f_conv2d(cin, cout, kernel, stride, padding, hw, method, im2col):
    layer = SupermaskConv2d(
        cin, cout, kernel, stride, padding, bias=True, density=0.3, seed=9, method=method
    ).cuda()
    packed = pack_conv2d(layer)
    weight = layer.effective_weight().detach()
    for batch in (1, 3):
        gen = torch.Generator("cuda").manual_seed(batch)
        x = torch.randn(batch, cin, hw, hw, device="cuda", generator=gen)
        with torch.backends.cudnn.flags(allow_tf32=False):
            want = F.conv2d(x, weight, layer.bias, stride, padding)
        got = hidden_conv2d(packed, x, stride, padding, backend="triton", im2col=im2col)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        half = hidden_conv2d(packed, x.half(), stride, padding, backend="triton", im2col=im2col)
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_gpu
def test_gpu_weight_free_model_matches_the_model():
    model = make_model()
    x = make_model_input()
    with torch.no_grad():
        want = model(x)
    assert weight_free_(model) == ELIGIBLE
    model.cuda()
    with torch.no_grad():
        got = model(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
