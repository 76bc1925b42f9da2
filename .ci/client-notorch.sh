#!/usr/bin/env bash
# CI: install lossd_client into a fresh venv without torch and run a client test there against a
# lossd server started from the main venv ($LOSSD_PYTHON) on 127.0.0.1, stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."

LOSSD_PYTHON=${LOSSD_PYTHON:-.venv/bin/python}
VENV=${CLIENT_VENV:-/tmp/lossd-client-notorch}
# The venv uses the same base interpreter as the main venv.
BASE_PYTHON=$("$LOSSD_PYTHON" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')

rm -rf "$VENV"
"$BASE_PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# Build from a copy so that setuptools' build/ stays out of the checkout. constraints pin versions
# only; torch is not a dependency of the client and is not installed.
rm -rf "$VENV.src" && cp -r client "$VENV.src"
"$VENV/bin/python" -m pip install -q -c constraints.txt "$VENV.src" pytest
rm -rf "$VENV.src"
if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "client-notorch: torch is importable in $VENV" >&2
    exit 1
fi

PORT=$("$LOSSD_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOSSD_WARMUP=false LOSSD_DEVICE=cpu "$LOSSD_PYTHON" -m lossd serve --host 127.0.0.1 --port "$PORT" --log-level warning &
SERVER_PID=$!
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

URL="http://127.0.0.1:$PORT"
"$VENV/bin/python" - "$URL" "$SERVER_PID" <<'EOF'
import os, sys, time
import httpx
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while True:
    try:
        if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("client-notorch: lossd exited before it was ready")
    if time.monotonic() > deadline:
        sys.exit("client-notorch: lossd did not become ready in time")
    time.sleep(0.1)
EOF

# Run from outside the checkout's client/ so the installed package is what gets imported.
LOSSD_TEST_URL=$URL LOSSD_CLIENT_NOTORCH=1 "$VENV/bin/python" -m pytest -p no:cacheprovider tests/client/test_notorch.py
echo "client-notorch: ok"
