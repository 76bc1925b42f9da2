#!/usr/bin/env bash
# GPU checks for a machine with CUDA and torch but without our pure-Python deps:
# wheels for those are carried in .whl/ (scripts/fetch_device_wheels.sh fetches them). Writes logs to $OUT (or /tmp/out).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/service:$PWD/client:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())" | tee -a "$OUT/gpu.txt"

# 1. The server suite with every server on the GPU, plus the CUDA-only tests.
LOSSD_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -x \
    tests/test_cuda.py tests/test_http.py tests/test_core_losses_http.py tests/test_catalogue.py \
    2>&1 | tee "$OUT/pytest_cuda.log" | tail -15

# 2. GPU throughput and latency of the request path (in-process vs over HTTP).
if [ -f scripts/gpu_bench.py ]; then
    timeout 200 python3 scripts/gpu_bench.py 2>&1 | tee "$OUT/gpu_bench.log"
fi

# 3. Which losses differ bit-wise between runs on the GPU, and which refuse deterministic mode.
timeout 120 python3 scripts/gpu_determinism.py --device cuda 2>&1 | tee "$OUT/gpu_determinism.log" | tail -45
