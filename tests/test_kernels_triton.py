"""The Triton hidden-Linear kernel (hiddenite.kernels.triton_linear).

The kernel runs here under Triton's interpreter (``TRITON_INTERPRET=1``) in ONE child process:
the variable must be set before the kernels module is first imported, and a child keeps it
from leaking into the other tests (or into the GPU tests below, which need the compiled
kernel). The child writes what the kernel produced; this process computes every reference
independently: the numpy lanes (:func:`hiddenite.prng.lanes_numpy`), the layer's own
``effective_weight()`` and ``F.linear``.

The weights and words must be bit-identical. The outputs agree to float32 rounding only: the
kernel adds the products lane block by lane block (with atomics), ``F.linear`` in its own
order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hiddenite.errors import UserError
from hiddenite.kernels.triton_linear import (
    PackedLinear,
    hidden_linear,
    jump_tables,
    kernel_weights,
    pack_bits,
    pack_linear,
    reference_weights,
    unpack_bits,
)
from hiddenite.layers import SupermaskLinear
from hiddenite.prng import lanes_numpy, xorshift32

HAS_TRITON = importlib.util.find_spec("triton") is not None
SRC = Path(__file__).resolve().parents[1] / "src"

# (in, out, batch shape, lanes, init, method, bias, scale_by_density, density, block_steps)
CASES = [
    (7, 5, (3,), 1, "signed-constant", "edge-popup", True, False, 0.4, None),
    (7, 5, (3,), 3, "kaiming-uniform", "signed", False, False, 0.4, None),
    (7, 5, (3,), 4096, "signed-constant", "signed", True, True, 0.3, None),
    (7, 5, (1,), 6, "kaiming-uniform", "edge-popup", True, False, 0.5, None),
    (13, 9, (2,), 5, "signed-constant", "frozen", False, False, 0.3, None),
    (5, 11, (2, 3), 2, "kaiming-uniform", "edge-popup", False, False, 1.0, 4),
    (9, 7, (17,), 4, "signed-constant", "edge-popup", True, False, 0.3, 3),
]


def make_layer(case) -> SupermaskLinear:
    fan_in, out, _, lanes, init, method, bias, scaled, density, _ = case
    layer = SupermaskLinear(
        fan_in,
        out,
        bias=bias,
        density=density,
        init=init,
        seed=1234,
        layer_index=3,
        method=method,
        scale_by_density=scaled,
        n_lanes=lanes,
    )
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-0.5, 0.5, out))
    return layer


def make_input(case) -> torch.Tensor:
    fan_in, _, batch = case[:3]
    return torch.randn(*batch, fan_in, generator=torch.Generator().manual_seed(7))


_CHILD = """
import json, sys
import numpy as np
import torch
sys.path.insert(0, {test_dir!r})
from test_kernels_triton import CASES, make_input, make_layer
from hiddenite.kernels.triton_linear import hidden_linear, kernel_weights, pack_linear

results = {{}}
for k, case in enumerate(CASES):
    layer = make_layer(case)
    packed = pack_linear(layer)
    steps = case[-1]
    results[f"words{{k}}"] = kernel_weights(packed, words=True, block_steps=steps).numpy()
    results[f"weights{{k}}"] = kernel_weights(packed, block_steps=steps).numpy()
    x = make_input(case)
    results[f"out{{k}}"] = hidden_linear(x, packed, backend="triton", block_steps=steps).numpy()
