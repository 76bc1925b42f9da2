"""Client test fixtures: the server under test, auxiliary servers with auth and limits, a scripted stub.

Nothing here imports torch or lossd: the no-torch CI run (.ci/client-notorch.sh) loads this file too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # clientutil

try:
    import lossd_client  # noqa: F401  (installed, as in the no-torch venv)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))

from clientutil import Stub, run_stub
from serverutil import Server, run_server


@pytest.fixture(scope="session")
def url(request: pytest.FixtureRequest) -> str:
    """The server under test: $LOSSD_TEST_URL (the no-torch run), else the session's own server."""
    external = os.environ.get("LOSSD_TEST_URL")
    if external:
        return external.rstrip("/")
    server: Server = request.getfixturevalue("server")
    return server.url


AUTH_ENV = {
    "LOSSD_WARMUP": "false",
    "LOSSD_API_KEYS": json.dumps({"good": ["*"], "mse-only": ["mse"], "limited": ["*"]}),
    # 5 calls per key, then 429 with a Retry-After of 100 s.
    "LOSSD_RATE_LIMIT_PER_S": "0.01",
    "LOSSD_RATE_LIMIT_BURST": "5",
}
LIMITS_ENV = {"LOSSD_WARMUP": "false", "LOSSD_MAX_TENSOR_ELEMENTS": "1000000", "LOSSD_MAX_CONCURRENCY": "1"}


@pytest.fixture(scope="session")
def aux_servers() -> Iterator[tuple[Server, Server]]:
    """(auth + rate-limit server, limits + max_concurrency=1 server), started in parallel."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(stack.enter_context, run_server(env=e)) for e in (AUTH_ENV, LIMITS_ENV)]
        auth, limits = (f.result() for f in futures)
        yield auth, limits


@pytest.fixture
def stub() -> Iterator[Stub]:
    with run_stub() as s:
        yield s
