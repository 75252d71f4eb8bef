"""Every CUDA path of the package against the CPU: loading, saving, training, the method
conformance, summary, the hardware model, the command line (skipped without a CUDA device).

Each check is a function of the device, run here on ``cuda``; ``python tests/test_cuda.py
cpu`` runs the same functions with ``cpu`` in place of the GPU, which checks the checks
themselves on a machine without one (every comparison must then hold exactly). On the GPU,
TF32 is switched off so that matmuls and convolutions are float32; their sums still run in
another order, so outputs are compared to float tolerance, while everything the package
computes bit for bit (regenerated weights, masks, the stored file, the hardware model's
report) is compared exactly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiddenite import SupermaskConfig, load, models, save, summary, to_dense
from hiddenite.cli import main as cli_main
from hiddenite.hw import simulate
from hiddenite.train import TrainConfig, evaluate, train
from test_cli import write_fashion_mnist
from test_methods import ARCHS, METHOD_NAMES, build, inputs, layers
from test_train import quadrant_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SMALL_RESNET = ("resnet20", {"width": 0.25})


@contextlib.contextmanager
def float32_math():
    """No TF32 in CUDA matmuls and convolutions while the block runs."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def close(a: torch.Tensor, b: torch.Tensor, device: str) -> bool:
    """Equal on the CPU; within float32 summation-order tolerance on a GPU."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if device == "cpu":
        return torch.equal(a, b)
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def train_steps(model: torch.nn.Module, arch: str, device: str, steps: int = 3) -> None:
    """A few SGD steps on the device (``test_methods.train_steps`` with its data moved)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = inputs(arch, 16).to(device)
    y = (torch.arange(16) % ARCHS[arch][1]["num_classes"]).to(device)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# --------------------------------------------------------------------------- the checks


def check_load_onto_the_device(device: str, folder: Path) -> None:
    """``load(path, device)``: the weights regenerated bit for bit, the masks the stored ones,
    the outputs those of the CPU model."""
    name, kwargs = SMALL_RESNET
    model = models.create(name, SupermaskConfig(density=0.3, seed=4), **kwargs).eval()
    path = folder / "r.hnn"
    save(model, path, arch=SMALL_RESNET)
    on_cpu, on_device = load(path), load(path, device)
    for (_, a), (_, b) in zip(layers(on_cpu), layers(on_device), strict=True):
        assert b.weight.device.type == torch.device(device).type
        assert torch.equal(a.weight, b.weight.cpu())
        assert torch.equal(a.mask(), b.mask().cpu())
    x = torch.randn(3, *models.default_input_shape(name, **kwargs))
    with torch.no_grad(), float32_math():
        assert close(on_cpu(x), on_device(x.to(device)), device)


def check_save_from_the_device(device: str, folder: Path) -> None:
    """The file saved from a model on the device is byte for byte the CPU model's."""
    name, kwargs = SMALL_RESNET
    model = models.create(name, SupermaskConfig(density=0.3, seed=5), **kwargs).eval()
    save(model, folder / "cpu.hnn", arch=SMALL_RESNET)
    save(model.to(device), folder / "dev.hnn", arch=SMALL_RESNET)
    assert (folder / "cpu.hnn").read_bytes() == (folder / "dev.hnn").read_bytes()


