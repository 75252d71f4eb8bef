"""The step-memory estimate (``resources.step_memory``) against the measured peak.

For each case a fresh process builds the model, runs two training steps (SGD with momentum)
or one evaluation pass on random 28x28 gray images, and reports the growth of its peak
resident memory (``ru_maxrss``); the ratio estimate / measured is printed next to it. The
estimate is what ``hiddenite train`` / ``eval`` compare with the memory available.

    PYTHONPATH=src python benchmarks/step_memory.py [--cases conv4:128:train resnet18:1000:eval]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from hiddenite import models, resources
from hiddenite.convert import SupermaskConfig

CHILD = """
import resource, sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
from hiddenite import models
from hiddenite.convert import SupermaskConfig
name, batch, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x, y = torch.randn(batch, 1, 28, 28), torch.zeros(batch, dtype=torch.long)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = models.create(name, SupermaskConfig(), in_channels=1, image_size=28, num_classes=10)
opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
if mode == "train":
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
else:
    m.eval()
    with torch.no_grad():
        m(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""

DEFAULT = ("mlp:128:train", "conv4:128:train", "conv4:1000:eval", "resnet18:128:train",
           "resnet18:1000:eval")  # fmt: skip


def estimate(name: str, batch: int, training: bool) -> int:
    kwargs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    with torch.device("meta"):
        plain = models.create(name, **kwargs)
        skeleton = models.create(name, SupermaskConfig(), init_state=False, **kwargs)
    est = resources.step_memory(
        skeleton, (batch, 1, 28, 28), training=training, optimizer_values=1, forward=plain
    )
    return est.bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT), help="model:batch:mode")
    args = parser.parse_args()
    print(f"{'case':24} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    for case in args.cases:
        name, batch, mode = case.split(":")
        run = [sys.executable, "-c", CHILD, name, batch, mode]
        measured = int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
        est = estimate(name, int(batch), mode == "train")
        print(
            f"{case:24} {resources.format_bytes(est):>10} "
            f"{resources.format_bytes(measured):>10} {est / measured:6.2f}"
        )


if __name__ == "__main__":
    main()
