"""One training step, hidden against its dense twin, side by side in one run (CPU).

For the MLP (784-300-100-10) and Conv-4, one SGD step (forward, backward, update; batch 128,
1x28x28) of:

- ``dense``: the dense twin (``--method dense``, trained float weights);
- ``hidden``: edge-popup at k = 0.3, as the package trains it (the top-k selection
  warm-started from the previous threshold, compiled passes: ``hiddenite.masks.TopKSelector``);
- ``hidden_round1``: the same layers with the first warm-started implementation swapped in
  (:class:`RoundOneSelector`, kept here: the same selection, but numpy views made on every
  call, the band's threshold selected in Python between two compiled calls, the bracket
  pass reading the scores twice, and the weights read as float32 whatever their values; it
  calls today's ``fix_band``, ``masked_product`` and ``score_gradient`` with scale 1);
- ``hidden_full_select``: the implementation before that: a full top-k selection every step
  (``top_fraction_mask``) and torch ops for the masked product and the score gradient.

The variants are interleaved step by step so load changes hit them alike, after warm-up steps
(numba compiles on the first one); ``--block K`` takes K steps of each in turn instead
(the caches then hold one model's state, as in a training loop: step by step, each
variant's arrays have been pushed out by the others'). Each row gives the median wall
time and the median CPU time of the calling thread (``time.thread_time``; with one torch
thread it is the whole step's work, and it does not count time spent waiting for a core on
a shared machine), and the ratios to dense of the medians and of the fastest CPU time of
each (the step least disturbed by other processes). The hidden variants train
bit-identically (checked: the script fails otherwise).

``--profile`` splits the hidden step's extra time over dense by component instead
(:func:`profile_model`), for ``hidden`` and ``hidden_round1``: the functions of the hidden
path are wrapped with timers for some instrumented steps, and the uninstrumented hidden -
dense difference (median CPU times, interleaved as above) is compared with what the wrappers
saw, per component and layer; what they leave is the autograd engine's. An ablation row
gives the floor of any design with an autograd Function per layer.

Usage: python benchmarks/bench_train_step.py [--repeats 50] [--conv-repeats 5]
       [--models mlp,conv4] [--threads 1] [--block 1[,K...]] [--json PATH] [--profile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from hiddenite import SupermaskConfig, masks, models
from hiddenite.kernels import topk_cpu
from hiddenite.masks import kept_count, top_fraction_mask
from hiddenite.methods.edge_popup import EdgePopup

MODES = ("dense", "hidden", "hidden_round1", "hidden_full_select")


class _TorchMaskedWeight(torch.autograd.Function):
    """The masked product and score gradient as torch ops (the implementation before)."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores)
        return weight * mask.view(torch.uint8)

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        grad_scores = grad * weight
        grad_scores.mul_(torch.sgn(scores))
        return None, grad_scores, None


class FullSelect:
    """Stands in for a layer's ``mask_selector``: a full top-k selection every step."""

    def masked_weight(self, weight, scores, density):
        return _TorchMaskedWeight.apply(weight, scores, top_fraction_mask(scores, density))


# --- the first warm-started implementation (round 1), kept for the side-by-side comparison

_BLOCK = 128
_ONE = np.float32(1.0)  # today's kernels read weight * scale: 1 gives round 1's product


