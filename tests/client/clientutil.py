"""Helpers of the client tests: a scripted stub HTTP server and shared constants (no torch, no lossd)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
DOC_URL = "http://127.0.0.1:8000"  # the URL the README and docstring examples use

# -- scripted stub server ----------------------------------------------------------------

DROP = "drop"  # close the connection without answering


@dataclass
class Stub:
    """An HTTP server on 127.0.0.1 that answers from a script: (status, headers, body) or DROP.

    ``body`` is JSON-encoded unless it is bytes; the request's X-Request-ID is echoed unless the
    step's headers set one ("" for none).
    """

    script: list[Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


MSE_OK = (200, {"Content-Type": "application/json"}, {"loss": "mse", "value": 0.5, "grads": {}})


def problem(status: int, detail: str, **headers: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"type": "about:blank", "title": "x", "status": status, "detail": detail}
    return status, {"Content-Type": "application/problem+json", **headers}, body


@contextmanager
def run_stub() -> Iterator[Stub]:
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
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                if k != "X-Request-ID":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            rid = headers.get("X-Request-ID", self.headers.get("X-Request-ID", "stub"))
            if rid:  # a script step with "X-Request-ID": "" answers without one
                self.send_header("X-Request-ID", rid)
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
