"""End-to-end tests of ``hiddenite export`` and ``hiddenite inspect`` (and ONNX export)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiddenite import SupermaskConfig, fileformat, load
from hiddenite.checkpoint import Checkpoint, save_checkpoint
from hiddenite.cli import main
from hiddenite.train import TrainConfig, build_model, load_trained


def _checkpoint(folder: Path, config: TrainConfig) -> Path:
    """A checkpoint as training writes it, with moved BN statistics (no data needed)."""
    model = build_model(config)
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 1, 28, 28, generator=gen))
    path = folder / "checkpoint.safetensors"
    save_checkpoint(
        path,
        Checkpoint(
            config=config.to_dict(),
            epoch=1,
            history=[],
            model_state=model.state_dict(),
            optimizer_state=None,
        ),
    )
    return path


@pytest.fixture(scope="module")
def conv_checkpoint(tmp_path_factory) -> Path:
    config = TrainConfig(
        model="conv4",
        model_kwargs={"width": 0.125},
        supermask=SupermaskConfig(density=0.1, seed=3),
    )
    return _checkpoint(tmp_path_factory.mktemp("conv"), config)


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> Path:
    config = TrainConfig(
        model="resnet20",
        model_kwargs={"width": 0.25},
        supermask=SupermaskConfig(density=0.3, seed=5, keep_first_dense=True),
    )
    return _checkpoint(tmp_path_factory.mktemp("resnet"), config)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_then_inspect(tmp_path, capsys, conv_checkpoint):
    out = tmp_path / "model.hnn"
    code, text, err = run_cli(capsys, "export", str(conv_checkpoint), "-o", str(out))
    assert code == 0, err
    assert f"wrote {out}" in text and "bit/weight" in text
    original, _ = load_trained(conv_checkpoint)
    loaded = load(out)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))

    code, table, err = run_cli(capsys, "inspect", str(out))
    assert code == 0, err
    for word in ("features.0", "classifier.5", "entropy", "edge-popup", "float32", "binarized"):
        assert word in table
    assert f"file {out.stat().st_size:,} bytes" in table

    code, text, err = run_cli(capsys, "inspect", str(out), "--json")
    assert code == 0, err
    report = json.loads(text)
    totals = report["totals"]
    assert totals["file_bytes"] == out.stat().st_size
    assert report["arch"]["name"] == "conv4"
    assert report["arch"]["kwargs"] == {
        "image_size": 28,
        "in_channels": 1,
        "num_classes": 10,
        "width": 0.125,
    }
    assert len(report["layers"]) == 7
    for row in report["layers"]:
        assert [p["name"] for p in row["parts"]] == ["mask"]
        assert row["parts"][0]["alphabet"] == 2 and sum(row["parts"][0]["counts"]) == row["weights"]
        assert row["bits_per_weight"] == pytest.approx(8 * row["bytes"] / row["weights"])
        assert row["float32_bytes"] == 4 * row["weights"]
        assert row["binarized_bytes"] == (row["weights"] + 7) // 8
    assert totals["mask_bytes"] < totals["binarized_bytes"] / 1.8  # k = 0.1: H(k) = 0.47
    assert totals["mask_bytes"] <= 1.05 * totals["entropy_bound_bytes"] + 32 * 7


@pytest.mark.parametrize(
    ("codec", "dtype"), [("packed", "float32"), ("rle", "float16"), ("entropy", "float32")]
)
def test_export_codec_and_param_dtype(tmp_path, capsys, resnet_checkpoint, codec, dtype):
    out = tmp_path / "model.hnn"
    code, _, err = run_cli(
        capsys,
        "export",
        str(resnet_checkpoint),
        "-o",
        str(out),
        "--codec",
        codec,
        "--param-dtype",
        dtype,
    )
    assert code == 0, err
    info = fileformat.read_header(out)
    assert info.meta["param_dtype"] == dtype
    hidden = [e for e in info.entries if e.method == "edge-popup"]
    assert {e.codec for e in hidden} == {codec}
    first = info.entries[0]
    assert first.method == "dense" and first.codec == "-"
    assert first.parts[0].alphabet is None and first.parts[0].bytes == first.n * (
        2 if dtype == "float16" else 4
    )
    original, _ = load_trained(resnet_checkpoint)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref, got = original(x), load(out)(x)
    if dtype == "float32":
        assert torch.equal(ref, got)
    else:
        torch.testing.assert_close(got, ref, rtol=5e-2, atol=5e-2)


def test_export_onnx_matches_onnxruntime(tmp_path, capsys, resnet_checkpoint):
    ort = pytest.importorskip("onnxruntime")
    out, onnx_path = tmp_path / "model.hnn", tmp_path / "model.onnx"
    code, text, err = run_cli(
        capsys, "export", str(resnet_checkpoint), "-o", str(out), "--onnx", str(onnx_path)
    )
    assert code == 0, err
    assert f"wrote {onnx_path}" in text
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = load(out)
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_corrupt_file_is_one_line_and_exit_code_2(tmp_path, capsys, conv_checkpoint):
    out = tmp_path / "model.hnn"
    assert run_cli(capsys, "export", str(conv_checkpoint), "-o", str(out))[0] == 0
    blob = out.read_bytes()
    bad = tmp_path / "bad.hnn"
    bad.write_bytes(blob[: len(blob) // 3])
    code, text, err = run_cli(capsys, "inspect", str(bad))
    assert code == 2 and text == ""
    assert err.startswith("hiddenite: error: ") and err.count("\n") == 1
    assert str(bad) in err

    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "absent.hnn"))
    assert code == 2 and "no such model file" in err

    # the real console script: exit status and stderr of a separate process
    proc = subprocess.run(
        [sys.executable, "-m", "hiddenite", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("hiddenite: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_inspect_reads_the_header_only(tmp_path, capsys, conv_checkpoint):
    """A payload byte flip is invisible to inspect (header only) but stops load."""
    out = tmp_path / "model.hnn"
    assert run_cli(capsys, "export", str(conv_checkpoint), "-o", str(out))[0] == 0
    blob = bytearray(out.read_bytes())
    blob[-1] ^= 0xFF
    out.write_bytes(bytes(blob))
    code, _, err = run_cli(capsys, "inspect", str(out))
    assert code == 0, err
    with pytest.raises(fileformat.ModelFormatError, match="payload checksum"):
        load(out)


def test_export_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", str(tmp_path / "none"), "-o", str(tmp_path / "m"))
    assert code == 2 and err.startswith("hiddenite: error: ")