@njit(nogil=True)
def round_one_bracket_product(weight, scores, lo, hi, out, band, where):
    """Round 1's bracket pass: blocks counted (and gathered), then the product in a second
    loop over the whole layer (the scores read twice)."""
    above = 0
    inside = 0
    cap = band.size - 1
    n = scores.size
    for block in range((n + _BLOCK - 1) // _BLOCK):
        base = block * _BLOCK
        part = scores[base : min(base + _BLOCK, n)]
        high = 0
        members = 0
        for j in range(part.size):
            v = abs(part[j])
            high += v > hi
            members += (v >= lo) & (v <= hi)
        above += high
        if members and inside + members <= cap:
            k = inside
            for j in range(part.size):
                v = abs(part[j])
                band[k] = v
                where[k] = base + j
                k += (v >= lo) & (v <= hi)
        inside += members
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(n):
        out[i] = weight[i] * (one if abs(scores[i]) > hi else zero)
    return above, inside


def _flat(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy().reshape(-1)


def _compiled(*tensors: torch.Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors
    )


def round_one_score_gradient(grad, weight, scores) -> torch.Tensor:
    if _compiled(grad, weight, scores.detach()) and grad.shape == scores.shape == weight.shape:
        out = torch.empty(scores.shape, dtype=torch.float32)
        topk_cpu.score_gradient(_flat(grad), _flat(weight), _ONE, _flat(scores), _flat(out))
        return out
    grad_scores = grad * weight
    grad_scores.mul_(torch.sgn(scores))
    return grad_scores


class RoundOneWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, scores, selector, m):
        ctx.save_for_backward(weight, scores)
        out = torch.empty(weight.shape, dtype=torch.float32)
        selector._product(_flat(weight), _flat(scores), m, _flat(out))
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        return None, round_one_score_gradient(grad, weight, scores), None, None


class RoundOneSelector:
    """Round 1's ``TopKSelector`` (the package's until 2026-12-03, round 2)."""

    BAND_LIMIT = 16384

    def __init__(self) -> None:
        self._threshold: float | None = None
        self._width = 0.0
        self._band = np.empty(self.BAND_LIMIT + 1, dtype=np.float32)
        self._where = np.empty(self.BAND_LIMIT + 1, dtype=np.int64)
        self.hits = 0
        self.misses = 0

    def masked_weight(self, weight, scores, density):
        n = scores.numel()
        m = kept_count(n, density)
        if not (_compiled(weight, scores.detach()) and weight.shape == scores.shape and 0 < m < n):
            return masks.masked_weight(weight, scores, top_fraction_mask(scores, density))
        return RoundOneWeight.apply(weight, scores, self, m)

    def _product(self, weight, scores, m, out) -> None:
        if self._threshold is not None and self._bracketed(weight, scores, m, out):
            self.hits += 1
            return
        self.misses += 1
        part = np.partition(np.abs(scores), scores.size - m)
        t = part[scores.size - m]
        above = int(np.count_nonzero(part > t))
        tied = int(np.count_nonzero(part == t))
        self._remember(t)
        topk_cpu.masked_product(weight, _ONE, scores, t, m - above, m - above == tied, out)

    def _remember(self, t) -> None:
        previous = t if self._threshold is None else self._threshold
        self._width = max(2.0 * abs(float(t) - previous), abs(float(t)) * 2.0**-12, 1e-30)
        self._threshold = float(t)

    def _bracketed(self, weight, scores, m, out) -> bool:
        lo = np.float32(self._threshold - self._width)
        hi = np.float32(self._threshold + self._width)
        band, where = self._band, self._where
        above, inside = round_one_bracket_product(weight, scores, lo, hi, out, band, where)
        if not above < m <= above + inside or inside > self.BAND_LIMIT:
            return False
        rank = inside - (m - above)
        part = np.partition(band[:inside], rank)
        t = part[rank]
        budget = m - above - int(np.count_nonzero(part > t))
        topk_cpu.fix_band(weight, _ONE, band, where, inside, t, budget, out)
        self._remember(t)
        return True


# --- stand-ins that do less than a hidden step, for the ablation of ``--profile``


class _Pass(torch.autograd.Function):
    """A Function that returns one kept tensor and passes the gradient on as it came."""

    @staticmethod
    def forward(ctx, weight, scores, kept):
        return kept

    @staticmethod
    def backward(ctx, grad):
        return None, grad, None


class PassFunction:
    """``mask_selector`` stand-in: only the autograd Function, no allocation, no pass."""

    def __init__(self) -> None:
        self.kept: torch.Tensor | None = None

    def masked_weight(self, weight, scores, density):
        if self.kept is None:
            self.kept = weight * (torch.rand(weight.shape, generator=torch.Generator()) < density)
        return _Pass.apply(weight, scores, self.kept)


# --- the step


def build(name: str, mode: str):
    method = "dense" if mode == "dense" else "edge-popup"
    model = models.create(name, SupermaskConfig(density=0.3, method=method))
    swap = {
        "hidden_full_select": FullSelect,
        "hidden_round1": RoundOneSelector,
        "function_no_alloc": PassFunction,
    }.get(mode)
    if swap is not None:
        for module in model.modules():
            if hasattr(module, "mask_selector"):
                module.mask_selector = swap()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _stepper(name: str, modes) -> tuple[dict, Callable[[str], None]]:
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(1))
    built = {mode: build(name, mode) for mode in modes}

    def step(mode: str) -> None:
        model, opt = built[mode]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return built, step


