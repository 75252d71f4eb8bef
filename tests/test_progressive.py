"""``hiddenite progressive``: a trained checkpoint at 1..N bits from the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hiddenite import load, models
from hiddenite.cli import main
from hiddenite.data import iterate_batches, load_dataset
from hiddenite.errors import ConfigError
from hiddenite.methods.progressive import (
    ProgressiveConfig,
    precision,
    progressive_layers,
    recalibrate_bn,
    retrain_bn,
)
from hiddenite.progressive import as_progressive, sweep, sweep_table, to_progressive, tune
from hiddenite.train import load_trained
from test_cli import write_fashion_mnist


def test_cli_converts_sweeps_writes_and_saves(tmp_path, capsys):
    data = write_fashion_mnist(tmp_path / "data", 200, 100)
    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--model-arg", "hidden=[16]", "--method", "dense"]
    argv += ["--epochs", "1", "--batch-size", "50", "--no-progress"]
    assert main([*argv, "--data-dir", str(data), "--out", str(run)]) == 0
    capsys.readouterr()
    out, hnn = tmp_path / "out", tmp_path / "p.hnn"
    argv = ["progressive", str(run), "--bits", "1-4", "--recalibrate", "--data-dir", str(data)]
    assert (
        main([*argv, "--calibration-examples", "100", "--out", str(out), "--model-file", str(hnn)])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["bits", "accuracy", "recalibrated", "compute", "energy/inf"]
    assert [line.split()[0] for line in lines[1:5]] == ["1", "2", "3", "4"]
    rows = json.loads((out / "progressive.json").read_text())
    assert [r["relative_compute"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert (out / "progressive.png").stat().st_size > 0
    # the file holds the 4-bit network and its recalibrated statistics, exact at every precision
    model, _ = load_trained(run)
    again = load(hnn)
    assert all(layer.method_config.bits == 4 for _, layer in progressive_layers(again))
    prog = to_progressive(model, 4)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(), precision(prog, 4), precision(again, 4):
        assert torch.equal(again(x), prog(x))  # N bits: recalibration is the identity
    stats = progressive_layers(again)[0][1].pnn_var
    assert not torch.equal(stats[0], stats[3])


def test_cli_rejects_bad_bits(tmp_path, capsys):
    for bad in ("0-3", "1-9", "a,b"):
        assert main(["progressive", str(tmp_path), "--bits", bad]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("hiddenite: error: --bits"), err


def test_cli_runs_an_any_precision_checkpoint_from_its_own_digits(tmp_path, capsys):
    """Trained with --method progressive and train_bits, the checkpoint is swept as it is
    (its digits and per-precision statistics, not re-quantized); --retrain-bn adds the
    column of per-precision batch norm retrained, and the model file stores that model."""
    data = write_fashion_mnist(tmp_path / "data", 200, 100)
    run = tmp_path / "run"
    argv = ["train", "--model", "conv2-bn", "--model-arg", "width=0.125"]
    argv += ["--method", "progressive"]
    argv += ["--method-arg", "bits=3", "--method-arg", "train_bits=[1,2,3]"]
    argv += ["--method-arg", "affine=true", "--epochs", "1", "--batch-size", "50"]
    argv += ["--no-progress", "--data-dir", str(data), "--out", str(run)]
    assert main(argv) == 0
    capsys.readouterr()
    hnn = tmp_path / "p.hnn"
    argv = ["progressive", str(run), "--bits", "1-3", "--retrain-bn", "1", "--data-dir", str(data)]
    argv += ["--calibration-examples", "100", "--out", str(tmp_path / "out")]
    assert main([*argv, "--model-file", str(hnn)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "bits", "accuracy", "recalibrated", "retrained", "compute", "energy/inf"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    rows = json.loads((tmp_path / "out" / "progressive.json").read_text())
    assert all(r["accuracy_retrained"] is not None for r in rows)
    trained, _ = load_trained(run)
    again = load(hnn)
    x = torch.randn(4, 1, 28, 28)
    for (name, a), (_, b) in zip(
        progressive_layers(trained), progressive_layers(again), strict=True
    ):
        assert b.method_config == a.method_config  # train_bits and affine kept
        for n in (1, 2, 3):  # the same digits at every precision
            with precision(trained, n), precision(again, n):
                assert torch.equal(a.method.raw_weight(a), b.method.raw_weight(b)), name
        assert not torch.equal(a.pnn_gamma, b.pnn_gamma)  # retrained
    # the file is the tuned model: exactly what tune() computes
    calib = load_dataset("fashion-mnist", "train", data).subset(range(100))
    want = tune(trained, calib, [1, 2, 3], retrain_epochs=1, batch_size=1000)
    with torch.no_grad():
        for n in (1, 2, 3):
            with precision(want, n), precision(again, n):
                assert torch.equal(again(x), want(x))


def test_cli_retrain_bn_errors(tmp_path, capsys):
    data = write_fashion_mnist(tmp_path / "data", 100, 50)
    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--method", "progressive"]
    argv += ["--method-arg", "bits=2", "--epochs", "1", "--batch-size", "50", "--no-progress"]
    assert main([*argv, "--data-dir", str(data), "--out", str(run)]) == 0
    capsys.readouterr()
    base = ["progressive", str(run), "--bits", "1-2", "--data-dir", str(data)]
    base += ["--out", str(tmp_path / "out")]
    for extra, words in (
        (["--retrain-bn", "-1"], "--retrain-bn"),
        (["--retrain-bn", "1"], "affine"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and words in err[0], err
    assert main([*base[:3], "1-4", *base[4:]]) == 2  # above the stored N = 2
    assert "outside 1..2" in capsys.readouterr().err


def test_tune_is_recalibration_then_batch_norm_retraining_per_precision():
    train = load_dataset("fashion-mnist", "train").subset(torch.arange(400))
    torch.manual_seed(0)
    plain = models.create("mlp", hidden=(16,))
    prog = to_progressive(plain, ProgressiveConfig(bits=3, affine=True))
    before = copy.deepcopy(prog.state_dict())
    got = tune(prog, train, [1, 2], retrain_epochs=1, batch_size=100)
    for key, value in prog.state_dict().items():  # the input is left alone
        assert torch.equal(value, before[key])
    want = copy.deepcopy(prog)
    batches = list(iterate_batches(train, 100, shuffle=False, generator=None, augment=False))
    recalibrate_bn(want, [x for x, _ in batches], [1, 2])
    retrain_bn(want, batches, 1)
    retrain_bn(want, batches, 2)
    for key, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key
    assert as_progressive(got, ProgressiveConfig(bits=8)).state_dict().keys() == (
        got.state_dict().keys()
    )
    rows = sweep(prog, train, [1, 3], calibration=train, retrain_epochs=1, batch_size=100)
    assert all(r["accuracy_retrained"] is not None for r in rows)
    assert "retrained" in sweep_table(rows).splitlines()[0]
    assert "retrained" not in sweep_table(sweep(prog, train, [1])).splitlines()[0]
    with pytest.raises(ConfigError, match="calibration"):
        sweep(prog, train, [1], retrain_epochs=1)
    with pytest.raises(ConfigError, match="epochs"):
        tune(prog, train, [1], retrain_epochs=-1)
