"""The command line's precision flags end to end on a tiny Fashion-MNIST look-alike:
``train --act-bits / --operator / --operator-phase``, ``eval --operator``, ``export`` ->
``inspect`` / ``simulate`` reading the activation bits and operators from the file,
``simulate --operator``, and one-line errors (exit code 2) for bad values. Also the Python
``train()`` hook (``TrainConfig.act_quant`` / ``operator``)."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hiddenite.checkpoint import load_checkpoint
from hiddenite.cli import main
from hiddenite.data import load_dataset
from hiddenite.errors import ConfigError
from hiddenite.hw import get_preset
from hiddenite.hw.model import load_source
from hiddenite.ops import OperatorChoice, operator_for, use_operator
from hiddenite.quant import ActQuantConfig, quantizers
from hiddenite.train import TrainConfig, evaluate, load_trained, train

MLP = ["--model", "mlp", "--model-arg", "hidden=[16]"]
FAST = ["--epochs", "1", "--batch-size", "64", "--no-progress"]


def write_fashion_mnist(folder: Path, n_train: int = 256, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">I", 0x00000800 | array.ndim)
            head += b"".join(struct.pack(">I", d) for d in array.shape)
            raw = gzip.compress(head + array.tobytes(), compresslevel=1)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(raw)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def run(data_dir: Path, out: Path, *flags: str) -> Path:
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(out), *flags]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "exact": run(data_dir, root / "exact"),
        "infer": run(data_dir, root / "infer", "--operator", "mitchell", "--operator-phase",
                     "inference"),
        "both": run(data_dir, root / "both", "--operator", "mitchell"),
        "q4": run(data_dir, root / "q4", "--act-bits", "4", "--operator", "mitchell",
                  "--operator-phase", "inference", "--act-calibration-batches", "2"),
    }  # fmt: skip


def layer_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def scores(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path / "checkpoint.safetensors").model_state
    return {k: v for k, v in state.items() if k.endswith("scores")}


def test_train_flags_reach_the_config_and_the_model(runs):
    config = json.loads((runs["q4"] / "config.json").read_text())
    assert config["act_quant"]["bits"] == 4 and config["calibration_batches"] == 2
    assert config["operator"] == {"training": "exact", "inference": "mitchell"}
    model, cfg = load_trained(runs["q4"])
    assert cfg.act_quant == ActQuantConfig(bits=4)
    qs = quantizers(model)
    assert [n for n, _ in qs] == ["net.3.act_quant"] and all(q.frozen for _, q in qs)
    assert {operator_for(m).name for m in model.modules() if hasattr(m, "scores")} == {"mitchell"}
    both = json.loads((runs["both"] / "config.json").read_text())
    assert both["operator"] == {"training": "mitchell", "inference": "mitchell"}
    assert json.loads((runs["exact"] / "config.json").read_text())["act_quant"] is None


def test_inference_only_operator_leaves_training_unchanged(runs):
    """Phase "inference": the training steps are the exact ones, bit for bit; "both" (the
    default phase) trains through Mitchell products and ends elsewhere."""
    exact, infer, both = (scores(runs[k]) for k in ("exact", "infer", "both"))
    assert exact.keys() == infer.keys() == both.keys() and exact
    assert all(torch.equal(exact[k], infer[k]) for k in exact)
    assert not all(torch.equal(exact[k], both[k]) for k in exact)


def test_eval_uses_the_runs_operator_and_operator_overrides_it(runs, data_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs["infer"]), "--data-dir", str(data_dir), "--json"]) == 0
    mitchell = json.loads(capsys.readouterr().out)
    assert mitchell["operators"] == {"net.1": "mitchell", "net.3": "mitchell"}
    argv = ["eval", str(runs["infer"]), "--data-dir", str(data_dir), "--json"]
    assert main([*argv, "--operator", "exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["operators"] == {}
    # the same weights as the exact run: the exact evaluation equals that run's
    assert main(["eval", str(runs["exact"]), "--data-dir", str(data_dir), "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert exact["loss"] == reference["loss"] and exact["accuracy"] == reference["accuracy"]
    # and the Mitchell evaluation is what evaluate() gives with the operator set by hand
    model, _ = load_trained(runs["exact"])
    use_operator(model, "mitchell", phase="inference")
    want = evaluate(model, load_dataset("fashion-mnist", "test", data_dir))
    assert mitchell["loss"] == want["loss"] and mitchell["accuracy"] == want["accuracy"]
    assert main(["eval", str(runs["infer"]), "--data-dir", str(data_dir)]) == 0
    assert "operator mitchell)" in capsys.readouterr().out


def test_exported_file_declares_act_bits_and_operator_for_inspect_and_simulate(
    runs, tmp_path, capsys
):
    path = tmp_path / "q4.hnn"
    assert main(["export", str(runs["q4"]), "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "hiddenite-model v4" in text
    assert "activations into net.3: 4-bit unsigned" in text
    assert "operator of net.3: exact in training, mitchell in inference" in text
    assert main(["simulate", str(path), "--out", str(tmp_path / "s"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"]["act_bits"] == {"net.3": 4}
    assert doc["source"]["log_datapath_layers"] == ["net.1", "net.3"]
    argv = ["simulate", str(path), "--out", str(tmp_path / "e"), "--json", "--arch", "int8"]
    assert main([*argv, "--operator", "exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["source"]["log_datapath_layers"] == [] and exact["source"]["operator"] == "exact"
    argv[3] = str(tmp_path / "e2")
    assert main(argv) == 0
    log = json.loads(capsys.readouterr().out)
    # int8 baseline: each MAC's multiplier is charged as its operator declares; independent
    # arithmetic from the energy table: Mitchell saves pe_ops x (mult(8) - log_mult(8)) pJ
    # (operands max(4 or 8 act bits, 8 weight bits) = 8 bits) on every layer
    e = get_preset("int8").energy
    with_exact = layer_rows(tmp_path / "e" / "int8_layers.csv")
    with_log = layer_rows(tmp_path / "e2" / "int8_layers.csv")
    assert [r["datapath"] for r in with_log] == ["log", "log"]
    assert [r["datapath"] for r in with_exact] == ["exact", "exact"]
    for a, b in zip(with_exact, with_log, strict=True):
        saving = float(a["energy_compute_pj"]) - float(b["energy_compute_pj"])
        assert saving == pytest.approx(int(a["pe_ops"]) * (e.mult(8) - e.log_mult(8)), rel=1e-9)
    assert log["reports"]["int8"]["energy_pj"] < exact["reports"]["int8"]["energy_pj"]
    assert main(["simulate", str(path), "--out", str(tmp_path / "t")]) == 0
    assert "activation bits from the model: net.3 4; log-multiplier layers: net.1, net.3" in (
        capsys.readouterr().out
    )


def test_checkpoint_and_its_file_cost_the_same(runs, tmp_path):
    """simulate of a run folder and of its exported file see the same act bits, datapaths
    and per-channel bytes (the quantizers' buffers are not per-channel data in either)."""
    path = tmp_path / "q4.hnn"
    assert main(["export", str(runs["q4"]), "-o", str(path)]) == 0
    from_run, _ = load_source(str(runs["q4"]))
    from_file, _ = load_source(str(path))
    for a, b in zip(from_run, from_file, strict=True):
        assert (a.name, a.act_bits, a.datapath, a.param_bytes) == (
            b.name,
            b.act_bits,
            b.datapath,
            b.param_bytes,
        )
    assert [w.act_bits for w in from_file] == [0, 4]


def test_simulate_operator_on_a_zoo_name(tmp_path, capsys):
    argv = ["simulate", "conv2", "--density", "0.5", "--arch", "int8", "--json"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    exact = json.loads(capsys.readouterr().out)["reports"]["int8"]
    assert main([*argv, "--out", str(tmp_path / "b"), "--operator", "mitchell"]) == 0
    log = json.loads(capsys.readouterr().out)["reports"]["int8"]
    assert log["energy_pj"] < exact["energy_pj"] and log["cycles"] == exact["cycles"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--act-bits", "1"], "--act-bits '1': give an integer in 2..16"),
        (["--act-bits", "17"], "--act-bits '17': give an integer in 2..16"),
        (["--act-bits", "four"], "--act-bits 'four': give an integer in 2..16"),
        (["--act-calibration-batches", "0"], "--act-calibration-batches '0': give a positive"),
        (["--operator", "fast"], "--operator 'fast': unknown operator; use one of exact, "),
        (["--operator-phase", "inference"], "--operator-phase needs --operator NAME"),
        (["--operator", "mitchell", "--operator-phase", "sideways"], "--operator-phase 'sidew"),
        (["--operator", "mitchell", "--amp", "bf16"], "TrainConfig.operator: training with"),
    ],
)
def test_bad_train_values_are_one_line_errors(tmp_path, data_dir, capsys, flags, message):
    argv = ["train", *MLP, *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "r")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hiddenite: error: {message}"), err
    assert not (tmp_path / "r").exists()


def test_bad_operator_on_eval_and_simulate(runs, data_dir, tmp_path, capsys):
    for argv in (
        ["eval", str(runs["exact"]), "--data-dir", str(data_dir), "--operator", "log"],
        ["simulate", "mlp", "--density", "0.5", "--out", str(tmp_path / "s"), "--operator", ""],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--operator" in err[0] and "unknown operator" in err[0]


def test_python_train_api_takes_quantizers_and_operator(data_dir):
    full = load_dataset("fashion-mnist", "train", data_dir)
    sets = (full.subset(range(128)), full.subset(range(128, 160)))
    config = TrainConfig(
        model="mlp",
        model_kwargs={"hidden": [16]},
        epochs=1,
        batch_size=64,
        act_quant=ActQuantConfig(bits=3),
        calibration_batches=1,
        operator=OperatorChoice("exact", "mitchell"),
    )
    lines: list[str] = []
    result = train(config, datasets=sets, progress=False, log=lines.append)
    assert lines[0] == "calibrated 3-bit activation quantizers on 1 batches"
    ((name, q),) = quantizers(result.model)
    assert name == "net.3.act_quant" and q.frozen and q.bits == 3
    assert operator_for(result.model.net[3]).name == "mitchell"  # eval mode after training
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize(
    "change,match",
    [
        ({"operator": {"training": "exact"}}, "TrainConfig.operator: expected"),
        ({"operator": {"training": "exact", "inference": "slide"}}, "unknown operator 'slide'"),
        ({"operator": "mitchell"}, "TrainConfig.operator: expected"),
        ({"act_quant": {"bits": 40}}, "ActQuantConfig.bits"),
        ({"act_quant": 8}, "ActQuantConfig: expected a JSON object"),
        ({"calibration_batches": 0}, "TrainConfig.calibration_batches"),
    ],
)
def test_train_config_rejects_bad_precision_fields(change, match):
    data = {**TrainConfig(model="mlp").to_dict(), **change}
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)
