"""Tests for the folded ResNets (Hidden-Fold Networks, BMVC 2021) of the model zoo.

Independent references: a functional re-implementation of the folded forward pass that
unrolls every iteration by hand (``torch.nn.functional`` only), the unfolded zoo ResNet-20 with
the shared convolution weights copied into each repeated block, and weight counts worked out
from the architecture by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hiddenite
from hiddenite import SupermaskConfig, is_supermask, models
from hiddenite.masks import kept_count
from hiddenite.models.resnet import BasicBlock, Bottleneck, FoldedBlock, ResNet


def stored_weights(model: nn.Module) -> int:
    """Weights behind the supermask layers, each module once (what the model file covers)."""
    return sum(m.weight.numel() for m in model.modules() if is_supermask(m))


def plain_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def hand_count(blocks, planes, in_channels=1, num_classes=10, folded=False) -> int:
    """Conv + fc weights of a CIFAR-style BasicBlock ResNet, worked out by hand."""
    total = in_channels * planes[0] * 9  # 3x3 stem
    c_in = planes[0]
    for n, p in zip(blocks, planes, strict=True):
        total += c_in * p * 9 + p * p * 9  # the first block's two 3x3 convolutions
        if c_in != p:
            total += c_in * p  # its 1x1 shortcut
        repeated = 1 if folded else n - 1  # folded: one shared block, however many iterations
        total += repeated * 2 * p * p * 9
        c_in = p
    return total + c_in * num_classes


def randomize_bn_(model: nn.Module, seed: int) -> None:
    """Give every batch norm its own running statistics (and affine terms, if any)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def functional_folded(state: dict[str, torch.Tensor], x: torch.Tensor, iterations: int):
    """Eval-mode forward of a folded CIFAR ResNet from its state dict, iterations unrolled."""

    def bn(prefix, t):
        return F.batch_norm(
            t,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state.get(f"{prefix}.weight"),
            state.get(f"{prefix}.bias"),
            training=False,
            eps=1e-5,
        )

    def conv(key, t, stride=1):
        w = state[key]
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    x = F.relu(bn("stem.1", conv("stem.0.weight", x)))
    n_stages = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("stages."))
    for s in range(n_stages):
        first = f"stages.{s}.0"
        stride = 2 if s else 1
        out = F.relu(bn(f"{first}.bn1", conv(f"{first}.conv1.weight", x, stride)))
        out = bn(f"{first}.bn2", conv(f"{first}.conv2.weight", out))
        short = x
        if f"{first}.shortcut.0.weight" in state:
            short = bn(f"{first}.shortcut.1", conv(f"{first}.shortcut.0.weight", x, stride))
        x = F.relu(out + short)
        fold = f"stages.{s}.1"
        for i in range(iterations):  # the same conv weights every time, BN number i
            out = F.relu(bn(f"{fold}.bn1.{i}", conv(f"{fold}.conv1.weight", x)))
            out = bn(f"{fold}.bn2.{i}", conv(f"{fold}.conv2.weight", out))
            x = F.relu(out + x)
    x = x.mean(dim=(2, 3))
    return x @ state["fc.weight"].t()


def unfold_into(folded: nn.Module, unfolded: nn.Module) -> None:
    """Copy a folded ResNet into an unfolded one: each repeated block gets the shared convs'
    weights and the batch norms of its iteration."""
    src = folded.state_dict()
    dst = {}
    for key in unfolded.state_dict():
        parts = key.split(".")
        if parts[0] == "stages" and parts[2] != "0":
            block, layer, rest = int(parts[2]), parts[3], parts[4:]
            if layer.startswith("bn"):
                key_src = ".".join(["stages", parts[1], "1", layer, str(block - 1), *rest])
            else:
                key_src = ".".join(["stages", parts[1], "1", layer, *rest])
        else:
            key_src = key
        dst[key] = src[key_src]
    unfolded.load_state_dict(dst)


def test_zoo_entries_and_defaults():
    for name in ("resnet20-folded", "resnet18-folded"):
        assert name in models.MODELS and name in models.__doc__
        assert models.default_input_shape(name) == (1, 28, 28)
    folded = models.create("resnet20-folded")
    assert [s[1].iterations for s in folded.stages] == [2, 2, 2]  # 3 blocks: 1 + 2
    assert [s[1].iterations for s in models.create("resnet18-folded").stages] == [1, 1, 1, 1]
    deeper = models.create("resnet20-folded", iterations=5, width=0.5, bn_affine=True)
    for stage in deeper.stages:
        assert isinstance(stage[0], BasicBlock) and isinstance(stage[1], FoldedBlock)
        assert len(stage[1].bn1) == len(stage[1].bn2) == 5
        assert all(bn.affine for bn in stage[1].bn1)
    assert deeper.stages[2][1].conv1.out_channels == 32


