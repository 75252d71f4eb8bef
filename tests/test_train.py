"""Tests for hiddenite.train: the training loop, its config, schedule and rebuild from seed.

Every model here is a tiny MLP (or Conv-2 at 1/8 width) trained on small in-memory data sets
passed as ``datasets=(train, val)``, so nothing reads Fashion-MNIST from disk.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from hiddenite import train as train_mod
from hiddenite.checkpoint import CheckpointError, load_checkpoint
from hiddenite.convert import ConfigError, SupermaskConfig
from hiddenite.data import Dataset
from hiddenite.layers import SupermaskLayer
from hiddenite.methods import method_config
from hiddenite.train import (
    TrainConfig,
    TrainResult,
    build_model,
    evaluate,
    learning_rate,
    load_trained,
    predict,
    train,
)

COLUMNS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]
MLP_KWARGS = {"image_size": 8, "num_classes": 4, "hidden": [16]}
GLOBAL = method_config("edge-popup", scope="global")


# --------------------------------------------------------------------------- helpers


def quadrant_data(n: int, seed: int, split: str = "train") -> Dataset:
    """8x8 one-channel images; the class (0..3) is the brightest 4x4 quadrant."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 150
    return Dataset("fashion-mnist", images, labels, 4, (0.3,), (0.35,), split=split)


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset]:
    return quadrant_data(192, seed=0), quadrant_data(64, seed=1, split="val")


def config(**overrides) -> TrainConfig:
    base = dict(
        model="mlp",
        model_kwargs=dict(MLP_KWARGS),
        supermask=SupermaskConfig(density=0.5, seed=3),
        epochs=2,
        batch_size=32,
        lr=0.1,
        eval_batch_size=50,
    )
    base.update(overrides)
    return TrainConfig(**base)


def run(cfg: TrainConfig, data, out=None, **kwargs) -> TrainResult:
    return train(cfg, out, datasets=data, log=None, progress=False, **kwargs)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def is_hidden(module) -> bool:
    """An edge-popup supermask layer (frozen weights, learned scores)."""
    return isinstance(module, SupermaskLayer) and module.method.name == "edge-popup"


def scores_of(model) -> dict[str, torch.Tensor]:
    return {name: m.scores.detach().clone() for name, m in model.named_modules() if is_hidden(m)}


class Stop(Exception):
    """Raised from the log callback to interrupt a run."""


# --------------------------------------------------------------------------- learning


def test_tiny_hidden_mlp_learns(data):
    _, val_set = data
    cfg = config(epochs=3)
    before = evaluate(build_model(cfg), val_set, 64)
    result = run(cfg, data)
    after = evaluate(result.model, val_set, 64)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.9  # chance is 0.25
    history = result.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] == pytest.approx(after["accuracy"])
    assert history[-1]["val_loss"] == pytest.approx(after["loss"], rel=1e-5)
    # only the scores moved: the frozen weights are still the seed's
    fresh = build_model(cfg)
    moved = False
    for (name, m), (_, f) in zip(result.model.named_modules(), fresh.named_modules(), strict=True):
        if isinstance(m, SupermaskLayer):
            assert torch.equal(m.weight, f.weight), name
            moved |= not torch.equal(m.scores, f.scores)
    assert moved
    assert not result.model.training
    assert result.out_dir is None


def test_predict_matches_evaluate(data):
    _, val_set = data
    result = run(config(epochs=1), data)
    pred = predict(result.model, val_set, batch_size=7)
    assert pred.dtype == torch.int64 and pred.shape == (len(val_set),)
    accuracy = float((pred == val_set.labels).float().mean())
    assert accuracy == pytest.approx(evaluate(result.model, val_set, 13)["accuracy"])


def test_evaluate_empty_dataset_is_nan(data):
    empty = data[1].subset([])
    metrics = evaluate(build_model(config()), empty)
    assert math.isnan(metrics["loss"]) and math.isnan(metrics["accuracy"])
    assert predict(build_model(config()), empty).shape == (0,)


