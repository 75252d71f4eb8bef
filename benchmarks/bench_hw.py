"""Hiddenite accelerator model: the BENCHMARKS.md figures (all MODELLED, none measured).

For an ImageNet ResNet-18 hidden network (224 x 224, batch 1) at k = 0.3 and k = 0.1:

- off-chip model bytes of Hiddenite (masks + per-channel parameters) against the BNN
  accelerator (1-bit weights + the same parameters), from ``resnet_workloads`` with
  entropy-bound / packed / rle mask sizes, and from real ``.hnn`` files (one per codec, built
  with ``models.create("resnet18-imagenet", SupermaskConfig(density=k))`` and ``hiddenite.save``)
  simulated with ``hiddenite.hw.compare(path)``;
- TOPS/W of the three presets, with DRAM and on chip only;
- which densities (0.05 .. 0.5) and codecs reach half of the BNN's model traffic;
- the speed of a full ResNet-50 estimate and sweep points per minute.

Run: ``python benchmarks/bench_hw.py`` (about 30 s on one CPU core; prints markdown).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hiddenite import SupermaskConfig, codecs, models, save
from hiddenite.hw import compare, estimate, sweep, workloads_from_module
from hiddenite.hw.workload import resnet_workloads

ARCHS = ("hiddenite", "bnn", "int8")
DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
INPUT = (1, 3, 224, 224)


def _reports(workloads):
    return {a: estimate(workloads, a) for a in ARCHS}


def _row(k, label, reps):
    h, b, i = (reps[a].totals for a in ARCHS)
    ratio = h["offchip_model_bytes"] / b["offchip_model_bytes"]
    return (
        f"| {k} | {label} | {h['offchip_model_bytes']:,} | {b['offchip_model_bytes']:,} | "
        f"{ratio:.3f} | {h['tops_per_watt']:.2f} / {h['onchip_tops_per_watt']:.2f} | "
        f"{b['tops_per_watt']:.2f} / {b['onchip_tops_per_watt']:.2f} | "
        f"{i['tops_per_watt']:.2f} / {i['onchip_tops_per_watt']:.2f} |"
    )


def _real_mask_workloads(model):
    """Trace the module once; per codec, workloads whose mask bytes are the real coded masks
    (plus ``best``: the smallest per layer, what ``hiddenite export`` picks)."""
    sizes: dict[str, dict[str, int]] = {}

    def record(name, mask):
        bits = mask.reshape(-1)
        sizes[name] = {c: len(codecs.encode(bits, c)) for c in codecs.CODECS}
        return "packed", sizes[name]["packed"]

    base = workloads_from_module(model, INPUT, mask_bytes_fn=record)
    out = {}
    for c in (*codecs.CODECS, "best"):
        out[c] = [
            w  # a layer without a mask (kept dense, e.g. the stem) stores no mask to re-code
            if w.name not in sizes
            else dataclasses.replace(
                w,
                mask_codec=min(sizes[w.name], key=sizes[w.name].get) if c == "best" else c,
                mask_bytes=min(sizes[w.name].values()) if c == "best" else sizes[w.name][c],
            )
            for w in base
        ]
    return out


def main() -> int:
    torch.set_num_threads(1)
    began = time.perf_counter()
    print("## Accelerator model: ImageNet ResNet-18 hidden network (modelled, not measured)\n")
    print(
        "Batch 1, 224 x 224, default presets (4,096 PEs as 16 x 4 x 4 x 16, SRAM "
        "128 / 128 / 64 / 8 KiB, 16 B/cycle DRAM, clock and energies as calibrated in "
        "docs/hw-calibration.md, 243.75 pJ per DRAM byte), activations through DRAM. "
        "Off-chip model bytes: Hiddenite = masks + per-channel "
        "parameters (BatchNorm running mean/var, float32); BNN = 1 bit per weight + the same "
        "parameters; INT8 = 1 byte per weight + parameters. TOPS/W = dense ops (2 per MAC) / "
        "energy; shown as with DRAM / on chip only.\n"
    )
    print(
        "| k | mask sizes | Hiddenite model B | BNN model B | Hiddenite / BNN | "
        "Hiddenite TOPS/W | BNN TOPS/W | INT8 TOPS/W |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    file_seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (0.3, 0.1):
            for label, codec in (
                ("entropy bound (resnet_workloads)", "entropy"),
                ("rle = entropy bound (resnet_workloads)", "rle"),
                ("packed (resnet_workloads)", "packed"),
            ):
                print(_row(k, label, _reports(resnet_workloads(18, density=k, codec=codec))))
            model = models.create("resnet18-imagenet", SupermaskConfig(density=k))
            for codec in (*codecs.CODECS, None):
                path = Path(tmp) / f"r18_k{k}_{codec or 'auto'}.hnn"
                info = save(model, path, codec=codec)
                t0 = time.perf_counter()
                reps = compare(path)
                file_seconds.append(time.perf_counter() - t0)
                t = info.totals()
                stored = t["mask_bytes"] + t["float_part_bytes"] + t["param_bytes"]
                assert reps["hiddenite"].totals["offchip_model_bytes"] == stored
                name = codec or "auto (smallest per layer)"
                label = f"real .hnn, {name} ({t['file_bytes']:,} B file)"
                print(_row(k, label, reps))
    print(
        "\nThe file rows simulate the saved file (`hiddenite.hw.compare(path)`); their Hiddenite "
        "model bytes equal the file's masks + per-channel parameters exactly (the file header, "
        "with the seed and shapes, is not counted). `resnet_workloads` carries the same "
        "BatchNorm bytes plus a 1,000-value classifier bias (4,000 B) that the zoo model does "
        "not have; its `rle` size is the entropy bound, not a real run-length code.\n"
    )

    # which densities and codecs reach half of the BNN's model traffic
    print("### Hiddenite / BNN off-chip model bytes by density and codec (<= 0.5 marked **)\n")
    print(
        "packed / entropy bound: `resnet_workloads` sizes; real: the masks of "
        "`models.create('resnet18-imagenet', SupermaskConfig(density=k))` coded with each codec "
        "(best = the smallest per layer, what `hiddenite export` writes), each against the BNN "
        "bytes of the same network.\n"
    )
    cols = ("packed", "entropy bound", "rle (real)", "entropy (real)", "best (real)")
    print("| k | H(k) bit/w | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    synthetic_bnn = estimate(resnet_workloads(18), "bnn").totals["offchip_model_bytes"]
    reach: dict[str, list[float]] = {c: [] for c in cols}
    for k in DENSITIES:
        model = models.create("resnet18-imagenet", SupermaskConfig(density=k))
        real = _real_mask_workloads(model)
        values = {
            "packed": resnet_workloads(18, density=k, codec="packed"),
            "entropy bound": resnet_workloads(18, density=k, codec="entropy"),
            "rle (real)": real["rle"],
            "entropy (real)": real["entropy"],
            "best (real)": real["best"],
        }
        real_bnn = estimate(real["packed"], "bnn").totals["offchip_model_bytes"]
        cells = []
        for c in cols:
            hb = estimate(values[c], "hiddenite").totals["offchip_model_bytes"]
            ratio = hb / (real_bnn if "real" in c else synthetic_bnn)
            if ratio <= 0.5:
                reach[c].append(k)
            cells.append(f"**{ratio:.3f}**" if ratio <= 0.5 else f"{ratio:.3f}")
        h = codecs.entropy_bound_bits(k)
        print(f"| {k} | {h:.3f} | " + " | ".join(cells) + " |")
    print()
    for c in cols:
        ks = reach[c]
        print(f"- {c}: " + (f"half or less at k <= {max(ks)}" if ks else "never reaches half"))

    # speed
    print("\n### Speed of the model (one CPU thread)\n")
    r50 = resnet_workloads(50, density=0.3, codec="entropy")
    estimate(r50, "hiddenite")
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        estimate(r50, "hiddenite")
        times.append(time.perf_counter() - t0)
    grid = {
        "pe_dims": [(16, 4, 4, 16), (32, 4, 4, 8), (8, 8, 8, 8), (64, 2, 2, 16)],
        "weight_sram_bytes": [32768, 65536, 131072],
        "act_in_sram_bytes": [65536, 131072, 262144],
        "density": [0.1, 0.2, 0.3, 0.5],
        "codec": ["packed", "entropy"],
    }
    t0 = time.perf_counter()
    rows = sweep(r50, "hiddenite", grid)
    sweep_s = time.perf_counter() - t0
    print("| what | time |")
    print("|---|---:|")
    print(
        f"| full ResNet-50 estimate (54 layers, one arch), median of 30 | "
        f"{statistics.median(times) * 1e3:.2f} ms |"
    )
    print(
        f"| ResNet-50 sweep, {len(rows)} points (PE dims x weight SRAM x input SRAM x density x "
        f"codec) | {sweep_s:.2f} s = {len(rows) / sweep_s * 60:,.0f} points/minute |"
    )
    print(
        "| `compare(path)` on a ResNet-18 `.hnn` (load + rebuild + trace + 3 archs), median | "
        f"{statistics.median(file_seconds):.2f} s |"
    )
    print(f"\n(bench_hw.py ran in {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
