#!/usr/bin/env bash
# Every GPU check of the package in one prepared run, for a CUDA machine (its steps are capped at
# 300 + 150 + 150 s, so it fits a 15-minute device lease; never yet run on a GPU): the CUDA
# tests (tests/test_cuda.py: load, save, every method, training, summary,
# the hardware model and the command line on the GPU against the CPU; the CUDA tests of the
# PRNG, init, layers and the Triton kernels), then the Triton kernels' benchmarks against
# cuBLAS / cuDNN fp16. Logs and JSON land in $OUT (default: gpu-results/).
#
# Usage, from the repository root: bash benchmarks/gpu_check.sh
# The machine needs torch with CUDA, triton, numpy, numba, safetensors, pyyaml, pytest and
# hypothesis; constriction (not in a stock CUDA image) is installed from .whl/ when missing:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl constriction==0.5.0
set -u -o pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -c "import constriction" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site"
else
    export PYTHONPATH="$PWD/src"
fi
status=0
step() {  # step NAME SECONDS COMMAND...: run, log to $out/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=$?
    echo "== $name: exit code $rc"
    [ "$rc" -eq 0 ] || status=1
}
{
    date -u
    nvidia-smi -L
    python3 -c "import sys, torch, triton, numpy, numba; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'device', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/machine.log"
step tests 300 python3 -m pytest -q -rs -p no:cacheprovider \
    tests/test_cuda.py tests/test_prng.py tests/test_init.py tests/test_layers.py \
    tests/test_kernels_triton.py tests/test_kernels_triton_conv.py
step triton_linear 150 python3 benchmarks/bench_triton_linear.py --json "$out/triton_linear.json"
step triton_conv 150 python3 benchmarks/bench_triton_conv.py --json "$out/triton_conv.json"
echo "gpu_check: $([ $status -eq 0 ] && echo 'every step passed' || echo 'a step failed'); logs in $out"
exit $status