def test_same_config_twice_is_bit_identical(data):
    cfg = config(warmup_epochs=0.5, augment=True)
    a, b = run(cfg, data), run(cfg, data)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    assert_same_state(scores_of(a.model), scores_of(b.model))
    assert without_seconds(a.history) == without_seconds(b.history)


def test_data_seed_changes_the_run(data):
    a = run(config(epochs=1, data_seed=1), data)
    b = run(config(epochs=1, data_seed=2), data)
    assert any(
        not torch.equal(x, y)
        for x, y in zip(scores_of(a.model).values(), scores_of(b.model).values(), strict=True)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(optimizer="sgd", warmup_epochs=0.5),
        dict(optimizer="adam", lr=0.01),
        dict(optimizer="sgd", score_decay=False, augment=True),
        dict(
            optimizer="adam",
            lr=0.01,
            supermask=SupermaskConfig(
                method=method_config("progressive", bits=3, train_bits=[1, 3], affine=True),
                density=1.0,
            ),
        ),
    ],
    ids=["sgd-warmup", "adam", "sgd-no-score-decay-augment", "any-precision"],
)
def test_resume_after_interruption_is_bit_identical(tmp_path, data, overrides):
    cfg = config(epochs=2, **overrides)
    straight = run(cfg, data, tmp_path / "straight")

    def interrupt(message: str) -> None:
        if message.startswith("epoch 2/"):
            raise Stop  # after epoch 1's checkpoint, before epoch 2's

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        train(cfg, out, datasets=data, log=interrupt, progress=False)
    assert load_checkpoint(out).epoch == 1
    resumed = run(cfg, data, out, resume=True)

    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert without_seconds(straight.history) == without_seconds(resumed.history)
    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(out)
    assert a.epoch == b.epoch == 2
    assert a.config == b.config
    assert_same_state(a.model_state, b.model_state)
    assert a.optimizer_state["param_groups"] == b.optimizer_state["param_groups"]
    for index, values in a.optimizer_state["state"].items():
        for name, value in values.items():
            other = b.optimizer_state["state"][index][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (index, name)
            else:
                assert value == other
    assert without_seconds(json.loads((out / "metrics.json").read_text())) == without_seconds(
        straight.history
    )


def test_a_method_declaring_passes_trains_through_them(data):
    """ProgressiveNN with train_bits: the training loop runs the method's passes. With the
    N-bit pass alone, the passes change no gradient (that pass is plain quantization-aware
    training), so the weights equal those of a run without train_bits bit for bit, while the
    running per-precision statistics were tracked; with a second precision they differ."""

    def progressive(**args):
        method = method_config("progressive", bits=3, **args)
        return config(
            epochs=1, optimizer="adam", lr=0.01, supermask=SupermaskConfig(method=method, density=1)
        )

    plain = run(progressive(), data).model
    top_only = run(progressive(train_bits=[3]), data).model
    both = run(progressive(train_bits=[1, 3]), data).model
    a, b, c = (m.state_dict() for m in (plain, top_only, both))
    for key in a:
        if key.endswith(("pnn_mean", "pnn_var")):
            assert torch.equal(a[key], torch.zeros_like(a[key]) + a[key][0])  # untouched
            assert not torch.equal(b[key][-1], a[key][-1])  # N-bit statistics tracked
            assert torch.equal(b[key][0], b[key][-1])  # 1 bit not trained: follows N
            assert not torch.equal(c[key][0], c[key][-1])  # 1 bit trained: its own
        else:
            assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    assert [layer.pnn_bits for layer in both.modules() if hasattr(layer, "pnn_bits")] == [3] * 2
    assert list(train_mod.training_passes(plain)) == [1.0]


def test_resume_extends_a_finished_run(tmp_path, data):
    first = run(config(epochs=1), data, tmp_path)
    # the stored config wins; only epochs may grow (here lr=5.0 is ignored)
    extended = run(config(epochs=2, lr=5.0), data, tmp_path, resume=True)
    assert extended.config == dataclasses.replace(first.config, epochs=2)
    assert [row["epoch"] for row in extended.history] == [1, 2]
    assert extended.history[0] == first.history[0]
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())).epochs == 2
    assert load_checkpoint(tmp_path).epoch == 2
    # asking for fewer epochs than stored: nothing to do, the stored model comes back
    again = run(config(epochs=1), data, tmp_path, resume=True)
    assert again.config.epochs == 2
    assert len(again.history) == 2
    assert_same_state(again.model.state_dict(), extended.model.state_dict())


