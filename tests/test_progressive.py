"""``hiddenite progressive``: a trained checkpoint at 1..N bits from the command line."""

from __future__ import annotations

import json

import torch

from hiddenite import load
from hiddenite.cli import main
from hiddenite.methods.progressive import precision, progressive_layers
from hiddenite.progressive import to_progressive
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
