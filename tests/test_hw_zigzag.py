"""Cross-check against ZigZag (zigzag-dse); the ZigZag run is skipped when it is not installed.

The full comparison is ``benchmarks/bench_hw_zigzag.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from hiddenite.hw import LayerWorkload, get_preset
from hiddenite.hw.model import estimate_layer
from hiddenite.hw.zigzag_io import write_zigzag_inputs

LAYER = LayerWorkload.from_dict(
    dict(name="c", kind="conv", in_channels=40, out_channels=24, kernel=3, padding=1, in_hw=10)
)


def test_zigzag_inputs_describe_the_same_array(tmp_path):
    spec = get_preset("int8")
    layers, hw, mapping = write_zigzag_inputs([LAYER], spec, tmp_path)
    acc = yaml.safe_load(Path(hw).read_text())
    assert acc["operational_array"]["sizes"] == [16, 4, 4, 16]
    assert acc["memories"]["sram_w"]["size"] == spec.weight_sram_bytes * 8
    assert acc["memories"]["dram"]["ports"][0]["bandwidth_max"] == 128  # 16 B/cycle
    spatial = yaml.safe_load(Path(mapping).read_text())[0]["spatial_mapping"]
    assert spatial == {"D1": ["C, 16"], "D2": ["OY, 4"], "D3": ["OX, 4"], "D4": ["K, 16"]}
    assert layers[0]["loop_sizes"] == [1, 24, 40, 10, 10, 3, 3]


def test_macs_and_compute_cycles_match_zigzag(tmp_path):
    pytest.importorskip("zigzag")
    from zigzag.api import get_hardware_performance_zigzag

    spec = get_preset("int8")
    layers, hw, mapping = write_zigzag_inputs([LAYER], spec, tmp_path)
    logging.disable(logging.WARNING)
    try:
        _, _, cmes = get_hardware_performance_zigzag(
            layers,
            hw,
            mapping,
            opt="latency",
            dump_folder=str(tmp_path / "out"),
            lpf_limit=2,
            loma_show_progress_bar=False,
        )
    finally:
        logging.disable(logging.NOTSET)
    cme = cmes[0][1][0][0]
    ours = estimate_layer(LAYER, spec)
    assert ours.macs == cme.layer.total_mac_count == 24 * 40 * 9 * 100
    # edge effects: 40 channels on 16 PEs (3 tiles), 10x10 outputs on 4x4 PEs (3x3 tiles)
    assert ours.compute_cycles == cme.ideal_temporal_cycle == 3 * 3 * 3 * 2 * 9
    # ZigZag rounds its ideal cycle count up: ceil(MACs / PEs) / cycles
    assert cme.mac_spatial_utilization == pytest.approx(-(-ours.macs // 4096) / ours.compute_cycles)
    assert ours.utilization == pytest.approx(cme.mac_spatial_utilization, rel=1e-3)
