#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86_64) of the pure-Python and small native deps that a device machine
# lacks, and our pytest (the image's may be older than pytest-asyncio needs); scripts/device_check.sh installs
# them from .whl/. Versions follow constraints.txt.
# Usage, in the repository root:  scripts/fetch_device_wheels.sh   (then carry .whl with the run)
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
pins=()
for name in fastapi starlette pydantic pydantic-core pydantic-settings annotated-types typing-inspection \
    python-dotenv fastapi-offline rapidfuzz httptools orjson annotated-doc uvicorn typing-extensions pysimdjson \
    opentelemetry-api websockets pytest pytest-asyncio pluggy iniconfig; do
    pattern=${name//[-_]/[-_]}  # constraints.txt spells some names with _ (pip freeze)
    pin=$(grep -i -E "^${pattern}==" constraints.txt) || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -d .whl "${pins[@]}"
ls .whl
