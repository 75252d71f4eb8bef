"""Benchmark the model file: mask bits per weight against H(k), codec speed, rebuild time.

Run: ``python benchmarks/bench_model_file.py [--checkpoint RUN_OR_FILE ...] [--quick]``.
Prints markdown with four tables:

1. random masks (every weight kept independently with probability k): each codec's bits per
   weight against the entropy bound H(k), encode and decode throughput;
2. masks of trained models: the default MLP (784-300-100-10) trained hidden for one epoch on
   a 10k-image subset of Fashion-MNIST at k = 0.3 and 0.1 (or the checkpoints given);
3. whole model files of those trained models, per codec choice;
4. rebuilding a ResNet-50-sized hidden network (25.5 M weights) from its ``.hnn`` file,
   next to reading the same network's float32 weights from a safetensors file.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import hiddenite
from bench_codecs import best_time  # the script's own folder is on sys.path
from hiddenite import SupermaskConfig, codecs, export, fileformat, models, to_dense
from hiddenite.codecs import CODECS, decode, encode, entropy_bound_bits
from hiddenite.init import frozen_weights


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn()`` (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def random_masks(n: int, densities: list[float], repeats: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print(f"\n### Random masks, n = {n:,} bits\n")
    print(f"Throughput = n / best of {repeats} (Mbit/s); sizes include each codec's header.\n")
    print("| k | H(k) bit/w | codec | bit/w | / H(k) | encode Mbit/s | decode Mbit/s |")
    print("|---|---|---|---|---|---|---|")
    for k in densities:
        bits = rng.random(n) < k
        bound = entropy_bound_bits(float(bits.mean()))
        for codec in CODECS:
            data = encode(bits, codec)
            assert np.array_equal(decode(data, n, codec), bits)
            t_enc = best_time(lambda c=codec, b=bits: encode(b, c), repeats)
            t_dec = best_time(lambda c=codec, d=data: decode(d, n, c), repeats)
            bpw = 8 * len(data) / n
            print(
                f"| {k:g} | {bound:.4f} | {codec} | {bpw:.4f} | {bpw / bound:.4f} | "
                f"{n / t_enc / 1e6:,.0f} | {n / t_dec / 1e6:,.0f} |"
            )


def train_mlps(densities: list[float], epochs: int, subset: int, data_dir) -> list:
    from hiddenite.train import TrainConfig, train

    out = []
    for k in densities:
        config = TrainConfig(
            model="mlp",
            supermask=SupermaskConfig(density=k, seed=0),
            epochs=epochs,
            train_subset=subset,
            lr=0.1,
        )
        began = time.perf_counter()
        result = train(config, None, data_dir=data_dir, progress=False, log=None)
        acc = result.history[-1]["val_accuracy"]
        label = f"mlp k={k:g} ({epochs} epoch, {subset // 1000}k images, val acc {acc:.3f})"
        print(f"trained {label} in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        out.append((label, result.model.eval(), export.arch_of(config), config.supermask))
    return out


def from_checkpoints(paths: list[str]) -> list:
    from hiddenite.train import load_trained

    out = []
    for path in paths:
        model, config = load_trained(path)
        label = f"{config.model} k={config.supermask.density:g} ({path})"
        out.append((label, model, export.arch_of(config), config.supermask))
    return out


def trained_masks(trained: list, folder: Path) -> None:
    print("\n### Masks of trained models, per layer\n")
    print("| model | layer | weights | k | H(k) bit/w | packed | rle | entropy | best / H(k) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, model, _, _ in trained:
        for name, layer in model.named_modules():
            if not (hiddenite.is_supermask(layer) and not layer.trains_weights):
                continue
            bits = layer.mask().bool().reshape(-1).numpy()
            n = bits.size
            k = float(bits.mean())
            bound = entropy_bound_bits(k)
            sizes = {c: 8 * len(encode(bits, c)) / n for c in CODECS}
            best = min(sizes.values())
            ratio = f"{best / bound:.3f}" if bound else "-"
            print(
                f"| {label} | {name} | {n:,} | {k:.4f} | {bound:.4f} | {sizes['packed']:.4f} | "
                f"{sizes['rle']:.4f} | {sizes['entropy']:.4f} | {ratio} |"
            )
    print("\n### Whole model files of the trained models\n")
    print("| model | codec | file bytes | bit/weight (file) | masks bit/w | H(k) bit/w | "
          "float32 bytes | binarized bytes | binarized / file |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for label, model, arch, config in trained:
        for codec in [None, *CODECS]:
            path = folder / "trained.hnn"
            info = fileformat.save(model, path, arch=arch, config=config, codec=codec)
            t = info.totals()
            hidden = t["regenerated_weights"]
            print(
                f"| {label} | {codec or 'auto'} | {t['file_bytes']:,} | "
                f"{t['file_bits_per_weight']:.4f} | {8 * t['mask_bytes'] / hidden:.4f} | "
                f"{8 * t['entropy_bound_bytes'] / hidden:.4f} | {t['float32_bytes']:,} | "
                f"{t['binarized_bytes']:,} | {t['ratio_binarized']:.2f}x |"
            )


def _drop_from_page_cache(path: Path) -> bool:
    """Ask the kernel to forget ``path``'s cached pages (a cold read next); False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def rebuild_resnet50(folder: Path, density: float, repeats: int) -> None:
    arch = ("resnet50", {})
    config = SupermaskConfig(density=density, seed=0)
    began = time.perf_counter()
    model = models.create(arch[0], config).eval()
    create_s = time.perf_counter() - began
    hnn = folder / "resnet50.hnn"
    began = time.perf_counter()
    info = fileformat.save(model, hnn, arch=arch, config=config)
    save_s = time.perf_counter() - began
    dense = to_dense(model).state_dict()
    weights = {k: v.contiguous() for k, v in dense.items() if not k.endswith("num_batches_tracked")}
    st_path = folder / "resnet50-float32.safetensors"
    save_file(weights, st_path)
    del dense
    n = info.totals()["weights"]

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)

    t_load, loaded = median_time(lambda: fileformat.load(hnn), repeats)
    with torch.no_grad():
        identical = bool(torch.equal(loaded(x), ref))
    del loaded
    t_fast, _ = median_time(lambda: fileformat.load(hnn, check_masks=False), repeats)
    t_create, _ = median_time(lambda: models.create(arch[0], config), repeats)
    shapes = [(m.weight.shape, m.layer_index) for m in model.modules() if hiddenite.is_supermask(m)]

    def regenerate():
        for shape, index in shapes:
            frozen_weights(
                tuple(shape), init=config.init, seed=config.seed, layer_index=index,
                fan_in=math.prod(shape[1:]),
            )  # fmt: skip

    t_weights, _ = median_time(regenerate, repeats)

    def read():  # safetensors maps the file lazily: touch every 4 KiB page to really read it
        tensors = load_file(st_path)
        for t in tensors.values():
            float(t.reshape(-1)[::1024].sum())
        return tensors

    def read_into_model():
        with torch.device("meta"):
            plain = models.create(arch[0])
        plain.load_state_dict(read(), strict=False, assign=True)
        return plain

    t_read, _ = median_time(read, repeats)
    t_read_model, _ = median_time(read_into_model, repeats)
    cold = []
    for path, fn in ((hnn, lambda: fileformat.load(hnn)), (st_path, read)):
        times = []
        for _ in range(repeats):
            if not _drop_from_page_cache(path):
                break
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        cold.append(statistics.median(times) if times else float("nan"))

    print(f"\n### Rebuilding a ResNet-50-sized hidden network ({n:,} weights, k = {density})\n")
    print(
        f"Median of {repeats} runs, seconds; CPU, {torch.get_num_threads()} torch threads. "
        f"Outputs of the rebuilt model bit-identical to the saved one: {identical}. "
        f"(Building the model the first time: {create_s:.1f} s; saving it: {save_s:.1f} s.)\n"
    )
    print("| what | file | file bytes | seconds | / read float32 |")
    print("|---|---|---|---|---|")
    rows = [
        ("rebuild from .hnn: `hiddenite.load` (masks re-checked)", hnn, t_load),
        ("rebuild from .hnn: `load(check_masks=False)`", hnn, t_fast),
        ("- of which `models.create` (frozen weights + initial scores)", None, t_create),
        ("- of which the frozen weights alone (`init.frozen_weights`)", None, t_weights),
        ("rebuild from .hnn, file evicted from the page cache first", hnn, cold[0]),
        ("read float32 weights: `safetensors.torch.load_file`, every page", st_path, t_read),
        ("read float32 weights into a ResNet-50 (meta skeleton, assign)", st_path, t_read_model),
        ("read float32 weights, file evicted from the page cache first", st_path, cold[1]),
    ]
    for label, path, seconds in rows:
        size = f"{path.stat().st_size:,}" if path else ""
        name = path.name if path else ""
        print(f"| {label} | {name} | {size} | {seconds:.3f} | {seconds / t_read:.1f}x |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=1_000_000, help="random mask length n")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="use this trained checkpoint (file or run folder) instead of training MLPs",
    )
    parser.add_argument("--train-densities", type=float, nargs="+", default=[0.3, 0.1])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resnet50-density", type=float, default=0.3)
    parser.add_argument("--skip-trained", action="store_true")
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args(argv)

    print(
        f"hiddenite {hiddenite.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"codecs {', '.join(codecs.CODECS)}."
    )
    random_masks(args.bits, args.densities, args.repeats, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_trained:
            trained = (
                from_checkpoints(args.checkpoint)
                if args.checkpoint
                else train_mlps(args.train_densities, args.epochs, args.train_subset, args.data_dir)
            )
            trained_masks(trained, folder)
        if not args.skip_resnet50:
            rebuild_resnet50(folder, args.resnet50_density, args.repeats)


if __name__ == "__main__":
    main()
