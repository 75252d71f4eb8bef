"""The ``hiddenite`` command: the only place that parses arguments and prints for people.

User errors (bad arguments, missing data, broken files) end with one line on stderr,
``hiddenite: error: ...``, and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from . import models
from .codecs import AUTO_CODECS, CODECS
from .convert import SupermaskConfig
from .data import DATASETS, dataset_info, iterate_batches, load_dataset
from .distributed import environment_world, process_group
from .errors import ConfigError, UserError
from .export import export_checkpoint
from .fileformat import PARAM_DTYPES, load, read_header, save
from .hw import ArchSpec, estimate, sweep
from .hw.cim import CimSpec, analyze_cim, get_cim_preset, parse_granularity
from .hw.cim_plots import write_cim
from .hw.model import _json_safe, load_source
from .hw.outputs import (
    MODELLED_NOTE,
    mask_source_note,
    summary_totals,
    totals_table,
    write_simulation,
)
from .hw.plots import plot_pareto
from .hw.sweep import write_rows_csv
from .init import INITS
from .main_job import run_main_job
from .methods import METHODS, get_method, method_config
from .onnx_export import check_exportable, export_onnx
from .ops import OPERATORS, PHASES, OperatorChoice, get_operator, operator_choices, use_operator
from .progressive import ProgressiveConfig, as_progressive, sweep_table, write_sweep
from .progressive import sweep as progressive_sweep
from .progressive import tune as tune_progressive
from .quant import ActQuantConfig
from .summary import summary
from .train import (
    OPTIMIZERS,
    TrainConfig,
    check_data_fit,
    check_memory,
    data_shape,
    evaluate,
    load_trained,
    resolve_device,
    train,
)
from .validate import check_output_file, check_output_folder

RUN_FILES = ("checkpoint.safetensors", "config.json", "metrics.csv", "metrics.json")


def _key_values(pairs: list[str], flag: str, example: str) -> dict:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {example}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def _model_kwargs(pairs: list[str]) -> dict:
    return _key_values(pairs, "--model-arg", "width=0.5")


def _add_supermask_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hidden network")
    g.add_argument(
        "--model",
        default="conv4",
        choices=list(models.MODELS),
        metavar="NAME",
        help=f"zoo model: {', '.join(models.MODELS)} (default conv4)",
    )
    g.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model keyword argument, e.g. width=0.5 (repeatable)",
    )
    g.add_argument(
        "--density",
        type=float,
        default=0.5,
        help="fraction of weights KEPT by each mask, in (0, 1] (default 0.5)",
    )
    g.add_argument(
        "--init",
        default=None,
        choices=INITS,
        help="frozen-weight distribution (default: the method's own, else signed-constant)",
    )
    g.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    g.add_argument(
        "--method",
        default="edge-popup",
        choices=list(METHODS),
        metavar="NAME",
        help=f"supermask method: {', '.join(METHODS)} (default edge-popup; dense = the twin "
        "baseline)",
    )
    g.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method argument, e.g. scope=global for edge-popup (repeatable)",
    )
    g.add_argument(
        "--scale-by-density",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="divide frozen weights by sqrt(density) so each layer keeps its signal "
        "(default on; --no-scale-by-density for the unscaled init)",
    )
    g.add_argument("--keep-first-dense", action="store_true", help="first layer stays dense")
    g.add_argument("--keep-last-dense", action="store_true", help="last layer stays dense")


_SUPERMASK_DESTS = (
    "model",
    "model_arg",
    "density",
    "init",
    "seed",
    "method",
    "method_arg",
    "scale_by_density",
    "keep_first_dense",
    "keep_last_dense",
)


def _supermask_config(args) -> SupermaskConfig:
    method = method_config(
        args.method, **_key_values(args.method_arg, "--method-arg", "scope=global")
    )
    init = args.init or get_method(method.method).default_init or SupermaskConfig.init
    return SupermaskConfig(
        density=args.density,
        init=init,
        seed=args.seed,
        method=method,
        scale_by_density=args.scale_by_density,
        keep_first_dense=args.keep_first_dense,
        keep_last_dense=args.keep_last_dense,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiddenite",
        description="Hidden neural networks: frozen seed-regenerated weights, learned masks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "run", help="the main job: train hidden + dense on Fashion-MNIST, rebuild from seed, report"
    )
    p.add_argument("--out", default="runs/default", help="output folder (default runs/default)")
    p.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST files")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model")
    p.add_argument(
        "--train-subset", type=int, default=None, help="training examples to use (0: all)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny budget (seconds): checks the pipeline, not the accuracy",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")

    p = sub.add_parser("train", help="train a hidden network (or its dense twin)")
    _add_supermask_args(p)
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="folder holding the data set's files")
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="imagefolder setting: size=224, resize=256, scale=0.08, mode=auto|RGB|L, "
        "workers=2 (repeatable)",
    )
    p.add_argument("--out", required=True, help="run folder: config, metrics, checkpoint")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="global batch; under torchrun each of N processes trains on batch/N (default 128)",
    )
    p.add_argument(
        "--optimizer",
        default=None,
        choices=OPTIMIZERS,
        help="default: the method's own (binarized: adam), else sgd",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default 0.1 for sgd, 0.01 for adam)",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--no-score-decay", action="store_true", help="no weight decay on the scores")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action="store_true", help="random crop + flip")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="training-set fraction held out for validation (default 0.1)",
    )
    p.add_argument("--train-subset", type=int, default=0, help="use only N training examples")
    p.add_argument(
        "--amp", default="none", choices=["none", "bf16"], help="bfloat16 autocast (training)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--local-batch-norm",
        action="store_true",
        help="under torchrun, normalise with each process's own piece of the batch (faster; "
        "default: the global batch's statistics, as one process)",
    )
    g = p.add_argument_group("precision (docs/precision.md)")
    g.add_argument(
        "--act-bits",
        default=None,
        metavar="B",
        help="quantize activations to B bits (2..16): calibrate, then train with the "
        "straight-through estimator (default: float activations)",
    )
    g.add_argument(
        "--act-calibration-batches",
        default="8",
        metavar="N",
        help="training batches that calibrate the quantizers (default 8)",
    )
    _add_operator_arg(g, "every Linear/Conv2d multiplies with")
    g.add_argument(
        "--operator-phase",
        default=None,
        metavar="PHASE",
        help="where --operator applies: both (default), training or inference",
    )

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    _add_operator_arg(p, "evaluate with (default: the run's own inference operator)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("summary", help="per-layer size table of a model or checkpoint")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (optional)")
    _add_supermask_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "export", help="write a checkpoint as a compact model file (.hnn), optionally ONNX"
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("-o", "--output", required=True, help="model file to write, e.g. model.hnn")
    p.add_argument(
        "--codec",
        default="auto",
        choices=["auto", *CODECS],
        help="mask codec for every layer (default auto: the smallest of "
        f"{', '.join(AUTO_CODECS)} per layer)",
    )
    p.add_argument(
        "--param-dtype",
        default="float32",
        choices=PARAM_DTYPES,
        help="per-channel parameters (float16: smaller, outputs no longer bit-identical)",
    )
    p.add_argument("--onnx", default=None, metavar="PATH", help="also write the dense ONNX model")
    p.add_argument(
        "--exact-operators",
        action="store_true",
        help="with --onnx: export layers that multiply with an approximate operator (e.g. "
        "mitchell, which ONNX cannot express) with exact products instead of refusing",
    )

    p = sub.add_parser(
        "progressive",
        help="ProgressiveNN: run a trained checkpoint at 1..N bits (accuracy, compute)",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--bits", default="1-8", help="precisions: A-B or a list 1,2,4,8 (N = max)")
    p.add_argument("--recalibrate", action="store_true", help="per-precision BN statistics")
    p.add_argument(
        "--retrain-bn",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="also retrain only the per-precision batch norm (gamma, beta) at each precision "
        "for EPOCHS on the calibration images (implies --recalibrate)",
    )
    p.add_argument("--calibration-examples", type=int, default=5000, help="training images used")
    p.add_argument("--scale", default="channel", choices=["channel", "layer"])
    p.add_argument("--out", default="progressive-out", help="folder for CSV, JSON, plot")
    p.add_argument("--model-file", default=None, help="also write the N-bit model (.hnn)")
    p.add_argument("--data-dir", default=None)

    p = sub.add_parser("inspect", help="per-layer sizes of a model file (reads only its header)")
    p.add_argument("model_file", help="a .hnn model file")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "simulate",
        help="modelled accelerator cost (cycles, traffic, energy, TOPS/W) of a model",
    )
    _add_hw_source_args(p)
    p.add_argument(
        "--arch",
        default="hiddenite",
        choices=["hiddenite", "bnn", "int8", "all"],
        help="architecture preset, or all three (default hiddenite)",
    )
    p.add_argument(
        "--out", default="runs/simulate", help="folder for CSV, JSON and PNGs (runs/simulate)"
    )
    _add_operator_arg(p, "cost every layer's multiplies as (default: the model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "sweep", help="modelled accelerator cost over a grid of specs, densities and codecs"
    )
    _add_hw_source_args(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values of one key (repeatable): pe_dims=16x4x4x16,32x4x4x8, weight_sram_bytes=..., "
        "act_in_sram_bytes=..., density=0.1,0.3, codec=packed,entropy, arch=..., any spec field "
        "or energy.<field>",
    )
    p.add_argument(
        "--arch",
        default="hiddenite",
        choices=["hiddenite", "bnn", "int8"],
        help="base architecture preset (default hiddenite; --spec replaces it)",
    )
    p.add_argument("--out", default="runs/sweep", help="folder for CSV and PNG (runs/sweep)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "cim", help="modelled SRAM computing-in-memory energy saved by power gating, per layer"
    )
    p.add_argument("source", help="a .hnn model file, or a checkpoint or run folder")
    p.add_argument("--spec", default=None, metavar="YAML", help="CIM macro spec (YAML)")
    p.add_argument(
        "--preset",
        default="sram-28nm",
        help="built-in macro when no --spec: sram-28nm (default), sram-28nm-int8, sram-28nm-act",
    )
    p.add_argument(
        "--granularity",
        nargs="+",
        default=None,
        metavar="RxC",
        help="gating units to compare: RxC cells, rows:G or cols:G (default: the spec's own)",
    )
    p.add_argument(
        "--dataset", default=None, help="data set (default: the run's, else fashion-mnist)"
    )
    p.add_argument("--data-dir", default=None, help="folder holding the data set files")
    p.add_argument("--samples", type=int, default=1000, help="test inputs to run (default 1000)")
    p.add_argument("--out", default="runs/cim", help="folder for CSV, JSON and PNGs (runs/cim)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _add_hw_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="a .hnn model file, a checkpoint or run folder, or a zoo model name (with --density)",
    )
    p.add_argument("--spec", default=None, metavar="YAML", help="architecture spec file (YAML)")
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="C,H,W",
        help="input size (default: the model's own, e.g. 1,28,28)",
    )
    p.add_argument(
        "--activations-on-chip",
        action="store_true",
        help="keep activations on chip between layers when they fit",
    )
    p.add_argument(
        "--no-skip-masked",
        action="store_true",
        help="masked-out weights still cost an add (default: skipped, no PE energy)",
    )
    g = p.add_argument_group("zoo model name as SOURCE (untrained network)")
    g.add_argument("--density", type=float, default=None, help="kept fraction of every mask")
    g.add_argument(
        "--codec",
        default="entropy",
        choices=["entropy", "packed"],
        help="mask size: entropy bound ceil(H(k) n/8) (default) or packed ceil(n/8)",
    )
    g.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE", help="model argument"
    )


def _add_operator_arg(p, what: str) -> None:
    p.add_argument(
        "--operator",
        default=None,
        metavar="NAME",
        help=f"operator to {what}: {', '.join(OPERATORS)} (mitchell: logarithmic multiplier)",
    )


def _operator_arg(args) -> str | None:
    """The registered operator ``--operator`` names (None when not given)."""
    if args.operator is None:
        return None
    try:
        return get_operator(args.operator).name
    except UserError:
        raise UserError(
            f"--operator {args.operator!r}: unknown operator; use one of {', '.join(OPERATORS)}"
        ) from None


def _precision_args(args) -> dict:
    """TrainConfig fields from --act-bits, --act-calibration-batches, --operator(-phase)."""
    fields: dict = {}
    if args.act_bits is not None:
        try:
            fields["act_quant"] = ActQuantConfig(bits=int(args.act_bits))
        except (ValueError, ConfigError):
            raise UserError(f"--act-bits {args.act_bits!r}: give an integer in 2..16") from None
    text = args.act_calibration_batches
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--act-calibration-batches {text!r}: give a positive integer")
    fields["calibration_batches"] = int(text)
    name = _operator_arg(args)
    phase = args.operator_phase
    if phase is not None and name is None:
        raise UserError("--operator-phase needs --operator NAME")
    if phase is not None and phase not in PHASES:
        raise UserError(f"--operator-phase {phase!r}: use one of {', '.join(PHASES)}")
    if name is not None:
        fields["operator"] = OperatorChoice().with_phase(phase or "both", name)
    return fields


def _training_recipe(args, supermask: SupermaskConfig) -> tuple[str, float]:
    """(optimizer, lr): as given; else the method's own when neither is given; else SGD 0.1
    (Adam 0.01)."""
    recipe = get_method(supermask.method.method).default_optimizer
    if args.optimizer is None and args.lr is None and recipe is not None:
        return recipe
    optimizer = args.optimizer or "sgd"
    return optimizer, args.lr if args.lr is not None else (0.1 if optimizer == "sgd" else 0.01)


def _cmd_train(args) -> int:
    supermask = _supermask_config(args)
    optimizer, lr = _training_recipe(args, supermask)
    config = TrainConfig(
        model=args.model,
        model_kwargs=_model_kwargs(args.model_arg),
        supermask=supermask,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        score_decay=not args.no_score_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        val_fraction=args.val_fraction,
        train_subset=args.train_subset,
        data_options=_key_values(args.data_option, "--data-option", "size=64"),
        amp=args.amp,
        sync_batch_norm=not args.local_batch_norm,
        **_precision_args(args),
    )
    out = check_output_folder(args.out, "run folder (--out)")
    for name in RUN_FILES:
        check_output_file(out / name, "run file")
    if not args.resume and (out / "checkpoint.safetensors").exists():
        raise UserError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    world = environment_world()  # set by torchrun: data-parallel over its processes
    with process_group(world, args.device) if world else nullcontext() as device:
        result = train(
            config,
            out,
            data_dir=args.data_dir,
            resume=args.resume,
            device=device or resolve_device(args.device),
            progress=False if args.no_progress else None,
        )
    if world and not world.is_main:
        return 0
    last = result.history[-1] if result.history else {}
    print(f"done: {out}/checkpoint.safetensors  (val accuracy {last.get('val_accuracy', 0):.4f})")
    return 0


def _cmd_eval(args) -> int:
    device = resolve_device(args.device)
    operator = _operator_arg(args)
    model, config = load_trained(args.checkpoint, device)
    if operator is not None:
        use_operator(model, operator, phase="inference")
    inference = {k: c.inference for k, c in operator_choices(model).items()}
    used = sorted(set(inference.values()) - {"exact"})
    shape = dataset_info(config.dataset, config.data_options)
    check_memory(config, shape, f"{config.dataset} test", device, training=False)
    test = load_dataset(config.dataset, "test", args.data_dir, config.data_options)
    check_data_fit(config, data_shape(test), f"{config.dataset} test")
    metrics = evaluate(model, test, config.eval_batch_size, device)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "dataset": config.dataset,
                    "examples": len(test),
                    "operators": {k: v for k, v in inference.items() if v != "exact"},
                    **metrics,
                }
            )
        )
    else:
        ops = f", operator {'+'.join(used)}" if used else ""
        print(
            f"{config.dataset} test: accuracy {metrics['accuracy']:.4f}  "
            f"loss {metrics['loss']:.4f}  ({len(test)} examples{ops})"
        )
    return 0


def _cmd_summary(args) -> int:
    if args.checkpoint:
        defaults = vars(_parser().parse_args(["summary"]))
        given = [k for k in _SUPERMASK_DESTS if getattr(args, k) != defaults[k]]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(
                f"{flag} describes a zoo model; a checkpoint's summary uses the checkpoint's own "
                f"settings: drop {flag} or the checkpoint"
            )
        model, _ = load_trained(args.checkpoint)
    else:
        kwargs = _model_kwargs(args.model_arg)
        models.check_arguments(args.model, **kwargs)
        model = models.create(args.model, _supermask_config(args), **kwargs)
    result = summary(model, print_fn=None)
    print(result.to_json() if args.json else result.table())
    return 0


def _cmd_export(args) -> int:
    codec = None if args.codec == "auto" else args.codec
    check_output_file(args.output, "model file (-o)")
    if args.exact_operators and not args.onnx:
        raise UserError("--exact-operators applies to the ONNX file: add --onnx PATH")
    if args.onnx:
        check_output_file(args.onnx, "ONNX file (--onnx)")
        if os.path.abspath(args.onnx) == os.path.abspath(args.output):
            raise UserError("--onnx and -o name the same file; give two paths")
    try:
        info = export_checkpoint(
            args.checkpoint,
            args.output,
            codec=codec,
            param_dtype=args.param_dtype,
            # refused before the model file is written: nothing is left half done
            check=(lambda m: check_exportable(m, args.exact_operators)) if args.onnx else None,
        )
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    t = info.totals()
    used = sorted({p.codec for e in info.entries for p in e.parts if p.codec is not None})
    print(
        f"wrote {args.output}: {t['file_bytes']:,} bytes ({t['weights']:,} weights, "
        f"{t['file_bits_per_weight']:.3f} bit/weight, codecs {', '.join(used) or 'none'}); "
        f"float32 {t['float32_bytes']:,} bytes ({t['ratio_float32']:.1f}x), "
        f"binarized {t['binarized_bytes']:,} bytes ({t['ratio_binarized']:.2f}x)"
    )
    if args.onnx:
        model = load(args.output)
        name, kwargs = info.arch
        shape = models.default_input_shape(name, **kwargs)
        onnx = export_onnx(model, args.onnx, shape, exact_operators=args.exact_operators)
        dims = "x".join(map(str, shape))
        extra = f"; {onnx.describe()}" if onnx.describe() else ""
        print(
            f"wrote {args.onnx}: {onnx.size:,} bytes (dense ONNX model, input batch x {dims}"
            f"{extra})"
        )
    return 0


def _cmd_inspect(args) -> int:
    info = read_header(args.model_file)
    print(info.to_json() if args.json else info.table())
    return 0


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--input-shape {text!r}: expected C,H,W (three positive integers)")
    if max(dims) > 1 << 20:
        raise UserError(f"--input-shape {text!r}: each size must be at most {1 << 20:,}")
    return dims


def _hw_workloads(args, density_fallback: float | None = None):
    """Workloads and source description for ``simulate`` / ``sweep``."""

    is_zoo = args.source in models.MODELS and not Path(args.source).exists()
    if not is_zoo and (args.density is not None or args.model_arg):
        raise UserError("--density and --model-arg apply only when SOURCE is a zoo model name")
    density = args.density if args.density is not None else density_fallback
    if is_zoo and density is None:
        raise UserError(
            f"{args.source!r} is a zoo model name: give --density K (kept fraction) for an "
            "estimate of the untrained network"
        )
    return load_source(
        args.source,
        _input_shape(args.input_shape),
        density=density,
        codec=args.codec,
        model_kwargs=_model_kwargs(args.model_arg),
    )


def _cmd_simulate(args) -> int:

    check_output_folder(args.out, "output folder (--out)")
    spec = ArchSpec.from_yaml(args.spec) if args.spec else None
    operator = _operator_arg(args)
    workloads, meta = _hw_workloads(args)
    if operator is not None:  # the multiplier the operator declares, on every layer
        datapath = get_operator(operator).datapath
        workloads = [dataclasses.replace(w, datapath=datapath) for w in workloads]
        meta["operator"] = operator
    meta["act_bits"] = {w.name: w.act_bits for w in workloads if w.act_bits}
    meta["log_datapath_layers"] = [w.name for w in workloads if w.datapath == "log"]
    options = {
        "skip_masked": not args.no_skip_masked,
        "activations_on_chip": args.activations_on_chip,
    }
    everything = {}
    for arch in ("hiddenite", "bnn", "int8"):
        everything[arch] = estimate(workloads, arch, **options)
    if spec is not None:
        everything[spec.name] = estimate(workloads, spec, **options)
    for rep in everything.values():
        rep.options["source"] = meta
    if args.arch == "all":
        shown = list(everything) if spec is None else ["hiddenite", "bnn", "int8", spec.name]
        shown = list(dict.fromkeys(shown))
    else:
        shown = [spec.name if spec is not None else args.arch]
    reports = {name: everything[name] for name in shown}
    plotted = {k: v for k, v in everything.items() if k in ("hiddenite", "bnn", "int8")}
    if spec is not None:
        plotted[spec.name] = everything[spec.name]
    try:
        files = write_simulation(reports, args.out, plotted=plotted)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    if args.json:
        doc = {
            "source": meta,
            "note": MODELLED_NOTE,
            "reports": {name: summary_totals(rep) for name, rep in reports.items()},
            "files": files,
        }
        print(json.dumps(_json_safe(doc), indent=2))
        return 0
    print(f"{args.source}: {len(workloads)} conv/linear layers; {mask_source_note(meta)}")
    if meta["act_bits"] or meta["log_datapath_layers"]:
        bits = ", ".join(f"{k} {v}" for k, v in meta["act_bits"].items()) or "none"
        logs = ", ".join(meta["log_datapath_layers"]) or "none"
        print(f"activation bits from the model: {bits}; log-multiplier layers: {logs}")
    for rep in reports.values():
        print()
        print(rep.to_text())
    if len(reports) > 1:
        print("\n== totals side by side")
        print(totals_table(reports))
    print(f"\nAll figures are {MODELLED_NOTE}.")
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(Path(f).name for f in files))
    return 0


def _grid_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    parts = text.lower().split("x")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return text


def _parse_grid(items: list[str]) -> dict:
    grid: dict = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        raw = [v.strip() for v in values.split(",")]
        if not sep or not key or not values or any(not v for v in raw):
            raise UserError(
                f"--grid {item!r}: expected KEY=V1,V2,... e.g. density=0.1,0.3 or "
                "pe_dims=16x4x4x16,32x4x4x8"
            )
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list all its values in one --grid")
        grid[key] = [_grid_value(v) for v in raw]
    return grid


def _cmd_sweep(args) -> int:
    check_output_folder(args.out, "output folder (--out)")
    grid = _parse_grid(args.grid)
    if not grid:
        raise UserError("give at least one --grid KEY=V1,V2,... (e.g. --grid density=0.1,0.3)")
    base = ArchSpec.from_yaml(args.spec) if args.spec else args.arch
    first_density = grid["density"][0] if "density" in grid else None
    if isinstance(first_density, bool) or not isinstance(first_density, int | float | None):
        raise UserError(f"--grid density: expected numbers, got {grid['density']!r}")
    workloads, meta = _hw_workloads(args, density_fallback=first_density)
    out = Path(args.out)
    began = time.perf_counter()
    rows = sweep(
        workloads,
        base,
        grid,
        skip_masked=not args.no_skip_masked,
        activations_on_chip=args.activations_on_chip,
    )
    seconds = time.perf_counter() - began
    try:  # only once every point ran: a refused grid leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    write_rows_csv(rows, out / "sweep.csv")

    plot_pareto(rows, out / "pareto.png")
    front = [r for r in rows if r["pareto"]]
    front.sort(key=lambda r: r["latency_s"])
    rate = len(rows) / seconds if seconds > 0 else float("inf")
    if args.json:
        doc = {
            "source": meta,
            "note": MODELLED_NOTE,
            "points": len(rows),
            "seconds": seconds,
            "points_per_s": rate,
            "pareto": front,
            "files": [str(out / "sweep.csv"), str(out / "pareto.png")],
        }
        print(json.dumps(_json_safe(doc), indent=2))
        return 0
    print(f"{args.source}: {len(workloads)} layers; {mask_source_note(meta)}")
    keys = list(grid)
    head = [*keys, "arch", "latency_ms", "energy_uJ", "offchip_model_B", "TOPS/W"]
    table = [
        [
            *(str(r[k]) for k in keys),
            str(r["arch"]),
            f"{r['latency_s'] * 1e3:.4f}",
            f"{r['energy_per_inference_pj'] / 1e6:.3f}",
            f"{r['offchip_model_bytes']:,}",
            f"{r['tops_per_watt']:.2f}",
        ]
        for r in front
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    print(
        f"\nPareto-optimal points ({len(front)} of {len(rows)}, energy per inference vs latency):"
    )
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(
        f"\n{len(rows)} points in {seconds:.2f} s ({rate:,.0f} points/s); all figures are "
        f"{MODELLED_NOTE}."
    )
    print(f"wrote {out / 'sweep.csv'} and {out / 'pareto.png'}")
    return 0


def _cmd_cim(args) -> int:

    if args.spec:
        try:
            spec = CimSpec.from_yaml(args.spec)
        except FileNotFoundError:
            raise UserError(f"--spec {args.spec}: no such file") from None
    else:
        spec = get_cim_preset(args.preset)
    specs = [parse_granularity(g, spec) for g in args.granularity] if args.granularity else [spec]
    path = Path(args.source)
    if path.is_file() and path.suffix == ".hnn":
        model, dataset = load(path), args.dataset or "fashion-mnist"
    elif path.exists():
        model, config = load_trained(path)
        dataset = args.dataset or config.dataset
    else:
        raise UserError(f"{args.source}: no such model file, checkpoint or run folder")
    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: give a positive number of inputs")
    test = load_dataset(dataset, "test", args.data_dir)
    test = test.subset(range(min(args.samples, len(test))))
    batches = iterate_batches(test, 100, shuffle=False, generator=None, augment=False)
    reports = analyze_cim(model, batches, specs)
    for rep in reports:
        rep.options.update(source=str(args.source), dataset=dataset, samples=len(test))
    try:
        files = write_cim(reports, args.out)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    if args.json:
        doc = {r.spec.granularity: r.totals for r in reports}
        print(json.dumps(_json_safe({"reports": doc, "files": files}), indent=2))
        return 0
    for rep in reports:
        print(rep.to_text(), end="\n\n")
    print("All figures are modelled (docs/cim.md: per-event energies, 28 nm), not measured.")
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(Path(f).name for f in files))
    return 0


def _cmd_progressive(args) -> int:

    text = args.bits.replace(" ", "")
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            bits = list(range(lo, hi + 1))
        else:
            bits = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--bits: {args.bits!r} is not A-B or a list such as 1,2,4,8") from None
    if not bits or min(bits) < 1 or max(bits) > 8:
        raise UserError(f"--bits: {args.bits!r} must name precisions in 1..8")
    if args.calibration_examples < 1:
        raise UserError("--calibration-examples must be >= 1")
    if args.retrain_bn < 0:
        raise UserError(f"--retrain-bn {args.retrain_bn}: give a number of epochs >= 0")
    model, config = load_trained(args.checkpoint)
    # a checkpoint trained with --method progressive is run from its own digits and statistics
    wanted = ProgressiveConfig(bits=max(bits), scale=args.scale, affine=args.retrain_bn > 0)
    prog = as_progressive(model, wanted)
    test = load_dataset(config.dataset, "test", args.data_dir)
    calibration = None
    if args.recalibrate or args.retrain_bn:
        full = load_dataset(config.dataset, "train", args.data_dir)
        calibration = full.subset(range(min(args.calibration_examples, len(full))))
    rows = progressive_sweep(
        prog,
        test,
        bits,
        calibration=calibration,
        retrain_epochs=args.retrain_bn,
        batch_size=config.eval_batch_size,
    )
    print(sweep_table(rows))
    title = f"{config.model} on {config.dataset}: ProgressiveNN N={max(bits)}"
    try:
        files = write_sweep(rows, args.out, title=title)
        if args.model_file:
            if calibration is not None:  # the file stores the recalibrated (retrained) model
                prog = tune_progressive(
                    prog,
                    calibration,
                    bits,
                    retrain_epochs=args.retrain_bn,
                    batch_size=config.eval_batch_size,
                )
            save(prog, args.model_file)
            files.append(args.model_file)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    print("wrote " + ", ".join(files))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hiddenite`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)

    commands = {
        "run": run_main_job,
        "train": _cmd_train,
        "eval": _cmd_eval,
        "summary": _cmd_summary,
        "export": _cmd_export,
        "inspect": _cmd_inspect,
        "simulate": _cmd_simulate,
        "sweep": _cmd_sweep,
        "cim": _cmd_cim,
        "progressive": _cmd_progressive,
    }
    try:
        return commands[args.command](args)
    except UserError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hiddenite: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hiddenite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception:  # not a user error: a bug; keep its traceback (printed below)
        print(
            "hiddenite: internal error, a bug in hiddenite rather than in your input; please "
            "report it with the command and the traceback below",
            file=sys.stderr,
        )
        raise


if __name__ == "__main__":
    sys.exit(main())
