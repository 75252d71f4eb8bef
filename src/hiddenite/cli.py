"""The ``hiddenite`` command: the only place that parses arguments and prints for people.

User errors (bad arguments, missing data, broken files) end with one line on stderr,
``hiddenite: error: ...``, and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import models
from .checkpoint import CheckpointError
from .codecs import CODECS
from .convert import SCOPES, ConfigError, SupermaskConfig
from .data import DATASETS, DatasetError, load_dataset
from .fileformat import PARAM_DTYPES, ModelFormatError, read_header, save_trained
from .init import INITS
from .layers import MODES
from .summary import summary
from .train import OPTIMIZERS, TrainConfig, evaluate, load_trained, resolve_device, train

USER_ERRORS = (
    ConfigError,
    DatasetError,
    CheckpointError,
    ModelFormatError,
    ValueError,
    FileNotFoundError,
)


class UserError(Exception):
    """An error in what the user asked for; printed as one line, exit code 2."""


def _model_kwargs(pairs: list[str]) -> dict:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. width=0.5")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


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
        default="signed-constant",
        choices=INITS,
        help="frozen-weight distribution (default signed-constant)",
    )
    g.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    g.add_argument(
        "--mode",
        default="hidden",
        choices=MODES,
        help="hidden (learned masks) or dense (the twin baseline)",
    )
    g.add_argument(
        "--scope",
        default="layer",
        choices=SCOPES,
        help="top-k per layer or one global threshold (default layer)",
    )
    g.add_argument(
        "--scale-by-density", action="store_true", help="divide frozen weights by sqrt(density)"
    )
    g.add_argument("--keep-first-dense", action="store_true", help="first layer stays dense")
    g.add_argument("--keep-last-dense", action="store_true", help="last layer stays dense")


def _supermask_config(args) -> SupermaskConfig:
    return SupermaskConfig(
        density=args.density,
        init=args.init,
        seed=args.seed,
        mode=args.mode,
        scope=args.scope,
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
    p.add_argument("--out", required=True, help="run folder: config, metrics, checkpoint")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
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
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
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
        help="mask codec for every layer (default auto: the smallest per layer)",
    )
    p.add_argument(
        "--param-dtype",
        default="float32",
        choices=PARAM_DTYPES,
        help="per-channel parameters (float16: smaller, outputs no longer bit-identical)",
    )
    p.add_argument("--onnx", default=None, metavar="PATH", help="also write the dense ONNX model")

    p = sub.add_parser("inspect", help="per-layer sizes of a model file (reads only its header)")
    p.add_argument("model_file", help="a .hnn model file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _cmd_train(args) -> int:
    lr = args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else 0.01)
    config = TrainConfig(
        model=args.model,
        model_kwargs=_model_kwargs(args.model_arg),
        supermask=_supermask_config(args),
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        score_decay=not args.no_score_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        val_fraction=args.val_fraction,
        train_subset=args.train_subset,
    )
    out = Path(args.out)
    if not args.resume and (out / "checkpoint.safetensors").exists():
        raise UserError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    result = train(
        config,
        out,
        data_dir=args.data_dir,
        resume=args.resume,
        device=resolve_device(args.device),
        progress=False if args.no_progress else None,
    )
    last = result.history[-1] if result.history else {}
    print(f"done: {out}/checkpoint.safetensors  (val accuracy {last.get('val_accuracy', 0):.4f})")
    return 0


def _cmd_eval(args) -> int:
    device = resolve_device(args.device)
    model, config = load_trained(args.checkpoint, device)
    test = load_dataset(config.dataset, "test", args.data_dir)
    metrics = evaluate(model, test, config.eval_batch_size, device)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "dataset": config.dataset,
                    "examples": len(test),
                    **metrics,
                }
            )
        )
    else:
        print(
            f"{config.dataset} test: accuracy {metrics['accuracy']:.4f}  "
            f"loss {metrics['loss']:.4f}  ({len(test)} examples)"
        )
    return 0


def _cmd_summary(args) -> int:
    if args.checkpoint:
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
    try:
        info = save_trained(args.checkpoint, args.output, codec=codec, param_dtype=args.param_dtype)
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    t = info.totals()
    used = sorted({layer["codec"] for layer in info.layers})
    print(
        f"wrote {args.output}: {t['file_bytes']:,} bytes ({t['weights']:,} weights, "
        f"{t['file_bits_per_weight']:.3f} bit/weight, codecs {', '.join(used)}); "
        f"float32 {t['float32_bytes']:,} bytes ({t['ratio_float32']:.1f}x), "
        f"binarized {t['binarized_bytes']:,} bytes ({t['ratio_binarized']:.2f}x)"
    )
    if args.onnx:
        from .fileformat import load
        from .onnx_export import export_onnx

        model = load(args.output)
        shape = models.default_input_shape(info.meta["arch"]["name"], **info.meta["arch"]["kwargs"])
        size = export_onnx(model, args.onnx, shape)
        dims = "x".join(map(str, shape))
        print(f"wrote {args.onnx}: {size:,} bytes (dense ONNX model, input batch x {dims})")
    return 0


def _cmd_inspect(args) -> int:
    info = read_header(args.model_file)
    print(info.to_json() if args.json else info.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hiddenite`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    from .main_job import run_main_job

    commands = {
        "run": run_main_job,
        "train": _cmd_train,
        "eval": _cmd_eval,
        "summary": _cmd_summary,
        "export": _cmd_export,
        "inspect": _cmd_inspect,
    }
    try:
        return commands[args.command](args)
    except (UserError, *USER_ERRORS) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hiddenite: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hiddenite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