def test_resume_needs_out_dir(data):
    with pytest.raises(ValueError, match="out_dir"):
        run(config(), data, None, resume=True)


# --------------------------------------------------------------------------- run folder


def test_run_folder_files(tmp_path, data):
    cfg = config(epochs=2)
    result = run(cfg, data, tmp_path / "run")
    out = tmp_path / "run"
    assert result.out_dir == out
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "metrics.csv",
        "metrics.json",
    ]
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg
    with open(out / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert len(rows) == 2
    for row, expected in zip(rows, result.history, strict=True):
        assert int(row["epoch"]) == expected["epoch"]
        for key in COLUMNS[1:]:
            assert float(row[key]) == expected[key]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.history
    assert all(list(row) == COLUMNS for row in metrics)
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 2
    assert ckpt.history == result.history
    assert TrainConfig.from_dict(ckpt.config) == cfg
    steps = math.ceil(len(data[0]) / cfg.batch_size)
    for row in result.history:
        assert row["lr"] == learning_rate(cfg, row["epoch"] * steps - 1, steps)
        assert row["seconds"] >= 0
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1


def test_training_without_a_validation_set(tmp_path, data):
    no_val = (data[0], data[1].subset([]))
    result = run(config(epochs=1, val_fraction=0.0), no_val, tmp_path)
    row = result.history[0]
    assert math.isnan(row["val_loss"]) and math.isnan(row["val_accuracy"])
    assert row["train_accuracy"] > 0.25
    assert math.isnan(load_checkpoint(tmp_path).history[0]["val_loss"])


def test_metrics_json_is_standard_json_without_a_validation_set(tmp_path, data):
    no_val = (data[0], data[1].subset([]))
    run(config(epochs=1, val_fraction=0.0), no_val, tmp_path)

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=reject)


def test_log_lines(data):
    lines: list[str] = []
    train(config(epochs=2), datasets=data, log=lines.append, progress=False)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2  train loss ")
    assert "val loss" in lines[1] and lines[1].endswith(" s)")


def test_checkpoint_holds_scores_not_frozen_weights(tmp_path, data):
    cfg = config(
        epochs=1,
        model_kwargs={**MLP_KWARGS, "hidden": [16, 8]},
        supermask=SupermaskConfig(density=0.5, seed=3, keep_last_dense=True),
    )
    result = run(cfg, data, tmp_path)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    model_keys = {k for k in keys if k.startswith("model.")}
    # net.1 and net.3 are hidden, net.5 (the last layer) is a dense twin
    assert model_keys == {"model.net.1.scores", "model.net.3.scores", "model.net.5.weight"}
    assert {k for k in keys if k.startswith("optimizer.")} == {
        f"optimizer.{i}.momentum_buffer" for i in range(3)
    }
    dense = result.model.net[5]
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as fh:
        assert torch.equal(fh.get_tensor("model.net.5.weight"), dense.weight)


def test_dense_method_trains_the_weights(tmp_path, data):
    cfg = config(epochs=2, supermask=SupermaskConfig(method="dense", seed=3), lr=0.05)
    result = run(cfg, data, tmp_path)
    fresh = build_model(cfg)
    for name, param in result.model.named_parameters():
        assert name.endswith(".weight")
        assert not torch.equal(param, dict(fresh.named_parameters())[name]), name
    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.model_state) == {"net.1.weight", "net.3.weight"}
    assert result.history[-1]["val_accuracy"] > 0.9


