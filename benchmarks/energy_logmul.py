"""Modelled energy per inference with exact and with Mitchell (log) multipliers.

Builds zoo models for Fashion-MNIST (``mlp``, ``conv4`` at width 0.5) as dense networks
(stored weights: every PE operation is a MAC) and as hidden networks (edge-popup, density 0.5:
the PEs only add, so a log multiplier has nothing to replace), sets each model's inference
operator to ``exact`` and to ``mitchell`` (:func:`hiddenite.ops.use_operator`) and asks the
accelerator model (:func:`hiddenite.hw.simulate`) for the energy of one inference on the
``hiddenite`` and ``int8`` presets. The multiply energy of a log-datapath MAC is
``EnergyTable.log_mult_pj`` (see ``docs/logmul.md`` for its derivation and sources). Modelled,
not measured; the numbers do not depend on trained values (only on shapes, densities and the
coded sizes of the parts), so untrained models are used.

Usage::

    python benchmarks/energy_logmul.py
"""

from __future__ import annotations

import argparse

import torch

from hiddenite import SupermaskConfig, models
from hiddenite.hw import simulate
from hiddenite.ops import use_operator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["hiddenite", "int8"])
    args = parser.parse_args()
    torch.manual_seed(0)
    configs = {
        "dense": SupermaskConfig(method="dense", init="kaiming-normal"),
        "edge-popup": SupermaskConfig(density=0.5, init="signed-constant"),
    }
    print("command: python benchmarks/energy_logmul.py\n")
    print(
        "| model | method | arch | compute exact (uJ) | compute Mitchell (uJ) | "
        "total exact (uJ) | total Mitchell (uJ) | saving |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, kwargs in (("mlp", {}), ("conv4", {"width": 0.5})):
        for method, config in configs.items():
            model = models.create(name, config, **kwargs).eval()
            for arch in args.archs:
                figures = {}
                for op in ("exact", "mitchell"):
                    with use_operator(model, op, phase="inference"):
                        report = simulate(model, arch)
                    compute = sum(r.energy_compute_pj for r in report.rows)
                    figures[op] = (compute / 1e6, report.totals["energy_pj"] / 1e6)
                (ce, te), (cm, tm) = figures["exact"], figures["mitchell"]
                label = name + (" w0.5" if kwargs else "")
                print(
                    f"| {label} | {method} | {arch} | {ce:.3f} | {cm:.3f} | {te:.3f} | "
                    f"{tm:.3f} | {100 * (1 - tm / te):.1f} % |"
                )


if __name__ == "__main__":
    main()
