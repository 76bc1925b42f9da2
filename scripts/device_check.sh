#!/usr/bin/env bash
# GPU checks for a device machine, which has CUDA and torch but not our pure-Python deps: wheels for those
# (and our pytest) travel in .whl/ (scripts/fetch_device_wheels.sh), and wrk with its LuaJIT in .devbin/
# (copied from this machine: cp /usr/bin/wrk /lib/x86_64-linux-gnu/libluajit-5.1.so.2 .devbin/).
# Writes its logs to $OUT (or /tmp/out). About 5 minutes on an H100 for all three steps.
#   bash scripts/device_check.sh [all|tests|determinism|bench]
set -uo pipefail
OUT=${OUT:-/tmp/out}
STEP=${1:-all}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
if [ -d .devbin ]; then
    export PATH=$PWD/.devbin:$PATH LD_LIBRARY_PATH=$PWD/.devbin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONPATH=$PWD/service:$PWD/client:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# The image's pytest plugins were built for its own pytest, not ours: load only the one the suite uses.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())" | tee -a "$OUT/gpu.txt"

if [ "$STEP" = all ] || [ "$STEP" = tests ]; then
# 1. Every test that goes through a real server, with the servers on the GPU, plus the CUDA-only tests
#    (bad indices, a CUDA engine beside a CPU engine). The OpenAPI validator is not on the image.
LOSSD_TEST_DEVICE=cuda timeout 200 python3 -m pytest -p pytest_asyncio.plugin -p no:cacheprovider -ra \
    tests/test_cuda.py tests/test_http.py tests/test_core_losses_http.py tests/test_catalogue.py \
    tests/test_codec_limits.py tests/test_examples.py tests/test_perceptual_http.py tests/test_transport.py \
    tests/test_shutdown.py tests/client tests/losses/test_segmentation.py \
    --deselect tests/test_http.py::test_openapi_describes_real_bodies_and_docs_are_offline \
    >"$OUT/pytest_cuda.log" 2>&1
echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_cuda.log" | tail -30
fi

if [ "$STEP" = all ] || [ "$STEP" = determinism ]; then
# 2. Which losses differ bit-wise between runs on the GPU, and which refuse deterministic mode.
timeout 90 python3 scripts/gpu_determinism.py --device cuda >"$OUT/gpu_determinism.log" 2>&1
echo "determinism exit $?"; tail -50 "$OUT/gpu_determinism.log"
fi

[ "$STEP" = all ] || [ "$STEP" = bench ] || exit 0
# 3. W1-W3 with lossd, the naive peer and the bare endpoint on the GPU (the bench harness, with wrk).
if wrk --version >/dev/null 2>&1 || [ $? -eq 1 ]; then
    timeout 200 python3 -m bench --device cuda --only w1,w2,w3 --servers lossd,naive,bare \
        --server-cpus 0-3 --client-cpus 4-7 --duration 3 --w1-runs 2 --concurrency 1,32 --sweep 1024,4096 \
        --label "device check $(git rev-parse --short HEAD 2>/dev/null)" --out "$OUT/bench" >"$OUT/bench.log" 2>&1
    echo "bench exit $?"; tail -5 "$OUT/bench.log"; cat "$OUT/bench/results.md" 2>/dev/null | head -60
else
    timeout 200 python3 scripts/gpu_bench.py 2>&1 | tee "$OUT/gpu_bench.log"
fi