def test_dense_twin_starts_from_the_hidden_weights(data):
    hidden = build_model(
        config(supermask=SupermaskConfig(density=0.5, seed=3, scale_by_density=False))
    )
    dense = build_model(config(supermask=SupermaskConfig(method="dense", seed=3)))
    assert torch.equal(hidden.net[1].weight, dense.net[1].weight)
    assert dense.net[1].density == 1.0  # a dense layer keeps every weight, unscaled
    # with the default scaled init the hidden weights are the dense ones / sqrt(density)
    scaled = build_model(config())
    assert torch.allclose(scaled.net[1].weight * 0.5**0.5, dense.net[1].weight, rtol=1e-6)


# --------------------------------------------------------------------------- rebuild from seed


@pytest.mark.parametrize(
    "model, kwargs, supermask",
    [
        ("mlp", MLP_KWARGS, SupermaskConfig(density=0.3, seed=11)),
        ("mlp", MLP_KWARGS, SupermaskConfig(density=0.5, seed=2, method=GLOBAL)),
        ("mlp", MLP_KWARGS, SupermaskConfig(density=0.5, seed=2, keep_first_dense=True)),
        (
            "conv2",
            {"image_size": 8, "num_classes": 4, "width": 0.125},
            SupermaskConfig(density=0.5, seed=5, init="kaiming-normal", scale_by_density=True),
        ),
    ],
    ids=["mlp", "mlp-global", "mlp-first-dense", "conv2"],
)
def test_load_trained_rebuilds_identical_outputs(tmp_path, data, model, kwargs, supermask):
    cfg = config(model=model, model_kwargs=dict(kwargs), supermask=supermask, epochs=1)
    result = run(cfg, data, tmp_path)
    rebuilt, loaded_cfg = load_trained(tmp_path / "checkpoint.safetensors")
    assert loaded_cfg == cfg
    assert not rebuilt.training
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(result.model(x), rebuilt(x))
    assert torch.equal(predict(result.model, data[1]), predict(rebuilt, data[1]))
    # the frozen weights came from the seed, not from the file
    for (name, a), (_, b) in zip(
        result.model.named_modules(), rebuilt.named_modules(), strict=True
    ):
        if isinstance(a, SupermaskLayer):
            assert torch.equal(a.weight, b.weight), name
            assert a.method_config == b.method_config and a.density == b.density
            if is_hidden(a):
                assert torch.equal(a.mask(), b.mask()), name
                assert (a.mask_group is None) == (b.mask_group is None), name


def test_load_trained_from_run_folder(tmp_path, data):
    result = run(config(epochs=1), data, tmp_path)
    model, cfg = load_trained(tmp_path)
    assert cfg == result.config
    assert torch.equal(predict(model, data[1]), predict(result.model, data[1]))


def test_build_model_uses_dataset_shape_and_overrides():
    cfg = config(model_kwargs={})
    model = build_model(cfg)
    assert model.net[1].in_features == 28 * 28 and model.net[-1].out_features == 10
    model = build_model(config())
    assert model.net[1].in_features == 64 and model.net[-1].out_features == 4
    assert all(is_hidden(m) for m in model.modules() if isinstance(m, SupermaskLayer))


# --------------------------------------------------------------------------- learning rate


def test_learning_rate_warmup_then_cosine():
    cfg = config(lr=0.1, epochs=2, warmup_epochs=0.5)
    steps = 4  # total 8 steps, warm-up round(0.5 * 4) = 2 steps
    expected = {
        0: 0.05,  # 0.1 * 1/2
        1: 0.1,  # 0.1 * 2/2
        2: 0.1,  # cosine starts at the peak
        3: 0.1 * 0.5 * (1 + math.cos(math.pi * 1 / 6)),
        5: 0.05,  # progress 3/6 = 1/2
        7: 0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 6)),
        8: 0.0,
        100: 0.0,  # past the end: clamped
    }
    for step, value in expected.items():
        assert learning_rate(cfg, step, steps) == pytest.approx(value, abs=1e-15), step


