"""``hiddenite.load`` of a ResNet-50 against reading its float32 weights, warm and cold.

One run builds a hidden ResNet-50 (edge-popup, k = 0.3, seed 0), saves it as ``.hnn`` with
the default codec choice (``auto``: the smallest per part, ``entropy-grouped`` for this
network), with the one-bit-at-a-time ``entropy`` coder it replaces, and with the
hardware-friendly ``rle`` and ``packed`` codecs, and saves the same network's float32 weights
(``to_dense``) with safetensors. It then times, interleaved (each repeat runs every case
once, so changes in the machine's load hit all alike), the median of ``--repeats``:

- ``hiddenite.load(path)``: regenerate the frozen weights, decode and check every mask, and
  re-check that each restored layer gives back its stored mask (on by default);
- ``hiddenite.load(path, check_masks=False)`` for comparison;
- with more than one torch thread (``OMP_NUM_THREADS``), the default file loaded on one
  thread (the layers' masks decode on torch's threads);
- ``safetensors.torch.load_file`` of the float32 weights, touching every 4 KiB page (the file
  is mapped lazily; without the touch nothing would be read);
- two floors of materialising the weights at all: ``np.full`` of a float32 buffer the size of
  the hidden weights (a constant fill), and the frozen weights alone (``frozen_weights`` of
  every layer, the fused kernels), which every load regenerates.

Warm: the files are in the page cache. Cold: before each timed run the file is dropped from
the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (after an ``fsync``, so its pages
are clean and can be dropped).

Fresh processes (``--fresh N``, default 5; 0 skips): what a command-line user waits for. Each
of ``N`` new Python processes per case (interleaved, warm page cache) imports its library and
loads once, timing the import and the first load apart: ``hiddenite.load`` of the default
file (its compiled kernels come from numba's on-disk cache, or are compiled if there is none)
against ``import torch, safetensors.torch`` and ``load_file`` (every page touched), and
``np.full`` of a float32 buffer the size of the weights after ``import torch``: the cost of
a process's first fresh memory (on a virtual machine whose host takes back freed guest pages
it is far above a warm process's; the file pages safetensors maps are already resident).

``--profile`` instead prints where one warm load's time goes (cProfile: own time, then the
cumulative time of hiddenite's own functions).

Usage: python benchmarks/bench_load.py [--repeats 7] [--model resnet50] [--density 0.3]
       [--codecs auto entropy rle packed] [--fresh 5] [--json PATH] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import hiddenite
from hiddenite import SupermaskConfig, fileformat, models, to_dense
from hiddenite.init import frozen_weights


def drop_from_page_cache(path: Path) -> None:
    """Make the next read of ``path`` come from the disk (its clean pages are dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_float32(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    for t in tensors.values():  # touch every 4 KiB page: really read the file
        float(t.reshape(-1)[::1024].sum())
    return tensors


def interleaved(
    fns: dict[str, tuple[Path | None, Callable[[], object]]], repeats: int, cold: bool
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (path, fn) in fns.items():
            if cold and path is not None:
                drop_from_page_cache(path)
            began = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - began)
    return {name: statistics.median(times) for name, times in samples.items()}


_FRESH = {
    "hiddenite.load": (
        "import time; began = time.perf_counter(); import hiddenite; "
        "imported = time.perf_counter(); hiddenite.load({path!r}); "
        "print(imported - began, time.perf_counter() - imported)"
    ),
    "safetensors.torch.load_file (float32), every page": (
        "import time; began = time.perf_counter(); import torch; "
        "from safetensors.torch import load_file; imported = time.perf_counter(); "
        "tensors = load_file({path!r}); "
        "[float(t.reshape(-1)[::1024].sum()) for t in tensors.values()]; "
        "print(imported - began, time.perf_counter() - imported)"
    ),
    "floor: np.full float32 of the weights' size (constant fill)": (
        "import time; began = time.perf_counter(); import torch; import numpy as np; "
        "imported = time.perf_counter(); np.full({weights}, 1.0, dtype=np.float32); "
        "print(imported - began, time.perf_counter() - imported)"
    ),
}


def fresh_processes(
    paths: dict[str, Path], weights: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (import, first load) seconds over ``repeats`` new processes per case."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in _FRESH}
    for _ in range(repeats):
        for name, code in _FRESH.items():
            done = subprocess.run(
                [sys.executable, "-c", code.format(path=str(paths.get(name)), weights=weights)],
                capture_output=True,
                text=True,
                check=True,
            )
            imported, loaded = (float(v) for v in done.stdout.split())
            samples[name].append((imported, loaded))
    return {
        name: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
        for name, runs in samples.items()
    }


def profile(path: Path, top: int = 16) -> None:
    """Print the functions that take the most time (own time) in one warm load."""
    import cProfile
    import pstats

    hiddenite.load(path)  # warm: compiled kernels, page cache
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.runcall(hiddenite.load, path)
    total = time.perf_counter() - began
    stats = pstats.Stats(profiler).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    print(f"One warm `hiddenite.load` of {path.name}: {total * 1e3:,.0f} ms (under cProfile)\n")
    print("| function (own time) | calls | ms | share |")
    print("|---|---|---|---|")
    for (file, line, name), (_, calls, own, _, _) in rows:
        where = f"{Path(file).name}:{line}" if line else "built-in"
        print(f"| `{name}` ({where}) | {calls} | {own * 1e3:,.0f} | {own / total:.0%} |")
    package = str(Path(hiddenite.__file__).parent)
    ours = [(k, v) for k, v in stats.items() if k[0].startswith(package) and k[2] != "<lambda>"]
    rows = sorted(ours, key=lambda kv: -kv[1][3])[:top]
    print("\n| hiddenite function (cumulative time) | calls | ms | share |")
    print("|---|---|---|---|")
    for (file, line, name), (_, calls, _, cum, _) in rows:
        where = f"{Path(file).relative_to(package)}:{line}"
        print(f"| `{name}` ({where}) | {calls} | {cum * 1e3:,.0f} | {cum / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--codecs", nargs="+", default=["auto", "entropy", "rle", "packed"])
    parser.add_argument(
        "--fresh", type=int, default=5, help="new processes per case for the first-load table"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--profile", action="store_true", help="instead: where one load's time goes (cProfile)"
    )
    args = parser.parse_args()
    if not hasattr(os, "posix_fadvise"):
        raise SystemExit("this platform has no posix_fadvise: the cold figures need it")

    config = SupermaskConfig(density=args.density, seed=0)
    model = models.create(args.model, config).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files, labels = {}, {}
        for codec in args.codecs:
            path = folder / f"{args.model}-{codec}.hnn"
            fileformat.save(
                model, path, arch=model.hiddenite_arch, config=config,
                codec=None if codec == "auto" else codec,
            )  # fmt: skip
            files[codec] = path
            used = sorted({e.codec for e in fileformat.read_header(path).entries})
            labels[codec] = f"{codec} ({', '.join(used)})" if codec == "auto" else codec
            with torch.no_grad():
                assert torch.equal(hiddenite.load(path)(x), reference), codec
        dense = to_dense(model).state_dict()
        st_path = folder / f"{args.model}-float32.safetensors"
        save_file(
            {k: v.contiguous() for k, v in dense.items() if not k.endswith("num_batches_tracked")},
            st_path,
        )
        weights = sum(m.weight.numel() for m in model.modules() if hiddenite.is_supermask(m))
        specs = [m.frozen_spec() for m in model.modules() if hiddenite.is_supermask(m)]
        del dense, model

        if args.profile:
            profile(files[args.codecs[0]])
            return
        cases: dict[str, tuple[Path | None, Callable[[], object]]] = {}
        for codec, path in files.items():
            cases[f"hiddenite.load, {labels[codec]} codec"] = (
                path,
                lambda p=path: hiddenite.load(p),
            )
        auto = files[args.codecs[0]]
        cases[f"hiddenite.load(check_masks=False), {args.codecs[0]} codec"] = (
            auto,
            lambda: hiddenite.load(auto, check_masks=False),
        )
        threads = torch.get_num_threads()
        if threads > 1:  # the layers decode on torch's threads: the same load on one

            def one_thread() -> object:
                torch.set_num_threads(1)
                try:
                    return hiddenite.load(auto)
                finally:
                    torch.set_num_threads(threads)

            cases[f"hiddenite.load on 1 thread, {args.codecs[0]} codec"] = (auto, one_thread)
        cases["safetensors.torch.load_file (float32), every page"] = (
            st_path,
            lambda: read_float32(st_path),
        )
        cases["floor: np.full float32 of the weights' size (constant fill)"] = (
            None,
            lambda: np.full(weights, 1.0, dtype=np.float32),
        )
        cases["floor: the frozen weights alone (frozen_weights, every layer)"] = (
            None,
            lambda: [frozen_weights(**spec) for spec in specs],
        )
        for _, fn in cases.values():  # warm-up: compiled kernels, page cache
            fn()
        warm = interleaved(cases, args.repeats, cold=False)
        cold = interleaved(cases, args.repeats, cold=True)
        fresh = {}
        if args.fresh > 0:
            fresh_paths = {
                "hiddenite.load": files[args.codecs[0]],
                "safetensors.torch.load_file (float32), every page": st_path,
            }
            fresh = fresh_processes(fresh_paths, weights, args.fresh)
        sizes = {
            name: f"{path.stat().st_size:,}" if path else "-" for name, (path, _) in cases.items()
        }

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, hiddenite {hiddenite.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; {args.model}, {weights:,} hidden weights, k = "
        f"{args.density}; median of {args.repeats}; outputs of every loaded file "
        f"bit-identical to the saved model: True\n"
    )
    base = "safetensors.torch.load_file (float32), every page"
    print("| what | file bytes | warm ms | / safetensors warm | cold ms | / safetensors cold |")
    print("|---|---|---|---|---|---|")
    for name in cases:
        print(
            f"| {name} | {sizes[name]} | {warm[name] * 1e3:,.1f} | "
            f"{warm[name] / warm[base]:.1f}x | {cold[name] * 1e3:,.1f} | "
            f"{cold[name] / cold[base]:.1f}x |"
        )
    if fresh:
        print(
            f"\nIn a fresh process ({args.codecs[0]} codec; median of {args.fresh} processes "
            "per case, warm page cache):\n"
        )
        print("| what | import ms | first load ms | import + load ms |")
        print("|---|---|---|---|")
        for name, (imported, loaded) in fresh.items():
            print(
                f"| {name} | {imported * 1e3:,.0f} | {loaded * 1e3:,.0f} | "
                f"{(imported + loaded) * 1e3:,.0f} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"warm": warm, "cold": cold, "bytes": sizes, "fresh": fresh}, fh, indent=2)


if __name__ == "__main__":
    main()
