"""Start a real lossd server for tests: 127.0.0.1, a free port, stopped by its process id."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_outside_ephemeral(low: int = 20000, high: int = 30000) -> int:
    """A free port that the kernel does not hand out for bind(0) (ephemeral range 32768-60999 by default) and
    that Ray does not pick for its workers (10002-19999): for a server started after other processes that
    take ports of their own, such as Ray's metrics exporter."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def serve_command(port: int, *args: str) -> list[str]:
    """``python -m lossd serve`` on 127.0.0.1:``port``, quiet but for warnings."""
    return [
        sys.executable,
        "-m",
        "lossd",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]


@contextlib.contextmanager
def run_server(
    env: Mapping[str, str] | None = None, args: tuple[str, ...] = (), ready_timeout: float = 120.0
) -> Iterator[Server]:
    """Run ``python -m lossd serve`` until the block ends; waits for /readyz to answer 200."""
    port = free_port()
    full_env = {**os.environ, "LOSSD_DEVICE": os.environ.get("LOSSD_TEST_DEVICE", "cpu"), **(env or {})}
    cmd = serve_command(port, *args)
    proc = subprocess.Popen(cmd, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lossd exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("lossd did not become ready in time")
            time.sleep(0.1)
        yield Server(url, proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
