"""Tests for the ``hiddenite`` command line: train, eval, summary, run and user errors.

Everything runs in-process through :func:`hiddenite.cli.main` on a tiny Fashion-MNIST
look-alike (random 28x28 IDX files in a temporary folder), except one subprocess test that
checks the real exit code and stderr of ``python -m hiddenite``.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiddenite import main_job
from hiddenite.checkpoint import load_checkpoint, save_checkpoint
from hiddenite.cli import main
from hiddenite.data import load_dataset
from hiddenite.methods import METHODS
from hiddenite.summary import summary
from hiddenite.train import TrainConfig, evaluate, load_trained

N_TRAIN, N_TEST = 256, 200
N_VAL = round(0.1 * N_TRAIN)  # the default --val-fraction
MLP = ["--model", "mlp", "--model-arg", "hidden=[16]"]
FAST = ["--epochs", "1", "--batch-size", "64", "--no-progress"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_fashion_mnist(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), N_TRAIN, N_TEST)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    """A finished one-epoch MLP run (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("runs") / "mlp"
    assert main(["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def user_error(capsys, argv: list[str]) -> str:
    """Run ``argv``; assert exit code 2 and one stderr line; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hiddenite: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- train


def test_train_writes_the_run_folder(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "conv2", "--model-arg", "width=0.125", "--density", "0.3"]
    argv += ["--seed", "3", *FAST, "--data-dir", str(data_dir), "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0].startswith("epoch 1/1  train loss ")
    match = re.fullmatch(
        rf"done: {re.escape(str(out))}/checkpoint\.safetensors  \(val accuracy (\d\.\d{{4}})\)",
        stdout[-1],
    )
    assert match, stdout[-1]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "metrics.csv",
        "metrics.json",
    ]
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (config.model, config.model_kwargs, config.epochs) == ("conv2", {"width": 0.125}, 1)
    assert (config.supermask.density, config.supermask.seed) == (0.3, 3)
    assert (config.optimizer, config.lr, config.batch_size) == ("sgd", 0.1, 64)
    history = json.loads((out / "metrics.json").read_text())
    assert len(history) == 1
    assert float(match.group(1)) == pytest.approx(history[0]["val_accuracy"], abs=5e-5)
    assert round(history[0]["val_accuracy"] * N_VAL) == pytest.approx(
        history[0]["val_accuracy"] * N_VAL
    )


def test_train_options_reach_the_config(tmp_path, data_dir):
    out = tmp_path / "run"
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(out)]
    argv += ["--optimizer", "adam", "--no-score-decay", "--warmup-epochs", "0.5"]
    argv += ["--label-smoothing", "0.1", "--augment", "--val-fraction", "0.2"]
    argv += ["--train-subset", "100", "--weight-decay", "0.001", "--momentum", "0.5"]
    argv += ["--method", "edge-popup", "--init", "kaiming-normal", "--keep-first-dense"]
    argv += ["--method-arg", "scope=global", "--scale-by-density", "--keep-last-dense"]
    assert main(argv) == 0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.optimizer == "adam" and config.lr == 0.01  # adam's default peak rate
    assert config.score_decay is False and config.augment is True
    assert (config.warmup_epochs, config.label_smoothing) == (0.5, 0.1)
    assert (config.val_fraction, config.train_subset) == (0.2, 100)
    assert (config.weight_decay, config.momentum) == (0.001, 0.5)
    sm = config.supermask
    assert (sm.method_name, sm.init, sm.method.scope) == ("edge-popup", "kaiming-normal", "global")
    assert sm.scale_by_density and sm.keep_first_dense and sm.keep_last_dense
    assert config.model_kwargs == {"hidden": [16]}


def test_train_resume_continues_a_run(tmp_path, run_dir, data_dir, capsys):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    argv = ["train", *MLP, "--epochs", "2", "--no-progress", "--resume"]
    assert main([*argv, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "epoch 2/2" in stdout and "epoch 1/2" not in stdout
    history = json.loads((out / "metrics.json").read_text())
    first = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0] == first[0]


# --------------------------------------------------------------------------- eval


def test_eval_prints_accuracy(run_dir, data_dir, capsys):
    assert main(["eval", str(run_dir), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out.strip()
    match = re.fullmatch(
        rf"fashion-mnist test: accuracy (\d\.\d{{4}})  loss (\d+\.\d{{4}})  \({N_TEST} examples\)",
        out,
    )
    assert match, out
    model, _ = load_trained(run_dir)
    expected = evaluate(model, load_dataset("fashion-mnist", "test", data_dir))
    assert float(match.group(1)) == pytest.approx(expected["accuracy"], abs=5e-5)
    assert float(match.group(2)) == pytest.approx(expected["loss"], abs=5e-5)


def test_eval_json(run_dir, data_dir, capsys):
    checkpoint = run_dir / "checkpoint.safetensors"
    assert main(["eval", str(checkpoint), "--data-dir", str(data_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"checkpoint", "dataset", "examples", "operators", "loss", "accuracy"}
    assert data["operators"] == {}  # exact products everywhere
    assert data["checkpoint"] == str(checkpoint)
    assert data["dataset"] == "fashion-mnist" and data["examples"] == N_TEST
    assert 0 <= data["accuracy"] <= 1 and data["loss"] > 0
    assert round(data["accuracy"] * N_TEST) == pytest.approx(data["accuracy"] * N_TEST)


# --------------------------------------------------------------------------- summary


def test_summary_of_a_zoo_model(capsys):
    assert main(["summary", *MLP, "--density", "0.25"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"]
    assert lines[2].split()[:4] == ["net.1", "SupermaskLinear", "edge-popup", "16x784"]
    assert lines[3].split()[:4] == ["net.3", "SupermaskLinear", "edge-popup", "10x16"]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:3] == ["12,704", "0.250"]
    assert lines[-1].startswith("compression vs float32:")


def test_summary_json_of_a_zoo_model(capsys):
    argv = ["summary", "--model", "conv2", "--model-arg", "width=0.125", "--method", "dense"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == [
        "features.0",
        "features.2",
        "classifier.1",
        "classifier.3",
        "classifier.5",
    ]
    assert all(layer["kind"] in ("SupermaskConv2d", "SupermaskLinear") for layer in data["layers"])
    t = data["totals"]
    assert t["density"] == 1.0 and t["part_bytes"] == 4 * t["weights"]
    assert all(layer["method"] == "dense" for layer in data["layers"])
    assert t["weights"] == 8 * 9 + 8 * 8 * 9 + 8 * 14 * 14 * 32 + 32 * 32 + 32 * 10


def test_summary_of_a_checkpoint(run_dir, capsys):
    assert main(["summary", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model, _ = load_trained(run_dir)
    assert data == json.loads(summary(model, print_fn=None).to_json())
    assert main(["summary", str(run_dir / "checkpoint.safetensors")]) == 0
    assert capsys.readouterr().out == summary(model, print_fn=None).table() + "\n"


# --------------------------------------------------------------------------- run


def test_run_quick_trains_both_and_rebuilds(tmp_path, data_dir, monkeypatch, capsys):
    # --quick evaluates on the first 1000 validation/test images; the tiny data set has fewer
    monkeypatch.setattr(main_job, "QUICK_TEST_SUBSET", 20)
    out = tmp_path / "job"
    argv = ["run", "--quick", "--data-dir", str(data_dir), "--out", str(out)]
    assert main([*argv, "--train-subset", "64"]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "rebuilt predictions identical on 20 test images: True" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["rebuilt"]["predictions_identical"] is True
    assert report["data"] == {"train": 64, "val": 20, "test": 20}
    assert report["epochs"] == main_job.QUICK_EPOCHS
    assert report["hidden"]["config"]["supermask"]["method"]["name"] == "edge-popup"
    assert report["dense"]["config"]["supermask"]["method"]["name"] == "dense"
    assert report["rebuilt"]["test_accuracy"] == report["hidden"]["test_accuracy"]
    for label in ("hidden", "dense"):
        assert (out / label / "checkpoint.safetensors").is_file()
        assert len(json.loads((out / label / "metrics.json").read_text())) == 1
    assert report["sizes"]["stored_bytes"] < report["sizes"]["float32_bytes"]


def test_run_quick_on_a_small_data_set(tmp_path, data_dir, capsys):
    out = tmp_path / "job"
    argv = ["run", "--quick", "--data-dir", str(data_dir), "--out", str(out)]
    code = main([*argv, "--train-subset", "64"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["rebuilt"]["predictions_identical"]


def test_run_missing_data_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = user_error(
        capsys, ["run", "--quick", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]
    )
    assert "Fashion-MNIST not found" in line and "--data-dir" in line


@NO_CUDA
def test_run_device_cuda_without_gpu_is_a_user_error(tmp_path, data_dir, capsys):
    argv = ["run", "--data-dir", str(data_dir), "--out", str(tmp_path / "job")]
    line = user_error(capsys, [*argv, "--epochs", "1", "--train-subset", "32", "--device", "cuda"])
    assert "cuda" in line


def test_run_unknown_device_is_a_user_error(tmp_path, data_dir, capsys):
    argv = ["run", "--data-dir", str(data_dir), "--out", str(tmp_path / "job")]
    line = user_error(capsys, [*argv, "--epochs", "1", "--train-subset", "32", "--device", "bogus"])
    assert "bogus" in line


# --------------------------------------------------------------------------- user errors


def test_missing_data_set_names_the_fix(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", *MLP, *FAST, "--data-dir", str(empty), "--out", str(tmp_path / "run")]
    line = user_error(capsys, argv)
    assert "Fashion-MNIST not found" in line and str(empty) in line
    assert "apt-get" in line or "--data-dir" in line
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_eval_with_missing_test_set(tmp_path, run_dir, capsys):
    line = user_error(capsys, ["eval", str(run_dir), "--data-dir", str(tmp_path / "nowhere")])
    assert "no such folder" in line and "--data-dir" in line


@pytest.mark.parametrize("density", ["0", "1.5", "-0.5", "nan"])
@pytest.mark.parametrize("command", ["train", "summary"])
def test_bad_density(tmp_path, capsys, command, density):
    argv = [command, *MLP, "--density", density]
    if command == "train":
        argv += ["--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)]
    line = user_error(capsys, argv)
    assert "SupermaskConfig.density" in line and "(0, 1]" in line


@pytest.mark.parametrize(
    "argv, words",
    [
        (["summary", "--model", "mlp", "--model-arg", "width"], ["--model-arg 'width'", "KEY="]),
        (["summary", "--model", "mlp", "--model-arg", "=3"], ["--model-arg '=3'"]),
        (["summary", "--model", "mlp", "--model-arg", "depth=3"], ["depth"]),
        (["summary", "--seed", "-1", "--model", "mlp"], ["SupermaskConfig.seed"]),
    ],
    ids=["no-equals", "no-key", "unknown-kwarg", "negative-seed"],
)
def test_bad_model_arguments(capsys, argv, words):
    line = user_error(capsys, argv)
    for word in words:
        assert word in line


@pytest.mark.parametrize(
    "method_args, words",
    [
        (["--method", "frozen", "--method-arg", "pruned=0.7", "--method-arg", "locked=0.3"],
         ["pruned + locked must be < 1"]),
        (["--method", "multicoat", "--method-arg", "coat_ratios=[0.5,0.7]"], ["coat_ratios"]),
        (["--method", "analog", "--method-arg", "bits=0"], ["bits"]),
        (["--method", "edge-popup", "--method-arg", "depth=3"], ["no argument(s) depth"]),
        (["--method", "signed", "--method-arg", "scope"], ["--method-arg 'scope'", "KEY="]),
    ],
    ids=["frozen-p-plus-r", "coats-not-nested", "analog-zero-bits", "unknown-arg", "no-value"],
)  # fmt: skip
def test_impossible_method_arguments_are_one_line_errors(capsys, method_args, words):
    line = user_error(capsys, ["summary", *MLP, *method_args])
    for word in words:
        assert word in line


def test_every_method_summarises_from_the_command_line(capsys):
    for name in sorted(METHODS):
        assert main(["summary", *MLP, "--method", name, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert {layer["method"] for layer in data["layers"]} == {name}


@pytest.mark.parametrize(
    "model_args",
    [
        ["--model", "mlp", "--model-arg", "hidden=16"],
        ["--model", "conv2", "--model-arg", "width=abc"],
    ],
    ids=["mlp-hidden-int", "conv2-width-str"],
)
@pytest.mark.parametrize("command", ["summary", "train"])
def test_model_argument_of_the_wrong_type(tmp_path, data_dir, capsys, command, model_args):
    argv = [command, *model_args]
    if command == "train":
        argv += [*FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "run")]
    line = user_error(capsys, argv)
    assert "hidden" in line or "width" in line


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--epochs", "0"], "TrainConfig.epochs"),
        (["--batch-size", "0"], "TrainConfig.batch_size"),
        (["--lr", "0"], "TrainConfig.lr"),
        (["--val-fraction", "1"], "TrainConfig.val_fraction"),
        (["--warmup-epochs", "9"], "TrainConfig.warmup_epochs"),
        (["--train-subset", "-1"], "TrainConfig.train_subset"),
    ],
)
def test_bad_training_settings(tmp_path, capsys, extra, field):
    argv = ["train", *MLP, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path), *extra]
    assert field in user_error(capsys, argv)


def test_eval_missing_checkpoint(tmp_path, capsys):
    line = user_error(capsys, ["eval", str(tmp_path / "nope.safetensors")])
    assert "no such checkpoint" in line and "hiddenite train" in line
    line = user_error(capsys, ["eval", str(tmp_path)])  # a folder without a run
    assert "checkpoint.safetensors: no such checkpoint" in line


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "file too short"),
        (b"\x00" * 3 + b"garbage" * 50, "bad header length"),
        (b"{" * 8 + b"}" * 100, "bad header length"),
    ],
    ids=["empty", "garbage", "braces"],
)
@pytest.mark.parametrize("command", ["eval", "summary"])
def test_corrupt_checkpoint(tmp_path, capsys, command, content, words):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(content)
    line = user_error(capsys, [command, str(path)])
    assert str(path) in line and words in line


def test_truncated_checkpoint(tmp_path, run_dir, capsys):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes((run_dir / "checkpoint.safetensors").read_bytes()[:-100])
    assert "corrupt checkpoint" in user_error(capsys, ["eval", str(tmp_path)])


def test_checkpoint_that_does_not_fit_its_model(tmp_path, run_dir, capsys):
    state = load_checkpoint(run_dir)
    state.config["model_kwargs"] = {"hidden": [32]}  # the stored scores are 16 wide
    save_checkpoint(tmp_path / "checkpoint.safetensors", state)
    line = user_error(capsys, ["eval", str(tmp_path)])
    assert "does not fit its model" in line
    state.config["epochs"] = 0
    save_checkpoint(tmp_path / "checkpoint.safetensors", state)
    assert "config is invalid" in user_error(capsys, ["summary", str(tmp_path)])


def test_train_into_an_existing_run_needs_resume(run_dir, data_dir, capsys):
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(run_dir)]
    line = user_error(capsys, argv)
    assert "already holds a run" in line and "--resume" in line
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before


def test_resume_without_a_run(tmp_path, data_dir, capsys):
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "x")]
    assert "no such checkpoint" in user_error(capsys, [*argv, "--resume"])


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_device_cuda_without_gpu(tmp_path, run_dir, data_dir, capsys, device):
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "run")]
    line = user_error(capsys, [*argv, "--device", device])
    assert "no CUDA device" in line and "--device cpu" in line
    line = user_error(
        capsys, ["eval", str(run_dir), "--data-dir", str(data_dir), "--device", device]
    )
    assert "no CUDA device" in line


def test_unknown_device(tmp_path, run_dir, data_dir, capsys):
    line = user_error(
        capsys, ["eval", str(run_dir), "--data-dir", str(data_dir), "--device", "gpu"]
    )
    assert "--device 'gpu'" in line


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--model", "nope", "--out", "x"], "invalid choice: 'nope'"),
        (["summary", "--model", "vgg"], "invalid choice: 'vgg'"),
        (["train", "--model", "mlp"], "--out"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["summary", "--density", "half"], "invalid float value"),
    ],
    ids=["unknown-model", "unknown-model-summary", "no-out", "unknown-command", "none", "float"],
)
def test_argparse_errors_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "train", "eval", "summary"):
        assert command in out


# --------------------------------------------------------------------------- real process


def test_python_dash_m_exit_codes_and_stderr(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "hiddenite", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("usage: hiddenite")
    assert ok.stderr == ""

    bad = subprocess.run(
        [sys.executable, "-m", "hiddenite", "eval", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("hiddenite: error: ")
    assert "no such checkpoint" in lines[0]
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--epochs", "0"], "--epochs must be at least 1"),
        (["run", "--train-subset", "-5"], "--train-subset must be >= 0"),
    ],
)
def test_run_rejects_impossible_budgets(capsys, argv, words):
    assert words in user_error(capsys, argv)


def test_train_takes_the_methods_own_optimizer_unless_one_is_given(tmp_path, monkeypatch):
    """binarized declares Adam at 0.01 (SGD at 0.1 does not train it); an explicit flag wins."""
    import hiddenite.cli as cli

    seen = []
    monkeypatch.setattr(cli, "train", lambda config, *a, **k: seen.append(config) or _stop())
    for extra, expected in [
        ([], ("adam", 0.01)),
        (["--optimizer", "sgd"], ("sgd", 0.1)),
        (["--lr", "0.05"], ("sgd", 0.05)),
    ]:
        with pytest.raises(_StopError):
            cli.main(["train", "--model", "mlp", "--method", "binarized", "--out",
                      str(tmp_path / f"r{len(seen)}"), *extra])  # fmt: skip
        assert (seen[-1].optimizer, seen[-1].lr) == expected
    with pytest.raises(_StopError):
        cli.main(["train", "--model", "mlp", "--out", str(tmp_path / "e")])
    assert (seen[-1].optimizer, seen[-1].lr) == ("sgd", 0.1)  # edge-popup: the CLI's defaults


def test_train_takes_the_methods_own_init_unless_one_is_given(tmp_path, monkeypatch):
    """progressive declares Kaiming-normal latent weights (and Adam at 1e-3): from one
    magnitude the 1-bit digit cannot tell weights apart; an explicit --init wins."""
    import hiddenite.cli as cli

    seen = []
    monkeypatch.setattr(cli, "train", lambda config, *a, **k: seen.append(config) or _stop())
    for method, extra, init in [
        ("progressive", [], "kaiming-normal"),
        ("progressive", ["--init", "signed-constant"], "signed-constant"),
        ("edge-popup", [], "signed-constant"),
    ]:
        with pytest.raises(_StopError):
            cli.main(["train", "--model", "mlp", "--method", method, "--out",
                      str(tmp_path / f"r{len(seen)}"), *extra])  # fmt: skip
        assert seen[-1].supermask.init == init
    assert (seen[0].optimizer, seen[0].lr) == ("adam", 0.001)


class _StopError(Exception):
    """Raised by a stand-in for ``train``: the test only needs the config it was given."""


def _stop():
    raise _StopError


def test_train_frozen_composed_with_trichromatic(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(out)]
    argv += ["--method", "frozen", "--method-arg", "inner=trichromatic", "--density", "0.3"]
    argv += ["--method-arg", 'inner_args={"sign_density": 0.25}', "--method-arg", "locked=0.05"]
    assert main(argv) == 0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    method = config.supermask.method
    assert (method.inner, method.locked) == ("trichromatic", 0.05)
    assert method.inner_config.sign_density == 0.25
    capsys.readouterr()
    bad = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "bad")]
    line = user_error(capsys, [*bad, "--method", "frozen", "--method-arg", "inner=binarized"])
    assert "inner 'binarized' cannot be frozen" in line
