"""Tests for hiddenite.models.attention: binarized SE gates, their STE, the channel-off statistic.

Independent references: the sigmoid derivative s (1 - s) written out by hand, gates set by
hand-chosen excitation weights and biases (so which channels switch off is known in advance),
and the weight-layer count of ResNet-14 worked out from the architecture.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, is_supermask, models
from hiddenite.models.attention import (
    BinaryGate,
    BinarySE,
    SEBasicBlock,
    SignActivation,
    channel_off_fraction,
    gate_records,
)


def test_gate_is_hard_forward_and_sigmoid_ste_backward():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], requires_grad=True)
    g = BinaryGate()(logits)
    assert torch.equal(g.detach(), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))  # exactly 0/1
    g.backward(torch.ones_like(g))
    s = 1.0 / (1.0 + torch.exp(-logits.detach()))
    assert torch.allclose(logits.grad, s * (1 - s))
    assert (logits.grad > 0).all()  # no channel is stuck without gradient


def test_sign_activation_clipped_ste():
    x = torch.tensor([-2.0, -1.0, -0.2, 0.0, 0.7, 1.5], requires_grad=True)
    y = SignActivation()(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


def test_se_gradients_flow_to_excitation_weights_through_ste():
    torch.manual_seed(0)
    se = BinarySE(8, reduction=2)
    x = torch.randn(4, 8, 5, 5)
    out = se(x)
    out.pow(2).sum().backward()
    for p in (se.fc1.weight, se.fc2.weight, se.fc2.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # zero where off, identical where on
    g = se.gates(x).detach()
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.detach(), x * g[:, :, None, None])


def _hand_se(channels_on: list[int], channels: int = 4) -> BinarySE:
    """An SE whose gates do not depend on the input: fc2 weights 0, bias +-1."""
    se = BinarySE(channels, reduction=2)
    with torch.no_grad():
        se.fc2.weight.zero_()
        se.fc2.bias.copy_(torch.tensor([1.0 if c in channels_on else -1.0 for c in range(4)]))
    return se


def test_channel_off_fraction_on_hand_made_gates():
    # block a: channel 0 on iff the input's channel-0 mean is positive; block b: fixed gates
    a = BinarySE(4, reduction=4)
    with torch.no_grad():
        a.fc1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        a.fc2.weight.copy_(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))
        a.fc2.bias.copy_(torch.tensor([-0.5, 1.0, 1.0, -1.0]))  # ch1, ch2 on; ch3 off
    b = _hand_se([0])
    model = nn.Sequential(a, b)
    x = torch.zeros(6, 4, 3, 3)
    x[:2, 0] = 2.0  # two of six inputs: relu(2) - 0.5 > 0, channel 0 of block a on
    loader = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(2))]
    frac = channel_off_fraction(model, loader)
    assert list(frac) == ["0", "1"]
    # block a: per input off channels = {0, 3} (4 inputs) or {3} (2 inputs): (4*2 + 2*1) / 24
    assert frac["0"] == pytest.approx((4 * 2 + 2 * 1) / 24)
    assert frac["1"] == pytest.approx(3 / 4)  # only channel 0 on
    with pytest.raises(ValueError, match="no BinarySE"):
        channel_off_fraction(nn.Linear(2, 2), loader)
    # max_batches: only the first batch (channel 0 on for 2 of 4 inputs)
    first = channel_off_fraction(model, loader, max_batches=1)
    assert first["0"] == pytest.approx((2 * 1 + 2 * 2) / 16)


def test_resnet14_layer_count_and_se_blocks():
    plain = models.create("resnet14")
    weights = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    shortcuts = [m for m in weights if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(weights) - len(shortcuts) == 14  # stem + 3 stages x 2 blocks x 2 convs + fc
    se = models.create("se-resnet14")
    assert len(gate_records(se)) == 6  # one per basic block
    assert all(isinstance(b, SEBasicBlock) for s in se.stages for b in s)
    se_conv = models.create("se-conv4", width=0.25)
    assert len(gate_records(se_conv)) == 4


@pytest.mark.parametrize("position", ["mid", "post"])
def test_se_resnet_off_channels_are_zero_inputs_of_conv2(position):
    model = models.create("se-resnet14", width=0.25, se_position=position).eval()
    seen = []
    block = model.stages[0][0]
    block.conv2.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    gates = []
    block.se.gate.register_forward_hook(lambda m, i, o: gates.append(o.detach()))
    with torch.no_grad():
        model(torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    g = gates[0]
    zero_channels = seen[0].abs().amax(dim=(2, 3)) == 0
    if position == "mid":
        assert torch.equal(zero_channels, g == 0)  # off channel = all-zero input channel
    assert g.numel() == 3 * block.se.channels


@pytest.mark.parametrize("method", ["edge-popup", "dense", "binarized"])
def test_se_models_convert_and_train_step(method):
    cfg = SupermaskConfig(density=0.5, seed=3, method=method)
    model = models.create("se-resnet14", cfg, width=0.25, binary=method == "binarized")
    assert all(is_supermask(m) for m in model.modules() if type(m) in (nn.Linear,))
    se_layers = [m for _, b in gate_records(model) for m in (b.fc1, b.fc2)]
    assert se_layers and all(is_supermask(m) for m in se_layers)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    learned = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)
    # the excitation of a hidden network learns through the gate's STE
    fc2 = gate_records(model)[0][1].fc2
    grads = [p.grad for p in fc2.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_bad_arguments_are_config_errors():
    from hiddenite.errors import ConfigError

    with pytest.raises(ConfigError, match="se_position"):
        models.check_arguments("se-resnet14", se_position="after")
    with pytest.raises(ConfigError, match="reduction"):
        models.check_arguments("se-conv4", reduction=0)
    with pytest.raises(ConfigError, match="binary"):
        models.check_arguments("se-conv2", binary="yes")


def test_binary_mode_feeds_both_signs_to_the_block_convolutions():
    model = models.create("se-resnet14", width=0.25, binary=True).train()
    seen = []
    block = model.stages[1][1]
    block.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    block.conv2.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    model(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)))
    conv1_in, conv2_in = seen
    assert set(conv1_in.unique().tolist()) == {-1.0, 1.0}  # not all +1 after the ReLU
    assert set(conv2_in.unique().tolist()) <= {-1.0, 0.0, 1.0}  # ternary: gated channels 0
