"""Client test fixtures: the server under test, auxiliary servers with auth and limits, a scripted stub.

Nothing here imports torch or lossd: the no-torch CI run (.ci/client-notorch.sh) loads this file too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

try:
    import lossd_client  # noqa: F401  (installed, as in the no-torch venv)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))

from serverutil import Server, run_server

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
DOC_URL = "http://127.0.0.1:8000"  # the URL the README and docstring examples use


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


# -- scripted stub server ----------------------------------------------------------------

DROP = "drop"  # close the connection without answering


@dataclass
class Stub:
    """An HTTP server on 127.0.0.1 that answers from a script: (status, headers, body) or DROP."""

    script: list[Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


MSE_OK = (200, {"Content-Type": "application/json"}, {"loss": "mse", "value": 0.5, "grads": {}})


def problem(status: int, detail: str, **headers: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"type": f"https://lossd.dev/problems/{status}", "title": "x", "status": status, "detail": detail}
    return status, {"Content-Type": "application/problem+json", **headers}, body


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub(script=[])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            step = state.script.pop(0) if len(state.script) > 1 else state.script[0]
            if step == DROP:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            status, headers, payload = step
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-ID", self.headers.get("X-Request-ID", "stub"))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _answer
        do_POST = _answer

    class Quiet(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a DROP step breaks the handler's final flush on purpose

    httpd = Quiet(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
