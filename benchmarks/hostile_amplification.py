"""Memory amplification of the readers: peak memory per byte of input file, measured.

For each case a model file (or checkpoint) is written, then loaded in a fresh process that
reports its peak resident memory (``ru_maxrss``) before and after: amplification = peak
increase / file bytes. The worst case for a model file is a constant mask (density 1.0,
entropy-coded to almost nothing): the file is little more than its seed and header, so its
memory is set by the weight count, which the reader caps at ``max_weights`` (2**28).

    PYTHONPATH=src python benchmarks/hostile_amplification.py [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, torch
torch.set_num_threads(1)
from hiddenite import fileformat
from hiddenite.train import load_trained

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
if sys.argv[1].endswith(".hnn"):
    fileformat.load(sys.argv[1])
else:
    load_trained(sys.argv[1])
print(status("VmHWM") - before)
"""


def peak_bytes(path: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048, help="MLP hidden width")
    args = parser.parse_args()
    import torch

    from hiddenite import SupermaskConfig, models, save
    from hiddenite.checkpoint import Checkpoint, save_checkpoint
    from hiddenite.train import TrainConfig, build_model

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kwargs = {"hidden": [args.hidden, args.hidden]}
        for density, codec in ((0.5, None), (0.05, None), (1.0, None)):
            model = models.create("mlp", SupermaskConfig(density=density, seed=1), **kwargs)
            path = tmp / f"mlp-{density}.hnn"
            info = save(model, path, codec=codec)
            weights = info.totals()["weights"]
            rows.append(("model file", f"mlp {kwargs['hidden']}, density {density}", weights,
                         path.stat().st_size, peak_bytes(path)))  # fmt: skip
        config = TrainConfig(model="mlp", model_kwargs=kwargs, epochs=1)
        model = build_model(config)
        run = tmp / "run"
        save_checkpoint(run / "checkpoint.safetensors", Checkpoint(
            config=config.to_dict(), epoch=0, history=[], model_state=model.state_dict(),
            optimizer_state=None))  # fmt: skip
        path = run / "checkpoint.safetensors"
        weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "scores"))
        rows.append(("checkpoint", f"mlp {kwargs['hidden']}", weights, path.stat().st_size,
                     peak_bytes(run)))  # fmt: skip
    print("| input | model | weights | file bytes | peak memory increase | bytes per file byte |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, what, weights, size, peak in rows:
        print(f"| {kind} | {what} | {weights:,} | {size:,} | {peak / 1e6:,.1f} MB | "
              f"{peak / size:,.0f} |")  # fmt: skip
    print(json.dumps({"per_weight_bytes": [round(r[4] / r[2], 2) for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