def test_bad_iterations_refused():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="iterations"):
            models.create("resnet20-folded", iterations=bad)
    with pytest.raises(hiddenite.ConfigError, match="iterations"):
        models.check_arguments("resnet18-folded", iterations=0)
    with pytest.raises(ValueError, match="iterations"):
        models.create("resnet20", iterations=2)  # the unfolded twins do not take it


def test_existing_resnet_layer_names_unchanged():
    # model files address layers by these names, in this order: folding must not move them
    expected = ["stem.0"]
    for s in range(3):
        for b in range(3):
            expected += [f"stages.{s}.{b}.conv1", f"stages.{s}.{b}.conv2"]
            if s and not b:
                expected.append(f"stages.{s}.{b}.shortcut.0")
    expected.append("fc")
    names = [n for n, m in models.create("resnet20").named_modules() if isinstance(m, nn.Conv2d)]
    names += ["fc"]
    assert names == expected


def test_shared_convs_registered_once():
    model = models.create("resnet20-folded", iterations=3)
    fold = model.stages[1][1]
    every = [n for n, _ in model.named_modules(remove_duplicate=False)]
    assert every.count("stages.1.1.conv1") == 1 and len(every) == len(set(every))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [
        "stem.0",
        "stages.0.0.conv1", "stages.0.0.conv2", "stages.0.1.conv1", "stages.0.1.conv2",
        "stages.1.0.conv1", "stages.1.0.conv2", "stages.1.0.shortcut.0",
        "stages.1.1.conv1", "stages.1.1.conv2",
        "stages.2.0.conv1", "stages.2.0.conv2", "stages.2.0.shortcut.0",
        "stages.2.1.conv1", "stages.2.1.conv2",
    ]  # fmt: skip
    state = model.state_dict()
    assert "stages.1.1.conv1.weight" in state and "stages.1.1.bn1.2.running_var" in state
    assert "stages.1.1.bn1.3.running_var" not in state
    # every call of the shared conv is one call of the same module
    calls = []
    handle = fold.conv1.register_forward_hook(lambda m, i, o: calls.append(m))
    with torch.no_grad():
        model.eval()(torch.randn(2, 1, 28, 28))
    handle.remove()
    assert len(calls) == 3 and all(c is fold.conv1 for c in calls)


@pytest.mark.parametrize(("iterations", "affine"), [(None, False), (3, True), (1, False)])
def test_folded_equals_hand_unrolled_reference(iterations, affine):
    torch.manual_seed(0)
    model = models.create("resnet20-folded", iterations=iterations, bn_affine=affine, width=0.5)
    randomize_bn_(model, 1)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.eval()(x)
        want = functional_folded(model.state_dict(), x, iterations or 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folded_equals_unfolded_resnet20_with_identical_conv_weights():
    torch.manual_seed(0)
    folded = models.create("resnet20-folded", bn_affine=True)
    randomize_bn_(folded, 3)
    unfolded = ResNet(
        BasicBlock, (3, 3, 3), (16, 32, 64), in_channels=1, num_classes=10,
        imagenet_stem=False, bn_affine=True,
    )  # fmt: skip
    unfold_into(folded, unfolded)
    # the two repeated blocks of a stage hold the same weights but different batch norms
    a, b = unfolded.stages[2][1], unfolded.stages[2][2]
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.bn1.running_mean, b.bn1.running_mean)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x), unfolded.eval()(x), rtol=1e-5, atol=1e-5)

    # training mode: same outputs, each iteration's BN tracks its own statistics, and the
    # shared weight's gradient is the sum of its unfolded copies' gradients
    folded.train(), unfolded.train()
    y_f, y_u = folded(x), unfolded(x)
    torch.testing.assert_close(y_f, y_u, rtol=1e-5, atol=1e-5)
    y_f.square().sum().backward()
    y_u.square().sum().backward()
    for s in range(3):
        for i in range(2):
            bn_f, bn_u = folded.stages[s][1].bn2[i], unfolded.stages[s][i + 1].bn2
            torch.testing.assert_close(bn_f.running_mean, bn_u.running_mean)
            torch.testing.assert_close(bn_f.running_var, bn_u.running_var)
        grad = folded.stages[s][1].conv2.weight.grad
        want = sum(unfolded.stages[s][j].conv2.weight.grad for j in (1, 2))
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)
    bn_mean = [bn.running_mean for bn in folded.stages[0][1].bn1]
    assert not torch.equal(*bn_mean)


