"""How closely an exported ONNX file computes what ``hiddenite eval`` does, on real test images.

Run: ``PYTHONPATH=src python benchmarks/onnx_agreement.py MODEL.hnn MODEL.onnx
[--exact-operators] [--limit N]`` after ``hiddenite export RUN -o MODEL.hnn --onnx MODEL.onnx``.

Runs the Fashion-MNIST test set (all 10,000 images unless ``--limit``) through onnxruntime and
through the torch model loaded from the ``.hnn`` file (with ``--exact-operators``: with every
inference operator exact, what that flag exports) and prints, per network: accuracy, rows whose
logits differ by more than 1e-4 (a quantizer decision moved by the matrix products' float32
rounding), the largest difference elsewhere, and top-1 disagreements with how many of them have
a runner-up logit within 1e-5 of the top one (a tie the rounding breaks either way). The last
line does the same for ``to_dense(model)``, the float network the export wrote before it
carried activation quantizers.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def compare(name: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> str:
    diff = np.abs(ref - got).max(1)
    big = diff > 1e-4
    top = ref.max(1, keepdims=True)
    tied = (np.abs(ref - top) <= 1e-5).sum(1) > 1
    differ = ref.argmax(1) != got.argmax(1)
    rest = float(diff[~big].max()) if (~big).any() else 0.0
    return (
        f"{name}: accuracy torch {np.mean(ref.argmax(1) == labels):.4f} vs "
        f"{np.mean(got.argmax(1) == labels):.4f}; rows > 1e-4 apart {int(big.sum())}/{len(ref)} "
        f"(max {float(diff.max()):.2e}), elsewhere max {rest:.2e}; top-1 differs "
        f"{int(differ.sum())} ({int((differ & tied).sum())} tied within 1e-5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_file")
    parser.add_argument("onnx_file")
    parser.add_argument("--exact-operators", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import onnxruntime as ort

    from hiddenite import load, to_dense
    from hiddenite.data import load_dataset, normalize
    from hiddenite.ops import OperatorChoice, operator_choices, set_operator_choices_

    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", "test", args.data_dir)
    n = args.limit or len(data.labels)
    x = normalize(data.images[:n], data.mean, data.std)
    labels = data.labels[:n].numpy()
    model = load(args.model_file).eval()
    if args.exact_operators:
        set_operator_choices_(model, {k: OperatorChoice() for k in operator_choices(model)})
    session = ort.InferenceSession(args.onnx_file, providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": c.numpy()})[0] for c in x.split(1000)])
    dense = to_dense(model).eval()
    with torch.no_grad():
        ref = torch.cat([model(c) for c in x.split(1000)]).numpy()
        old = torch.cat([dense(c) for c in x.split(1000)]).numpy()
    print(compare("onnxruntime", ref, got, labels))
    print(compare("to_dense float network (the export before)", ref, old, labels))


if __name__ == "__main__":
    main()