np.savez({out!r}, **results)
print(json.dumps(sorted(results)))
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, np.ndarray]:
    """Run every case through the interpreted kernel in one child process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    out = tmp_path_factory.mktemp("triton") / "results.npz"
    code = _CHILD.format(test_dir=str(Path(__file__).parent), out=str(out))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 3 * len(CASES)
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("k", range(len(CASES)))
def test_kernel_words_are_the_numpy_lanes(interpreted, k):
    fan_in, out, _, lanes = CASES[k][:4]
    want = lanes_numpy(1234, 3, fan_in * out, lanes).astype(np.int64)
    np.testing.assert_array_equal(interpreted[f"words{k}"], want)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_kernel_weights_bit_identical_to_effective_weight(interpreted, k):
    want = make_layer(CASES[k]).effective_weight().detach().numpy()
    got = interpreted[f"weights{k}"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("k", range(len(CASES)))
def test_kernel_output_matches_f_linear(interpreted, k):
    layer = make_layer(CASES[k])
    want = F.linear(make_input(CASES[k]), layer.effective_weight(), layer.bias).detach()
    got = torch.from_numpy(interpreted[f"out{k}"])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cases_cover_masks_inversions_jumps_and_full_density():
    packs = [pack_linear(make_layer(case)) for case in CASES]
    assert any(p.invert is not None for p in packs)  # signed inverts some weights
    assert any(p.mask is None for p in packs)  # density 1: no mask plane
    assert any(p.steps > (case[-1] or 64) for p, case in zip(packs, CASES, strict=True))


# -- CPU parts that need no triton ------------------------------------------------------------


def test_jump_tables_equal_repeated_steps():
    tables = jump_tables(6)
    seeds = [1, 0x80000000, 2463534242, 0xDEADBEEF]
    for j in range(6):
        for seed in seeds:
            bits = (seed >> np.arange(32)) & 1
            jumped = np.bitwise_xor.reduce(np.where(bits != 0, tables[j], np.uint32(0)))
            assert int(jumped) == int(xorshift32(seed, 2**j)[-1])


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100])
def test_pack_bits_layout_and_round_trip(n):
    flags = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4
    words = pack_bits(flags)
    assert words.dtype == torch.int32 and words.numel() == -(-n // 32)
    naive = [
        sum(int(flags[32 * w + b]) << b for b in range(min(32, n - 32 * w)))
        for w in range(words.numel())
    ]
    assert words.numpy().view(np.uint32).tolist() == naive
    assert torch.equal(unpack_bits(words, n), flags)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_reference_path_equals_layer_forward(k):
    layer = make_layer(CASES[k])
    x = make_input(CASES[k])
    want = layer(x).detach()
    assert torch.equal(reference_weights(pack_linear(layer)), layer.effective_weight().detach())
    assert torch.equal(hidden_linear(x, layer, backend="reference"), want)
    assert torch.equal(hidden_linear(x, layer), want)  # auto on the CPU: the reference


def test_packed_layer_holds_no_weights():
    layer = SupermaskLinear(300, 200, density=0.3, seed=5, layer_index=1)
    packed = pack_linear(layer)
    assert isinstance(packed, PackedLinear)
    n = 300 * 200
    assert packed.nbytes() == 4096 * 4 + 4 * -(-n // 32)  # seeds + one bit per weight


def test_unsupported_layers_are_user_errors():
    with pytest.raises(UserError, match="trains its weights"):
        pack_linear(SupermaskLinear(4, 3, method="dense"))
    with pytest.raises(UserError, match="no weight-free kernel"):
        pack_linear(SupermaskLinear(4, 3, method="multicoat"))
    with pytest.raises(UserError, match="SupermaskLinear"):
        pack_linear(torch.nn.Linear(4, 3))
    normal = SupermaskLinear(4, 3, init="kaiming-normal")
    with pytest.raises(UserError, match="kaiming-normal"):
        hidden_linear(torch.ones(1, 4), normal, backend="triton")
    with pytest.raises(UserError, match="features"):
        hidden_linear(torch.ones(1, 5), normal)
    with pytest.raises(UserError, match="backend"):
        hidden_linear(torch.ones(1, 4), normal, backend="cuda")
    # kaiming-normal still runs on the reference path
    want = F.linear(torch.ones(1, 4), normal.effective_weight()).detach()
    assert torch.equal(hidden_linear(torch.ones(1, 4), normal), want)


@pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="needs triton, without the interpreter",
)
def test_kernel_on_a_cpu_tensor_without_the_interpreter_is_a_user_error():
    layer = SupermaskLinear(4, 3)
    with pytest.raises(UserError, match="CUDA"):
        hidden_linear(torch.ones(1, 4), layer, backend="triton")


# -- the compiled kernel on a GPU -------------------------------------------------------------

needs_gpu = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA device"
)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("lanes", [4096, 64, 7])
@pytest.mark.parametrize("init", ["signed-constant", "kaiming-uniform"])
@pytest.mark.parametrize("method", ["edge-popup", "signed"])
def test_gpu_kernel_matches_reference(lanes, init, method):
    layer = SupermaskLinear(
        1000,
        301,
        bias=True,
        density=0.3,
        init=init,
        seed=9,
        layer_index=4,
        method=method,
        n_lanes=lanes,
    ).cuda()
    packed = pack_linear(layer)
    weight = layer.effective_weight().detach()
    assert torch.equal(kernel_weights(packed), weight)
    words = kernel_weights(packed, words=True).cpu().numpy()
    np.testing.assert_array_equal(words, lanes_numpy(9, 4, 1000 * 301, lanes).astype(np.int64))
    for batch in (1, 16, 37):
        x = torch.randn(
            batch, 1000, device="cuda", generator=torch.Generator("cuda").manual_seed(1)
        )
        want = F.linear(x, weight, layer.bias)
        got = hidden_linear(x, packed, backend="triton")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