def test_stored_weight_counts_by_hand():
    r20, r18 = ((3, 3, 3), (16, 32, 64)), ((2, 2, 2, 2), (64, 128, 256, 512))
    assert hand_count(*r20) == 270_608 and hand_count(*r20, folded=True) == 173_840
    assert hand_count(*r18) == hand_count(*r18, folded=True) == 11_163_200
    with torch.device("meta"):  # layouts only: no weights drawn
        for iterations in (None, 1, 4):
            m = models.create("resnet20-folded", iterations=iterations)
            assert plain_weights(m) == 173_840
            m = models.create("resnet18-folded", iterations=iterations, in_channels=3)
            assert plain_weights(m) == hand_count(*r18, in_channels=3, folded=True)
        assert plain_weights(models.create("resnet20")) == 270_608
        half = models.create("resnet20-folded", width=0.5, num_classes=7)
        assert plain_weights(half) == hand_count((3, 3, 3), (8, 16, 32), num_classes=7, folded=True)
        cfg = SupermaskConfig(density=0.3)
        hidden = models.create("resnet20-folded", cfg, init_state=False)
        layers = [m for m in hidden.modules() if is_supermask(m)]
        assert len(layers) == 16 and stored_weights(hidden) == 173_840
        assert [m.layer_index for m in layers] == list(range(16))
        deep18 = models.create("resnet18-folded", cfg, iterations=3, init_state=False)
        assert stored_weights(deep18) == 11_163_200  # 3 iterations, stored once


def test_convert_train_save_load_bit_identical(tmp_path):
    cfg = SupermaskConfig(density=0.3, seed=11)
    model = models.create("resnet20-folded", cfg)
    layers = {n: m for n, m in model.named_modules() if is_supermask(m)}
    assert len(layers) == 16 and all(m.method.name == "edge-popup" for m in layers.values())
    for m in layers.values():
        assert int(m.mask().sum()) == kept_count(m.weight.numel(), 0.3)
    shared = model.stages[2][1].conv1
    assert layers["stages.2.1.conv1"] is shared

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    x, target = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    before = shared.mask().clone()
    F.cross_entropy(model.train()(x), target).backward()  # one training step
    assert shared.scores.grad is not None and shared.scores.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(shared.mask(), before)  # the shared mask was learned
    bn0, bn1 = model.stages[2][1].bn1
    assert not torch.equal(bn0.running_mean, bn1.running_mean)

    path = tmp_path / "folded.hnn"
    info = hiddenite.save(model, path)
    assert info.arch == ("resnet20-folded", info.arch[1]) and info.arch[1]["iterations"] is None
    assert len(info.layers) == 16
    assert sum(math.prod(layer["shape"]) for layer in info.layers) == 173_840
    params = info.param_bytes()
    assert (
        "stages.2.1.bn1.1.running_mean" in params and "stages.2.1.bn1.2.running_mean" not in params
    )
    loaded = hiddenite.load(path)
    x_test = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(loaded(x_test), model.eval()(x_test))
    assert torch.equal(loaded.stages[2][1].conv1.mask(), shared.mask())

    deeper = models.create("resnet20-folded", cfg, iterations=3, width=0.25)
    with torch.no_grad():
        deeper.train()(x)
    hiddenite.save(deeper, tmp_path / "deeper.hnn")
    again = hiddenite.load(tmp_path / "deeper.hnn")
    assert [len(s[1].bn1) for s in again.stages] == [3, 3, 3]
    with torch.no_grad():
        assert torch.equal(again(x_test), deeper.eval()(x_test))


def test_summary_counts_shared_convs_once():
    cfg = SupermaskConfig(density=0.3, seed=2)
    folded = models.create("resnet20-folded", cfg, width=0.5)
    unfolded = models.create("resnet20", cfg, width=0.5)
    s_f = hiddenite.summary(folded, print_fn=None)
    s_u = hiddenite.summary(unfolded, print_fn=None)
    names = [r.name for r in s_f.rows if r.weights]
    assert len(names) == len(set(names)) == s_f.totals["layers"] == 16
    assert s_f.totals["weights"] == hand_count((3, 3, 3), (8, 16, 32), folded=True)
    assert s_u.totals["weights"] == hand_count((3, 3, 3), (8, 16, 32))
    assert s_f.totals["part_bytes"] < s_u.totals["part_bytes"]
    bn_rows = [r for r in s_f.rows if r.name.startswith("stages.0.1.bn")]
    assert [r.name for r in bn_rows] == [
        "stages.0.1.bn1.0", "stages.0.1.bn1.1", "stages.0.1.bn2.0", "stages.0.1.bn2.1",
    ]  # fmt: skip
    assert all(r.param_count == 2 * 8 for r in bn_rows)  # running mean and variance


def test_folded_bottleneck_equals_repeated_blocks():
    torch.manual_seed(0)
    fold = FoldedBlock(Bottleneck, 4, 2, affine=True)
    randomize_bn_(fold, 8)
    repeated = [Bottleneck(16, 4, 1, True) for _ in range(2)]
    for i, block in enumerate(repeated):
        for name in ("conv1", "conv2", "conv3"):
            setattr(block, name, getattr(fold, name))
        for name in ("bn1", "bn2", "bn3"):
            getattr(block, name).load_state_dict(getattr(fold, name)[i].state_dict())
    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = repeated[1].eval()(repeated[0].eval()(x))
        torch.testing.assert_close(fold.eval()(x), want)
    assert [n for n, m in fold.named_modules() if isinstance(m, nn.Conv2d)] == [
        "conv1", "conv2", "conv3",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="cannot fold"):
        FoldedBlock(nn.Identity, 4, 2, affine=False)