def check_every_method(device: str, folder: Path) -> None:
    """Each registered method on the device: built there (default device) and moved there,
    it holds the CPU model's weights and state bit for bit; its forward matches the CPU's; it
    trains there; the file it then saves loads on the CPU into a model whose outputs match
    the device model's."""
    for name in METHOD_NAMES:
        for arch in sorted(ARCHS):
            on_cpu = build(name, arch).eval()
            with torch.device(device):
                built_there = build(name, arch).eval()
            on_device = build(name, arch).eval().to(device)
            for model in (built_there, on_device):
                assert states_equal(on_cpu, model), (name, arch)
                for (_, a), (_, b) in zip(layers(on_cpu), layers(model), strict=True):
                    assert b.weight.device.type == torch.device(device).type, (name, arch)
                    assert torch.equal(a.weight.detach(), b.weight.detach().cpu()), (name, arch)
            x = inputs(arch)
            with torch.no_grad(), float32_math():
                assert close(on_cpu(x), on_device(x.to(device)), device), (name, arch)
            with float32_math():
                train_steps(on_device, arch, device)
            path = folder / f"{arch}.hnn"
            save(on_device, path, arch=ARCHS[arch])
            loaded = load(path)
            with torch.no_grad(), float32_math():
                assert close(loaded(x), on_device(x.to(device)), device), (name, arch)


def check_training(device: str, folder: Path) -> None:
    """``train(device=...)``: the trained model lives on the device, keeps the seed's weights,
    and its losses follow the CPU run's (the same batches; sums in another order)."""
    data = (quadrant_data(192, 0), quadrant_data(64, 1, "val"))
    runs = []
    for where in ("cpu", device):
        config = TrainConfig(
            model="conv2-bn",
            model_kwargs={"image_size": 8, "num_classes": 4, "width": 0.125},
            supermask=SupermaskConfig(density=0.5, seed=3),
            epochs=2,
            batch_size=32,
            lr=0.1,
        )
        with float32_math():
            runs.append(
                train(config, folder / f"run{len(runs)}", datasets=data, device=where,
                      progress=False, log=None)
            )  # fmt: skip
    trained = runs[1].model
    assert all(p.device.type == torch.device(device).type for p in trained.parameters())
    for (_, a), (_, b) in zip(layers(runs[0].model), layers(trained), strict=True):
        assert torch.equal(a.weight.detach(), b.weight.detach().cpu())
    first = [run.history[0]["train_loss"] for run in runs]
    assert abs(first[0] - first[1]) <= (0 if device == "cpu" else 1e-3 * abs(first[0]))
    val = evaluate(trained, data[1], device=device)
    assert 0.0 <= val["accuracy"] <= 1.0 and np.isfinite(val["loss"])


def check_summary_and_hardware_model(device: str, folder: Path) -> None:
    """``summary`` and ``simulate`` read a model on the device as the same model on the CPU."""
    name, kwargs = SMALL_RESNET
    model = models.create(name, SupermaskConfig(density=0.3, seed=6), **kwargs).eval()
    cpu_summary = summary(model, print_fn=None).to_json()
    cpu_report = simulate(model).to_dict()
    model.to(device)
    assert summary(model, print_fn=None).to_json() == cpu_summary
    assert simulate(model).to_dict() == cpu_report
    dense = to_dense(model)
    assert all(p.device.type == torch.device(device).type for p in dense.parameters())


def check_command_line(device: str, folder: Path) -> None:
    """``hiddenite train`` and ``eval`` with ``--device``, then ``simulate`` of the run:
    exit code 0."""
    data = write_fashion_mnist(folder / "data", 256, 64)
    run = folder / "run"
    common = ["--data-dir", str(data), "--device", device]
    train_args = ["--model", "mlp", "--model-arg", "hidden=[16]", "--epochs", "1"]
    assert cli_main(["train", *train_args, "--no-progress", "--out", str(run), *common]) == 0
    assert cli_main(["eval", str(run), *common]) == 0
    assert cli_main(["simulate", str(run), "--out", str(folder / "simulate")]) == 0


CHECKS = [
    check_load_onto_the_device,
    check_save_from_the_device,
    check_every_method,
    check_training,
    check_summary_and_hardware_model,
    check_command_line,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_cuda(check, tmp_path):
    check("cuda", tmp_path)


if __name__ == "__main__":  # the checks themselves, with the CPU in place of the GPU
    import tempfile

    where = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    for check in CHECKS:
        with tempfile.TemporaryDirectory() as tmp:
            check(where, Path(tmp))
        print(f"{check.__name__}: ok on {where}")