def _identical(built: dict) -> bool:
    """True when every hidden variant holds exactly the parameters of ``hidden``."""
    ours = list(built["hidden"][0].parameters())
    return all(
        torch.equal(a, b)
        for mode, (model, _) in built.items()
        if mode not in ("dense", "hidden")
        for a, b in zip(ours, model.parameters(), strict=True)
    )


def bench_model(name: str, repeats: int, warmup: int = 2, modes=MODES, block: int = 1) -> dict:
    """Median step times of ``modes``, taking ``block`` steps of one mode, then of the next
    (1: step by step; more: the caches hold one model's state as in a training loop, while
    alternating blocks still share slow load changes alike)."""
    built, step = _stepper(name, modes)
    for _ in range(warmup):
        for mode in modes:
            step(mode)
    wall = {mode: [] for mode in modes}
    cpu = {mode: [] for mode in modes}
    for _ in range(-(-repeats // block)):
        for mode in modes:
            for _ in range(block):
                began, began_cpu = time.perf_counter(), time.thread_time()
                step(mode)
                cpu[mode].append(time.thread_time() - began_cpu)
                wall[mode].append(time.perf_counter() - began)
    row: dict = {"model": name, "block": block}
    for mode in modes:
        row[f"{mode}_ms"] = statistics.median(wall[mode]) * 1e3
        row[f"{mode}_cpu_ms"] = statistics.median(cpu[mode]) * 1e3
    for mode in modes[1:]:
        short = mode.removeprefix("hidden_") if mode != "hidden" else "hidden"
        row[f"{short}_over_dense_cpu"] = row[f"{mode}_cpu_ms"] / row["dense_cpu_ms"]
        row[f"{short}_over_dense_cpu_min"] = min(cpu[mode]) / min(cpu["dense"])
    row["hidden_over_dense_wall"] = row["hidden_ms"] / row["dense_ms"]
    row["identical"] = _identical(built)
    return row


# --- the profile


@dataclass(frozen=True)
class Probe:
    """One function of a hidden path wrapped with a timer: ``label``, where it lives, and
    the layer size of a call (None: the size of the probe it runs inside)."""

    label: str
    owner: Any
    attribute: str
    size: Callable[[tuple], int] | None = None
    static: bool = False  # an autograd Function's forward/backward (ctx first)


def _numel(i: int) -> Callable[[tuple], int]:
    return lambda args: int(args[i].numel() if isinstance(args[i], torch.Tensor) else args[i].size)


def _layer_size(args: tuple) -> int:
    return args[1].weight.numel()


_DISPATCH = Probe("method dispatch (EdgePopup.weight)", EdgePopup, "weight", _layer_size)

PROBES = {
    "hidden": (
        _DISPATCH,
        Probe("selector entry, Function.apply", masks.TopKSelector, "masked_weight", _numel(1)),
        Probe("Function forward (alloc, save)", masks._SelectedWeight, "forward", None, True),
        Probe("kernel select_product", topk_cpu, "select_product"),
        Probe("selection over all (miss, Python)", masks.TopKSelector, "_select_all"),
        Probe("kernel masked_product (miss)", topk_cpu, "masked_product"),
        Probe("kernel remember (miss)", topk_cpu, "remember"),
        Probe("Function backward (Python)", masks._SelectedWeight, "backward", _numel(0), True),
        Probe("kernel score_gradient", topk_cpu, "score_gradient"),
    ),
    "hidden_round1": (
        _DISPATCH,
        Probe("selector entry, Function.apply", RoundOneSelector, "masked_weight", _numel(1)),
        Probe("Function forward (alloc, views, save)", RoundOneWeight, "forward", None, True),
        Probe("selection (Python)", RoundOneSelector, "_product"),
        Probe("selection (Python)", RoundOneSelector, "_bracketed"),
        Probe("kernel bracket_product", globals(), "round_one_bracket_product"),
        Probe("kernel fix_band", topk_cpu, "fix_band"),
        Probe("kernel masked_product (miss)", topk_cpu, "masked_product"),
        Probe("Function backward (Python)", RoundOneWeight, "backward", _numel(0), True),
        Probe("score gradient (Python)", globals(), "round_one_score_gradient"),
        Probe("kernel score_gradient", topk_cpu, "score_gradient"),
    ),
}


def _get(owner: Any, attribute: str) -> Any:
    return owner[attribute] if isinstance(owner, dict) else vars(owner)[attribute]


def _set(owner: Any, attribute: str, value: Any) -> None:
    if isinstance(owner, dict):
        owner[attribute] = value
    else:
        setattr(owner, attribute, value)


def _instrument(probes, sink: dict) -> list:
    """Wrap each probe's function (once, however many variants list it) so that its
    exclusive time (less the time of the probes it calls) adds to
    ``sink["totals"][label, layer size]`` and its calls to ``sink["calls"]``; returns what
    :func:`_restore` puts back."""
    saved = []
    stack: list = []  # [layer size, time spent in the probes it called] per running probe
    seen = set()
    for probe in probes:
        if (id(probe.owner), probe.attribute) in seen:
            continue
        seen.add((id(probe.owner), probe.attribute))
        original = _get(probe.owner, probe.attribute)
        function = original.__func__ if isinstance(original, staticmethod) else original

        def timed(*args, _fn=function, _probe=probe, **kwargs):
            if _probe.size is not None:
                size = _probe.size(args[1:] if _probe.static else args)
            else:
                size = stack[-1][0] if stack else -1
            frame = [size, 0.0]
            stack.append(frame)
            began = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - began
                stack.pop()
                sink["totals"][_probe.label, size] += elapsed - frame[1]
                sink["calls"] += 1
                if stack:
                    stack[-1][1] += elapsed

        _set(probe.owner, probe.attribute, staticmethod(timed) if probe.static else timed)
        saved.append((probe.owner, probe.attribute, original))
    return saved


def _restore(saved: list) -> None:
    for owner, attribute, original in reversed(saved):
        _set(owner, attribute, original)


def profile_model(name: str, repeats: int, warmup: int = 2) -> dict:
    """The extra time of ``hidden`` and ``hidden_round1`` over dense, split by component.

    Uninstrumented steps of the three are interleaved first (median CPU times of the
    stepping thread: the extra to explain); then instrumented steps of the two hidden
    variants, interleaved with dense steps, give each probe's exclusive time per layer, the
    median over the steps (``perf_counter``, a cheap clock: ``thread_time`` is a system
    call on this virtual machine that cost about 20 us a probe inside a step; the median
    sets aside the steps in which the thread waited for a core). What the probes leave of
    the extra is the autograd engine's (the Function's graph node and its Python calls,
    gradient accumulation); the timers' own cost (compare the instrumented step with the
    plain one, over ``calls_per_step``) is inside the components.
    """
    modes = ("dense", "hidden", "hidden_round1")
    built, step = _stepper(name, modes)

    def timed_step(mode: str) -> float:
        began = time.thread_time()
        step(mode)
        return time.thread_time() - began

    for _ in range(warmup):
        for mode in modes:
            step(mode)
    plain: dict = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            plain[mode].append(timed_step(mode))
    dense = statistics.median(plain["dense"]) * 1e6
    sink: dict = {}
    records: dict = {mode: [] for mode in modes[1:]}
    instrumented: dict = {mode: [] for mode in modes[1:]}
    saved = _instrument(PROBES["hidden"] + PROBES["hidden_round1"], sink)
    try:
        for _ in range(repeats):
            for mode in modes[1:]:
                step("dense")
                sink["totals"], sink["calls"] = defaultdict(float), 0
                instrumented[mode].append(timed_step(mode))
                records[mode].append((dict(sink["totals"]), sink["calls"]))
    finally:
        _restore(saved)
    results = {"model": name, "dense_us": dense, "variants": {}}
    for mode in modes[1:]:
        keys = {key for totals, _ in records[mode] for key in totals}
        sizes = sorted({n for (_, n) in keys}, reverse=True)
        median = {
            key: statistics.median(totals.get(key, 0.0) for totals, _ in records[mode]) * 1e6
            for key in keys
        }
        rows = []
        for label in dict.fromkeys(p.label for p in PROBES[mode]):
            cells = {n: median.get((label, n), 0.0) for n in sizes}
            rows.append({"component": label, "us": cells, "total_us": sum(cells.values())})
        hidden = statistics.median(plain[mode]) * 1e6
        covered = sum(row["total_us"] for row in rows)
        selectors = [m.mask_selector for m in built[mode][0].modules() if is_hidden(m)]
        results["variants"][mode] = {
            "sizes": sizes,
            "hidden_us": hidden,
            "instrumented_us": statistics.median(instrumented[mode]) * 1e6,
            "calls_per_step": statistics.median(calls for _, calls in records[mode]),
            "extra_us": hidden - dense,
            "ratio": hidden / dense,
            "rows": rows,
            "covered_us": covered,
            "rest_us": hidden - dense - covered,
            "bracket_hits": [s.hits for s in selectors],
            "bracket_misses": [s.misses for s in selectors],
        }
    results["identical"] = _identical(built)
    results["ablation"] = ablation(name, repeats, warmup)
    return results


ABLATION = (
    ("hidden", "the package's hidden step"),
    (
        "function_no_alloc",
        "an autograd Function per layer: a fixed masked weight, the gradient passed on",
    ),
    ("dense", "the dense twin"),
)


def ablation(name: str, repeats: int, warmup: int = 2) -> list[dict]:
    """Median CPU times of the hidden step, of a step whose layers each call an autograd
    Function that does no work (a fixed masked weight forward, the upstream gradient passed
    on to the scores as it came: what any design with a Function per layer pays at least),
    and of dense; interleaved, uninstrumented. (A Function that allocated its outputs and
    wrote nothing would feed uninitialised memory to the products.)"""
    modes = [mode for mode, _ in ABLATION]
    _, step = _stepper(name, modes)
    times: dict = {mode: [] for mode in modes}
    for i in range(warmup + repeats):
        for mode in modes:
            began = time.thread_time()
            step(mode)
            if i >= warmup:
                times[mode].append(time.thread_time() - began)
    dense = statistics.median(times["dense"])
    rows = []
    for mode, what in ABLATION:
        us = statistics.median(times[mode]) * 1e6
        rows.append({"variant": mode, "what": what, "us": us, "over_dense": us / 1e6 / dense})
    return rows


def is_hidden(module) -> bool:
    return hasattr(module, "mask_selector")


def print_profile(result: dict) -> None:
    for mode, v in result["variants"].items():
        sizes = v["sizes"]
        print(
            f"\n{result['model']} {mode}: dense {result['dense_us']:.0f} us, hidden "
            f"{v['hidden_us']:.0f} us ({v['ratio']:.3f}x; instrumented {v['instrumented_us']:.0f}"
            f" us, {v['calls_per_step']:.0f} probed calls), extra {v['extra_us']:.0f} us"
        )
        print("| component | " + " | ".join(f"{n:,} weights" for n in sizes) + " | all (us) |")
        print("|---" * (len(sizes) + 2) + "|")
        for row in v["rows"]:
            cells = " | ".join(f"{row['us'][n]:.1f}" for n in sizes)
            print(f"| {row['component']} | {cells} | {row['total_us']:.1f} |")
        blank = " | ".join("" for _ in sizes)
        print(f"| all probes (medians, summed) | {blank} | {v['covered_us']:.1f} |")
        print(f"| rest of the extra (autograd engine) | {blank} | {v['rest_us']:.1f} |")
        print(
            f"bracket hits per layer {v['bracket_hits']}, misses {v['bracket_misses']} "
            "(all steps, warm-up included)"
        )
    print(f"identical: {result['identical']}")
    print(f"\n{result['model']} ablation (median CPU us a step, interleaved)")
    print("| variant | what it does | CPU us | / dense | step less the next row (us) |")
    print("|---|---|---|---|---|")
    rows = result["ablation"]
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        less = f"{row['us'] - after['us']:.0f}" if after else ""
        print(
            f"| {row['variant']} | {row['what']} | {row['us']:.0f} | {row['over_dense']:.3f} | "
            f"{less} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="steps timed per mode (MLP)")
    parser.add_argument("--conv-repeats", type=int, default=5, help="steps per mode, Conv-4")
    parser.add_argument("--models", default="mlp,conv4")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--block",
        default="1",
        help="steps of one mode before the next; a comma list gives one row per value",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--profile", action="store_true", help="split the hidden step's extra time by component"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"{time.strftime('%Y-%m-%d')}"
    )
    results = []
    for name in args.models.split(","):
        repeats = args.conv_repeats if name.startswith("conv") else args.repeats
        if args.profile:
            results.append(profile_model(name, repeats))
            print_profile(results[-1])
        else:
            for block in (int(b) for b in args.block.split(",")):
                results.append(bench_model(name, repeats, block=block))
    if not args.profile:
        keys = list(results[0])
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for row in results:
            cells = [f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row.values()]
            print("| " + " | ".join(cells) + " |")
        if not all(row["identical"] for row in results):
            raise SystemExit("the hidden variants did not train identically")
    elif not all(r["identical"] for r in results):
        raise SystemExit("the hidden variants did not train identically")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