def test_learning_rate_without_warmup():
    cfg = config(lr=0.2, epochs=1, warmup_epochs=0.0)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.2)
    assert learning_rate(cfg, 5, 10) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 10) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.9)))
    values = [learning_rate(cfg, s, 10) for s in range(10)]
    assert values == sorted(values, reverse=True)


def test_learning_rate_all_warmup():
    cfg = config(lr=0.3, epochs=1, warmup_epochs=1.0)
    assert [learning_rate(cfg, s, 3) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- optimizer groups


def test_score_decay_false_puts_scores_in_a_zero_decay_group():
    cfg = config(
        weight_decay=0.01,
        score_decay=False,
        supermask=SupermaskConfig(density=0.5, seed=3, keep_last_dense=True),
    )
    model = build_model(cfg)
    opt = train_mod._optimizer(model, cfg)
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(model.net[1].scores)}
    assert {id(p) for p in decay["params"]} == {id(model.net[3].weight)}


def test_score_decay_true_is_one_group():
    cfg = config(weight_decay=0.01)
    model = build_model(cfg)
    opt = train_mod._optimizer(model, cfg)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(model.net[1].scores),
        id(model.net[3].scores),
    }


def test_score_decay_false_trains_and_checkpoints_two_groups(tmp_path, data):
    # an all-hidden MLP leaves the decay group empty: training must still work
    result = run(config(epochs=1, score_decay=False, weight_decay=0.5), data, tmp_path)
    groups = load_checkpoint(tmp_path).optimizer_state["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert groups[0]["params"] == [] and len(groups[1]["params"]) == 2
    assert result.history[0]["val_accuracy"] > 0.5


def test_adam_optimizer(data):
    result = run(config(optimizer="adam", lr=0.01, epochs=2), data)
    assert result.history[-1]["val_accuracy"] > 0.9


# --------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "nope"),
        ("model_kwargs", {"depth": 3}),
        ("supermask", {"density": 0.5}),
        ("dataset", "imagenet"),
        ("epochs", 0),
        ("epochs", 1.5),
        ("epochs", True),
        ("batch_size", 0),
        ("batch_size", "32"),
        ("eval_batch_size", -1),
        ("train_subset", -1),
        ("train_subset", 2.0),
        ("train_subset", False),
        ("optimizer", "rmsprop"),
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", math.inf),
        ("lr", math.nan),
        ("lr", "0.1"),
        ("momentum", -0.1),
        ("momentum", 1.01),
        ("weight_decay", -1e-4),
        ("weight_decay", True),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("warmup_epochs", -1.0),
        ("warmup_epochs", 3.0),  # more than epochs=2
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("data_seed", -1),
        ("data_seed", 1.5),
        ("data_seed", True),
        ("version", 2),
    ],
)
def test_config_rejects_bad_field(field, value):
    with pytest.raises(ConfigError, match=rf"^TrainConfig\.{field}: "):
        config(**{field: value})


@pytest.mark.parametrize(
    "field, value", [("score_decay", "false"), ("augment", "yes"), ("model_kwargs", ["width"])]
)
def test_config_rejects_non_bool_flags_and_non_dict_kwargs(field, value):
    with pytest.raises(ConfigError, match=rf"^TrainConfig\.{field}: "):
        config(**{field: value})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(momentum=1.0),
        dict(momentum=0.0, weight_decay=0.0, label_smoothing=0.0),
        dict(val_fraction=0.0, data_seed=0, train_subset=0),
        dict(warmup_epochs=2.0),
        dict(dataset="fmnist"),
        dict(lr=1),
    ],
)
def test_config_accepts_edge_values(overrides):
    config(**overrides)


