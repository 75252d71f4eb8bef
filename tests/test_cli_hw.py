"""End-to-end tests of ``hiddenite simulate`` / ``hiddenite sweep`` and of simulating model files,
checkpoints and zoo names with :func:`hiddenite.hw.simulate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from hiddenite import SupermaskConfig, models, save
from hiddenite.checkpoint import Checkpoint, save_checkpoint
from hiddenite.cli import main
from hiddenite.export import export_checkpoint
from hiddenite.fileformat import read_header
from hiddenite.hw import compare, simulate
from hiddenite.hw.workload import WorkloadError
from hiddenite.train import TrainConfig, build_model

ARCHS = ("hiddenite", "bnn", "int8")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hiddenite: error: ")


@pytest.fixture(scope="module")
def conv2_hnn(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hnn") / "conv2.hnn"
    model = models.create("conv2", SupermaskConfig(density=0.3, seed=1), width=0.125)
    save(model, path)
    return path


@pytest.fixture(scope="module")
def resnet_hnn(tmp_path_factory) -> Path:
    """BatchNorm parameters (affine), a layer kept dense and float16 storage: every kind of model
    data a file holds."""
    path = tmp_path_factory.mktemp("hnn") / "resnet20.hnn"
    model = models.create(
        "resnet20",
        SupermaskConfig(density=0.1, seed=2, keep_first_dense=True),
        width=0.25,
        bn_affine=True,
    )
    model.train()
    with torch.no_grad():  # move the BN statistics away from their defaults
        model(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    save(model, path, codec="rle", param_dtype="float16")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = TrainConfig(
        model="mlp",
        model_kwargs={"hidden": [16]},
        supermask=SupermaskConfig(density=0.3, seed=4),
    )
    model = build_model(config)
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(
        folder / "checkpoint.safetensors",
        Checkpoint(
            config=config.to_dict(),
            epoch=1,
            history=[],
            model_state=model.state_dict(),
            optimizer_state=None,
        ),
    )
    return folder


# ---------------------------------------------------------------------------------------------
# Python surface
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["conv2_hnn", "resnet_hnn"])
def test_hnn_offchip_model_bytes_equal_the_files_model_data(fixture, request):
    path = request.getfixturevalue(fixture)
    info = read_header(path)
    t = info.totals()
    reports = compare(path)
    hid = reports["hiddenite"]
    stored = t["mask_bytes"] + t["float_part_bytes"] + t["param_bytes"]
    # the invariant: coded parts + float parts + per-channel parameters as stored; the header
    # (JSON metadata: architecture, seed, shapes) is not model data the chip loads
    assert hid.totals["model_bytes"] == stored == t["file_bytes"] - t["header_bytes"]
    assert hid.totals["offchip_model_bytes"] == stored
    assert hid.options["source"]["mask_bytes_source"] == "model-file"
    # per layer: the real codec and coded size of the file, charged by the method's cost
    by_name = {e.name: e for e in info.entries}
    assert [r.layer for r in hid.rows] == [e.name for e in info.entries]
    for r in hid.rows:
        entry = by_name[r.layer]
        if entry.method == "dense":  # stored weights: weight traffic, not a mask
            assert (r.weight_source, r.op, r.mask_codec) == ("stored", "mac", "none")
            assert r.dram_weight_read_bytes == entry.bytes and r.dram_mask_read_bytes == 0
        else:
            assert (r.weight_source, r.op, r.weight_bits) == ("prng", "add", 1)
            assert r.mask_codec == entry.codec
            assert r.dram_mask_read_bytes == entry.symbol_bytes
            assert r.dram_weight_read_bytes == entry.float_bytes == 0
            kept = entry.parts[0].counts[1]
            assert r.density == pytest.approx(kept / entry.n)
    assert sum(r.dram_param_read_bytes for r in hid.rows) == t["param_bytes"]
    # BNN: exactly one bit per weight, plus the same parameters
    bnn = reports["bnn"]
    weights = sum((e.n + 7) // 8 for e in info.entries)
    assert bnn.totals["dram_weight_read_bytes"] == weights
    assert bnn.totals["dram_param_read_bytes"] == t["param_bytes"]
    assert {r.weight_source for r in bnn.rows} == {"dram"}


def test_resnet_hnn_has_params_dense_layer_and_float16(resnet_hnn):
    info = read_header(resnet_hnn)
    t = info.totals()
    assert t["param_bytes"] > 0 and t["float_part_bytes"] > 0
    rep = simulate(resnet_hnn)
    first = rep.rows[0]
    n = info.entries[0].n
    # the layer kept dense ships its float16 weights and does a full MAC per weight
    assert (first.weight_source, first.op, first.density) == ("stored", "mac", 1.0)
    assert first.dram_weight_read_bytes == 2 * n and first.prng_steps == 0
    # 32-bit mult + 24-bit add (Horowitz 45 nm), scaled to 40 nm (docs/hw-calibration.md)
    assert first.energy_compute_pj == pytest.approx(first.macs * (3.1 + 0.075) * 40 / 45)
    assert {r.mask_codec for r in rep.rows[1:]} == {"rle"}
    assert rep.options["source"]["stored_layers"] == 1


def test_checkpoint_source_uses_smallest_codec(checkpoint, tmp_path):
    rep = simulate(checkpoint, "hiddenite")
    assert rep.options["source"]["mask_bytes_source"] == "smallest-codec"
    assert [r.layer for r in rep.rows] == ["net.1", "net.3"]
    # the same bytes as the model file export would store (auto codec = smallest per part)
    info = export_checkpoint(checkpoint, tmp_path / "m.hnn")
    t = info.totals()
    assert rep.totals["model_bytes"] == t["file_bytes"] - t["header_bytes"]
    assert rep.totals["model_bytes"] == t["mask_bytes"] + t["param_bytes"]
    assert [r.mask_codec for r in rep.rows] == [e.codec for e in info.entries]
    assert simulate(checkpoint / "checkpoint.safetensors").totals == rep.totals


def test_zoo_name_source():
    ent = simulate("mlp", density=0.1)
    packed = simulate("mlp", density=0.1, codec="packed")
    assert ent.options["source"]["mask_bytes_source"] == "entropy-bound"
    assert packed.options["source"]["mask_bytes_source"] == "packed-exact"
    assert ent.totals["offchip_model_bytes"] < packed.totals["offchip_model_bytes"]
    assert packed.totals["offchip_model_bytes"] == sum(-(-r.macs // 8) for r in packed.rows)
    with pytest.raises(WorkloadError, match="density"):
        simulate("mlp")
    with pytest.raises(WorkloadError, match="no such model file"):
        simulate("missing.hnn")


# ---------------------------------------------------------------------------------------------
# hiddenite simulate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [*ARCHS, "all"])
def test_simulate_cli_writes_tables_csv_json_pngs(arch, conv2_hnn, tmp_path, capsys):
    out = tmp_path / "sim"
    code, stdout, _ = run_cli(capsys, "simulate", str(conv2_hnn), "--arch", arch, "--out", str(out))
    assert code == 0
    shown = ARCHS if arch == "all" else (arch,)
    for a in shown:
        assert f"arch: {a}" in stdout
    assert ("totals side by side" in stdout) == (arch == "all")
    assert "modelled" in stdout
    n_layers = len(read_header(conv2_hnn).entries)
    for a in shown:
        with open(out / f"{a}_layers.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0][:3] == ["layer", "kind", "arch"]
        assert "energy_pj" in rows[0] and "dram_mask_read_bytes" in rows[0]
        assert len(rows) == 1 + n_layers
        doc = json.loads((out / f"{a}.json").read_text())
        assert doc["arch"] == a and len(doc["layers"]) == n_layers
        assert doc["totals"]["offchip_model_bytes"] > 0
        assert (out / f"energy_{a}.png").stat().st_size > 1000
    assert (out / "offchip.png").stat().st_size > 1000


def test_simulate_cli_json_options_and_spec(resnet_hnn, tmp_path, capsys):
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: big-sram\nweight_sram_bytes: 1048576\npe_dims: [8, 4, 4, 32]\n")
    code, stdout, _ = run_cli(
        capsys,
        "simulate",
        str(resnet_hnn),
        "--spec",
        str(spec),
        "--input-shape",
        "1,32,32",
        "--activations-on-chip",
        "--no-skip-masked",
        "--json",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0
    doc = json.loads(stdout)
    assert list(doc["reports"]) == ["big-sram"]
    assert doc["source"]["input_shape"] == [1, 1, 32, 32]
    assert "modelled" in doc["note"]
    assert (tmp_path / "o" / "big-sram_layers.csv").exists()


def test_simulate_cli_checkpoint_and_zoo(checkpoint, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "simulate", str(checkpoint), "--out", str(tmp_path / "a"))
    assert code == 0 and "smallest codec" in stdout
    code, stdout, _ = run_cli(
        capsys, "simulate", "mlp", "--density", "0.2", "--model-arg", "hidden=[32]",
        "--arch", "all", "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert code == 0 and "ENTROPY BOUND" in stdout
    code, stdout, _ = run_cli(
        capsys, "simulate", "mlp", "--density", "0.2", "--codec", "packed", "--json",
        "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 0 and json.loads(stdout)["source"]["mask_bytes_source"] == "packed-exact"


# ---------------------------------------------------------------------------------------------
# hiddenite sweep
# ---------------------------------------------------------------------------------------------
def test_sweep_cli_writes_csv_and_pareto_png(conv2_hnn, tmp_path, capsys):
    out = tmp_path / "sw"
    code, stdout, _ = run_cli(
        capsys, "sweep", str(conv2_hnn),
        "--grid", "pe_dims=16x4x4x16,32x4x4x8",
        "--grid", "weight_sram_bytes=32768,131072",
        "--grid", "density=0.1,0.3",
        "--grid", "codec=packed,entropy",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert "Pareto-optimal" in stdout and "points/s" in stdout
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    assert {r["pe_dims"] for r in rows} == {"16x4x4x16", "32x4x4x8"}
    assert any(r["pareto"] == "True" for r in rows)
    assert (out / "pareto.png").stat().st_size > 1000
    code, stdout, _ = run_cli(
        capsys, "sweep", "mlp", "--grid", "density=0.05,0.5", "--json", "--out", str(out)
    )
    assert code == 0 and json.loads(stdout)["points"] == 2


# ---------------------------------------------------------------------------------------------
# user errors: one line, exit 2
# ---------------------------------------------------------------------------------------------
def test_user_errors_exit_2_with_one_line(conv2_hnn, tmp_path, capsys):
    out = str(tmp_path / "e")
    corrupt = tmp_path / "corrupt.hnn"
    blob = bytearray(conv2_hnn.read_bytes())
    blob[-10:] = bytes(10)  # damage the tensor data (checksum)
    corrupt.write_bytes(bytes(blob))
    truncated = tmp_path / "trunc.hnn"
    truncated.write_bytes(conv2_hnn.read_bytes()[:50])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("pe_dims: [16, 4\n  nope: : :\n")
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text("pe_ic: 16\nnum_pes: 100\n")
    hnn = str(conv2_hnn)
    cases = [
        ("simulate", str(tmp_path / "missing.hnn"), "--out", out),
        ("simulate", str(corrupt), "--out", out),
        ("simulate", str(truncated), "--out", out),
        ("simulate", hnn, "--spec", str(bad_yaml), "--out", out),
        ("simulate", hnn, "--spec", str(impossible), "--out", out),
        ("simulate", hnn, "--spec", str(tmp_path / "nope.yaml"), "--out", out),
        ("simulate", hnn, "--input-shape", "1,28", "--out", out),
        ("simulate", hnn, "--input-shape", "1,32,32", "--out", out),  # conv2 is 28 x 28 only
        ("simulate", hnn, "--density", "0.3", "--out", out),
        ("simulate", "mlp", "--out", out),
        ("sweep", hnn, "--grid", "density", "--out", out),
        ("sweep", hnn, "--grid", "density=0.1,,0.3", "--out", out),
        ("sweep", hnn, "--grid", "nonsense=1,2", "--out", out),
        ("sweep", hnn, "--grid", "num_pes=100,4096", "--out", out),
        ("sweep", hnn, "--grid", "density=0.3,1.5", "--out", out),
        ("sweep", hnn, "--grid", "codec=packed,zip", "--out", out),
        ("sweep", hnn, "--out", out),
        ("sweep", str(tmp_path / "missing.hnn"), "--grid", "density=0.1", "--out", out),
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert_user_error(code, err)
