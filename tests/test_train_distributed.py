"""Tests for data-parallel training (hiddenite.distributed + the torchrun path of train).

One ``python -m torch.distributed.run --standalone --nproc_per_node 2`` launch of
``tests/ddp_worker.py`` (gloo, 2 CPU processes, a free port chosen by the launcher) trains a
tiny hidden MLP several ways and runs ``hiddenite train`` through the CLI; the tests below
compare what it left against one process trained here with the same global batch.

Tolerance: the two runs compute the same mathematics but not the same floating-point sums.
One process takes the mean loss of a 32-example batch in one reduction; two ranks each sum 16
examples, scale by 2/32, and DDP all-reduces (sums) then halves the gradients. float32
rounding differs at about 1e-7 relative per step and grows through 14 SGD steps with
momentum; we allow 1e-5 relative + 1e-6 absolute on the learned scores and 1e-5 on the
losses (measured 2026-12-03: at most 2.2e-8 on scores of magnitude up to 0.28, one or two
float32 ulps, and 5e-8 on the losses). The masks (top-k of the scores) must be identical, and
the accuracies (integer counts) exact.

Batch norm (``BN_CONFIG``, a tiny ``conv2-bn``; ``PNN_CONFIG``, ProgressiveNN any-precision
passes, which normalise per precision): the two processes take the global batch's statistics
(:mod:`hiddenite.sync_batch_norm`), so the same tolerance holds; with ``sync_batch_norm``
off each rank normalises its own half and the result differs measurably (the test that shows
the comparison can fail).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hiddenite import cli, distributed, load
from hiddenite.convert import SupermaskConfig
from hiddenite.data import iterate_batches, piece_bounds
from hiddenite.errors import ConfigError, UserError
from hiddenite.layers import SupermaskLayer
from hiddenite.methods import method_config
from hiddenite.train import TrainConfig, TrainResult, build_model, load_trained, train

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from ddp_worker import data, val_images  # noqa: E402

CONFIG = TrainConfig(
    model="mlp",
    model_kwargs={"image_size": 8, "num_classes": 4, "hidden": [16]},
    supermask=SupermaskConfig(density=0.5, seed=3),
    epochs=2,
    batch_size=32,
    lr=0.1,
    eval_batch_size=50,
    augment=True,
)
RTOL, ATOL = 1e-5, 1e-6
BN_CONFIG = dataclasses.replace(
    CONFIG,
    model="conv2-bn",
    model_kwargs={"image_size": 8, "num_classes": 4, "width": 0.125},
)  # 8 channels, BatchNorm2d after both convolutions, BatchNorm1d(32) x 2 in the head
PNN_CONFIG = dataclasses.replace(
    CONFIG,
    supermask=SupermaskConfig(method=method_config("progressive", bits=4, train_bits=[2, 4])),
    optimizer="adam",
    lr=0.01,
)
EXTRA_CONFIGS = {"bn": BN_CONFIG, "pnn": PNN_CONFIG}
CLI_ARGS = [
    "train", "--dataset", "imagefolder", "--data-option", "size=8", "--data-option", "workers=1",
    "--augment", "--model", "resnet20", "--model-arg", "width=0.25", "--epochs", "2",
    "--batch-size", "8", "--no-progress",
]  # fmt: skip


def write_image_folder(root: Path) -> None:
    """3 classes x 10 small PNG/JPEG images; class c is brightest in channel c."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            array = rng.integers(0, 60, size=(10 + i, 12, 3), dtype=np.uint8)
            array[..., c] += 150
            Image.fromarray(array).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> Path:
    """Run the 2-process worker once; return its folder."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "config.json").write_text(CONFIG.to_json())
    for name, config in EXTRA_CONFIGS.items():
        (folder / f"{name}.json").write_text(config.to_json())
    write_image_folder(folder / "images")
    args = [*CLI_ARGS, "--data-dir", str(folder / "images"), "--out", str(folder / "cli")]
    (folder / "cli_args.json").write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "ddp_worker.py"), str(folder)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder


def single(out: Path, resume: bool = False, **overrides):
    """One process, same config (global batch 32)."""
    cfg = dataclasses.replace(CONFIG, **overrides)
    return train(cfg, out, datasets=data(), log=None, progress=False, resume=resume)


def assert_close_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["epoch"] == y["epoch"] and x["lr"] == y["lr"]
        assert x["train_accuracy"] == y["train_accuracy"]
        assert x["val_accuracy"] == y["val_accuracy"]
        for key in ("train_loss", "val_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), key


# --------------------------------------------------------------------------- 2 processes


def test_two_processes_match_one_process(launch, tmp_path):
    ref = single(tmp_path / "one")
    report = json.loads((launch / "rank0.json").read_text())
    assert_close_history(report["history"], ref.history)
    state = load_file(launch / "rank0.safetensors")
    expected = ref.model.state_dict()
    assert expected  # scores (and nothing frozen)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=RTOL, atol=ATOL)
        assert not torch.equal(value, build_model(CONFIG).state_dict()[key])  # it trained
    # identical masks: rebuild the distributed result and compare the effective weights
    model = build_model(CONFIG)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("frozen.")})
    for (name, a), (_, b) in zip(model.named_modules(), ref.model.named_modules(), strict=True):
        if isinstance(a, SupermaskLayer):
            assert torch.equal(a.effective_weight() != 0, b.effective_weight() != 0), name
    # the checkpoint rank 0 wrote is the final state
    saved = load_file(launch / "full" / "checkpoint.safetensors")
    for key in expected:
        assert torch.equal(saved[f"model.{key}"], state[key])


def test_ranks_end_with_identical_state(launch):
    a = load_file(launch / "rank0.safetensors")
    b = load_file(launch / "rank1.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_frozen_weights_identical_across_ranks_and_regenerated(launch):
    reports = [json.loads((launch / f"rank{r}.json").read_text()) for r in (0, 1)]
    # all-gathered digests: equal across ranks and equal to this process's regeneration
    expected = distributed.frozen_digest(build_model(CONFIG))
    assert reports[0]["digests"] == reports[1]["digests"] == [expected, expected]
    frozen = {k: v for k, v in load_file(launch / "rank1.safetensors").items() if "frozen" in k}
    fresh = dict(build_model(CONFIG).named_buffers())
    assert frozen and all(torch.equal(v, fresh[k[len("frozen.") :]]) for k, v in frozen.items())


def test_frozen_weights_are_never_broadcast(launch):
    # rank 1 perturbed its frozen weights before wrapping in DDP and running a forward pass;
    # they were neither overwritten at construction nor by the per-forward buffer broadcast
    for rank in (0, 1):
        report = json.loads((launch / f"rank{rank}.json").read_text())
        assert report["probe_kept_own_frozen"] is True
        assert report["frozen_names"] == ["net.1.weight", "net.3.weight"]
        assert set(report["frozen_names"]) <= set(report["ignored"])


def test_only_rank_zero_writes(launch):
    assert sorted(p.name for p in (launch / "own0").iterdir()) == [
        "checkpoint.safetensors", "config.json", "metrics.csv", "metrics.json",
    ]  # fmt: skip
    assert not (launch / "own1").exists()


def test_resume_in_distributed_mode(launch, tmp_path):
    # 1 epoch, then resumed to 2 epochs, in both worlds: same result within tolerance
    single(tmp_path / "r", epochs=1)
    ref = single(tmp_path / "r", resume=True)
    report = json.loads((launch / "rank0.json").read_text())
    assert_close_history(report["resumed_history"], ref.history)
    saved = load_file(launch / "resumed" / "checkpoint.safetensors")
    for key, value in ref.model.state_dict().items():
        torch.testing.assert_close(saved[f"model.{key}"], value, rtol=RTOL, atol=ATOL)
    meta = json.loads((launch / "resumed" / "metrics.json").read_text())
    assert [row["epoch"] for row in meta] == [1, 2]


def test_cli_under_torchrun(launch):
    code0, *out0 = (launch / "cli0.txt").read_text().split("\n", 1)
    code1, *out1 = (launch / "cli1.txt").read_text().split("\n", 1)
    assert code0 == code1 == "0"
    assert out1 == [""]  # rank 1 prints nothing
    assert "done:" in out0[0] and "epoch 2/2" in out0[0]
    run = launch / "cli"
    assert {p.name for p in run.iterdir()} == {
        "checkpoint.safetensors", "config.json", "metrics.csv", "metrics.json",
    }  # fmt: skip
    stored = json.loads((run / "config.json").read_text())
    assert stored["batch_size"] == 8 and stored["data_options"]["classes"] == ["ant", "bee", "cat"]


# --------------------------------------------------------------------------- batch norm


def max_state_difference(state: dict, expected: dict) -> float:
    """The largest absolute difference over every float tensor of two state dicts."""
    assert state.keys() == expected.keys()
    return max(
        float((state[k].double() - v.double()).abs().max())
        for k, v in expected.items()
        if v.is_floating_point() and v.numel()
    )


@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_synced_statistics_two_processes_match_one_process(launch, tmp_path, name):
    config = EXTRA_CONFIGS[name]
    ref = train(config, None, datasets=data(), log=None, progress=False)
    report = json.loads((launch / f"{name}-0.json").read_text())
    assert_close_history(report["history"], ref.history)
    # the model train returned holds the plain modules again
    assert report["module_types"] == sorted({type(m).__name__ for m in ref.model.modules()})
    assert "SyncBatchNorm" not in report["module_types"]
    state, expected = load_file(launch / f"{name}-0.safetensors"), ref.model.state_dict()
    if name == "bn":  # 2 BatchNorm2d + 2 BatchNorm1d
        assert sum(k.endswith("running_var") for k in expected) == 4
        assert expected["features.1.num_batches_tracked"].item() == 14  # 7 batches x 2
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=RTOL, atol=ATOL, msg=key)
    assert torch.equal(state[key], load_file(launch / f"{name}-1.safetensors")[key])
    model = build_model(config)
    model.load_state_dict(state)
    for (layer, a), (_, b) in zip(model.named_modules(), ref.model.named_modules(), strict=True):
        if isinstance(a, SupermaskLayer):
            assert torch.equal(a.effective_weight() != 0, b.effective_weight() != 0), layer
    # each rank normalising its own half is a different optimisation, measurably
    local = load_file(launch / f"{name}-local-0.safetensors")
    assert max_state_difference(local, expected) > 1000 * max_state_difference(state, expected)
    assert max_state_difference(local, expected) > 1e-3


@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_synced_run_writes_the_usual_files_and_model(launch, name):
    assert sorted(p.name for p in (launch / f"{name}-sync0").iterdir()) == [
        "checkpoint.safetensors", "config.json", "metrics.csv", "metrics.json",
    ]  # fmt: skip
    assert not (launch / f"{name}-sync1").exists()  # rank 1 writes nothing
    stored = json.loads((launch / f"{name}-sync0" / "config.json").read_text())
    assert stored["sync_batch_norm"] is True
    state = load_file(launch / f"{name}-0.safetensors")
    # the checkpoint (written while the batch norms were swapped) has the plain keys
    model, _ = load_trained(launch / f"{name}-sync0" / "checkpoint.safetensors")
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the .hnn file rank 0 saved after the run loads and predicts bit for bit
    loaded = load(launch / f"{name}.hnn")
    assert {type(m) for m in loaded.modules()} == {type(m) for m in model.modules()}
    logits = load_file(launch / f"{name}-logits.safetensors")["logits"]
    with torch.no_grad():
        assert torch.equal(loaded(val_images()), logits)
        assert torch.equal(model(val_images()), logits)


# --------------------------------------------------------------------------- one process


def test_sharded_batches_concatenate_to_the_unsharded_batch():
    train_set, _ = data()
    g = [torch.Generator().manual_seed(5) for _ in range(4)]
    whole = list(iterate_batches(train_set, 32, shuffle=True, generator=g[0], augment=True))
    parts = [
        list(iterate_batches(
            train_set, 32, shuffle=True, generator=g[1 + r], augment=True, shard=(r, 3)
        ))
        for r in range(3)
    ]  # fmt: skip
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[i][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
    assert [len(p[-1][1]) for p in parts] == [3, 3, 3]  # 201 = 6 x 32 + 9


def test_piece_bounds_cover_in_order():
    for count in range(0, 12):
        for parts in range(1, 5):
            bounds = [piece_bounds(count, r, parts) for r in range(parts)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_environment_world():
    assert distributed.environment_world({}) is None
    w = distributed.environment_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main) == (1, 4, 1, False)
    with pytest.raises(UserError, match="RANK=4 does not lie"):
        distributed.environment_world({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        distributed.environment_world({"WORLD_SIZE": "two"})


def test_frozen_digest_tracks_the_frozen_weights():
    a, b = build_model(CONFIG), build_model(CONFIG)
    assert distributed.frozen_digest(a) == distributed.frozen_digest(b)
    with torch.no_grad():
        b.net[1].weight[0, 0] += 1e-6
    assert distributed.frozen_digest(a) != distributed.frozen_digest(b)
    other = build_model(dataclasses.replace(CONFIG, supermask=SupermaskConfig(density=0.5)))
    assert distributed.frozen_digest(other) != distributed.frozen_digest(a)


def test_global_batch_must_split_evenly(monkeypatch, tmp_path):
    # checked before any collective call, so a fake three-rank world suffices
    monkeypatch.setattr(distributed, "current_world", lambda: distributed.World(0, 3))
    with pytest.raises(UserError, match=r"--batch-size 32 .* not a multiple of the 3 processes"):
        single(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_process_group_rejects_unusable_devices():
    world = distributed.World(0, 2)
    with (
        pytest.raises(UserError, match="use cpu, cuda or auto with torchrun"),
        distributed.process_group(world, "mps"),
    ):
        pass
    if not torch.cuda.is_available():
        with (
            pytest.raises(UserError, match="no CUDA device is available"),
            distributed.process_group(world, "cuda"),
        ):
            pass


def test_sync_batch_norm_option(monkeypatch, tmp_path):
    assert TrainConfig().sync_batch_norm is True
    old = BN_CONFIG.to_dict()
    del old["sync_batch_norm"]  # a config written before the field existed
    assert TrainConfig.from_dict(old).sync_batch_norm is True
    off = dataclasses.replace(BN_CONFIG, sync_batch_norm=False)
    assert TrainConfig.from_dict(json.loads(off.to_json())) == off
    with pytest.raises(ConfigError, match=r"TrainConfig\.sync_batch_norm: must be true or false"):
        dataclasses.replace(BN_CONFIG, sync_batch_norm="yes")
    # one process: the option changes nothing, bit for bit
    bn = {"model": BN_CONFIG.model, "model_kwargs": BN_CONFIG.model_kwargs, "epochs": 1}
    a, b = (single(tmp_path / f"{s}", sync_batch_norm=s, **bn) for s in (True, False))
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    # the CLI flag
    seen = []

    def fake_train(config, out, **kwargs):
        seen.append(config.sync_batch_norm)
        return TrainResult(model=None, config=config, history=[], out_dir=out)

    monkeypatch.setattr(cli, "train", fake_train)
    for flag, expected in (([], True), (["--local-batch-norm"], False)):
        args = ["train", "--out", str(tmp_path / f"cli{expected}"), "--model", "conv2-bn"]
        assert cli.main(args + flag) == 0
    assert seen == [True, False]