def test_config_defaults_and_seed_for_data():
    cfg = TrainConfig()
    assert (cfg.model, cfg.dataset, cfg.optimizer, cfg.epochs) == (
        "conv4",
        "fashion-mnist",
        "sgd",
        5,
    )
    assert cfg.seed_for_data == cfg.supermask.seed == 0
    assert config(supermask=SupermaskConfig(seed=9)).seed_for_data == 9
    assert config(supermask=SupermaskConfig(seed=9), data_seed=4).seed_for_data == 4


def test_config_json_round_trip():
    cfg = config(
        supermask=SupermaskConfig(density=0.25, seed=7, method=GLOBAL, keep_first_dense=True),
        optimizer="adam",
        lr=0.003,
        score_decay=False,
        warmup_epochs=0.5,
        label_smoothing=0.1,
        augment=True,
        val_fraction=0.2,
        train_subset=100,
        data_seed=5,
    )
    data = cfg.to_dict()
    assert isinstance(data["supermask"], dict)
    assert TrainConfig.from_dict(json.loads(json.dumps(data))) == cfg
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert json.loads(cfg.to_json()) == data
    assert TrainConfig.from_dict({}) == TrainConfig()
    assert TrainConfig.from_dict({"epochs": 3}).epochs == 3


def test_config_from_dict_rejects_unknown_and_non_object():
    with pytest.raises(ConfigError, match=r"unknown field.*colour"):
        TrainConfig.from_dict({**config().to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="expected a JSON object"):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"SupermaskConfig\.density"):
        TrainConfig.from_dict({"supermask": {"density": 2.0}})


def test_config_from_dict_reads_a_version_1_supermask():
    # run folders written before the method seam store mode/scope (SupermaskConfig version 1)
    old = {
        **config().to_dict(),
        "supermask": {
            "density": 0.25,
            "seed": 7,
            "mode": "hidden",
            "scope": "global",
            "version": 1,
        },
    }
    cfg = TrainConfig.from_dict(json.loads(json.dumps(old)))
    assert cfg.supermask == SupermaskConfig(density=0.25, seed=7, method=GLOBAL)
    assert cfg.to_dict()["supermask"]["version"] == 2
    dense = {**old, "supermask": {"mode": "dense", "seed": 7, "version": 1}}
    assert TrainConfig.from_dict(dense).supermask == SupermaskConfig(method="dense", seed=7)


# --------------------------------------------------------------------------- mixed precision


def test_bf16_autocast_trains_in_float32_state(data):
    _, val_set = data
    plain, amp = run(config(epochs=3), data), run(config(epochs=3, amp="bf16"), data)
    assert evaluate(amp.model, val_set, 64)["accuracy"] > 0.9  # learns like float32
    assert all(v.dtype == torch.float32 for v in amp.model.state_dict().values())
    # bfloat16 keeps 8 significant bits: the runs differ, but by rounding, not by much
    a, b = scores_of(plain.model), scores_of(amp.model)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert amp.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"], rel=0.2)
    assert TrainConfig.from_dict(json.loads(config(amp="bf16").to_json())).amp == "bf16"
    with pytest.raises(ConfigError, match="amp: unknown 'fp8'"):
        config(amp="fp8")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_classes": 5}, "num_classes=5 does not fit fashion-mnist"),
        ({"in_channels": 3}, "in_channels=3 does not fit fashion-mnist"),
        ({"image_size": 32}, "image_size=32 does not fit fashion-mnist"),
    ],
)
def test_model_arguments_that_do_not_fit_the_data_set(tmp_path, kwargs, words):
    config = TrainConfig(model="mlp", model_kwargs=kwargs, epochs=1)
    with pytest.raises(ConfigError, match=words):  # before the data is even looked for
        train(config, tmp_path / "run", data_dir=tmp_path / "no-data", log=None)
    assert not (tmp_path / "run").exists()


def test_model_arguments_must_fit_given_data(tmp_path, data):
    wrong = config(model_kwargs={**MLP_KWARGS, "num_classes": 3})
    with pytest.raises(ConfigError, match="num_classes=3 does not fit the training data"):
        run(wrong, data)


def _tamper(run, edit):
    """Rewrite ``run``'s checkpoint with ``edit(meta, tensors)`` applied, checksums renewed."""
    import hashlib

    from safetensors.torch import save_file

    from hiddenite.checkpoint import tensors_sha256

    path = run / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["hiddenite"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    edit(meta, tensors)
    meta["tensors_sha256"] = tensors_sha256(tensors)
    text = json.dumps(meta)
    sha = hashlib.sha256(text.encode()).hexdigest()
    save_file(tensors, str(path), metadata={"hiddenite": text, "hiddenite_sha256": sha})


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m, t: m["optimizer"]["param_groups"][0].pop("momentum"), "lacks"),
        (lambda m, t: m.update(epoch=-1), "epoch -1"),
        (lambda m, t: m.update(epoch=99), "exceeds its config's epochs"),
        (lambda m, t: m["config"]["model_kwargs"].update(hidden=[9]), "does not fit its model"),
        (lambda m, t: m["history"].append(5), "history"),
        (lambda m, t: m["optimizer"]["param_groups"][0].update(params="x"), "'params'"),
    ],
    ids=["no-momentum", "negative-epoch", "epoch-past-config", "other-args", "history", "params"],
)
def test_resume_and_load_share_one_validation(tmp_path, data, edit, words):
    cfg = config(epochs=1)
    folder = tmp_path / "run"
    train(cfg, folder, datasets=data, log=None, progress=False)
    _tamper(folder, edit)
    before = (folder / "checkpoint.safetensors").read_bytes()
    longer = dataclasses.replace(cfg, epochs=2)
    with pytest.raises(CheckpointError, match=words):
        train(longer, folder, resume=True, datasets=data, log=None, progress=False)
    with pytest.raises(CheckpointError, match=words):  # the same checks, state unused
        load_trained(folder)
    assert (folder / "checkpoint.safetensors").read_bytes() == before


def test_a_boolean_version_is_refused():
    with pytest.raises(ConfigError, match="version: True"):
        TrainConfig(version=True)


def test_a_last_batch_of_one_is_skipped_only_for_batch_norm_models(monkeypatch):
    """33 examples in batches of 32: the last batch holds one example, which training-mode
    batch norm cannot normalise (torch raises); a model with batch norms skips it, an MLP
    trains on it."""
    datasets = (quadrant_data(33, seed=4), quadrant_data(16, seed=5, split="val"))
    steps = []
    real_step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    kwargs = {"image_size": 8, "num_classes": 4, "width": 0.125}
    bn = config(model="conv2-bn", model_kwargs=kwargs, epochs=1)
    result = train(bn, datasets=datasets, progress=False, log=None)
    assert math.isfinite(result.history[-1]["train_loss"])
    with_bn = len(steps)
    steps.clear()
    train(config(epochs=1), datasets=datasets, progress=False, log=None)
    assert (with_bn, len(steps)) == (1, 2)


@pytest.mark.parametrize(
    ("batch", "size", "synced", "smallest"),
    [
        (5, None, False, 5),
        (1, None, True, 1),
        (5, 2, False, 2),  # pieces 3 and 2
        (3, 2, False, 1),  # pieces 2 and 1: a local batch norm would see one example
        (3, 2, True, 3),  # synced: the whole batch
        (1, 2, True, 0),  # a rank gets nothing
        (2, 4, False, 0),
    ],
)
def test_smallest_group_a_batch_norm_normalises(batch, size, synced, smallest):
    world = None if size is None else train_mod.distributed.World(rank=0, size=size)
    assert train_mod._smallest_group(batch, world, synced) == smallest
