"""Start-up as `lossd serve` runs it: warm-up happens while serving, so probes get answers.

/healthz answers 200 and /readyz 503 (with Retry-After) during warm-up, loss calls are refused
with 503 until it is over; a failed warm-up turns /healthz to 503 for a liveness probe; a
shutdown during warm-up stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverutil import free_port, serve_command
from starlette.types import ASGIApp

from lossd.app import create_app, served
from lossd.service import Service
from lossd.settings import Settings

MSE = {"inputs": {"input": [1.0, 2.0], "target": [2.0, 4.0]}}


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(Settings())
    yield svc
    svc.close()


@contextlib.asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan started (as uvicorn starts it) and a client for it; shut down at the end."""
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    changed = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        changed.set()

    await messages.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send))
    while "lifespan.startup.complete" not in sent:
        assert "lifespan.startup.failed" not in sent and not task.done()
        await changed.wait()
        changed.clear()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            yield client
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 60)
    assert sent[-1] == "lifespan.shutdown.complete"


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _gated(service: Service, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Warm-up waits for the returned event; each loss it runs is listed."""
    gate = threading.Event()
    warm, run, ran = service.warmup, service.engines[0].run, []

    def slow_warmup() -> None:
        assert gate.wait(60)
        warm()

    def counted_run(call: Any) -> Any:
        ran.append(call.spec.name)
        return run(call)

    monkeypatch.setattr(service, "warmup", slow_warmup)
    monkeypatch.setattr(service.engines[0], "run", counted_run)
    return gate, ran


def test_probes_answer_during_warm_up_and_calls_wait_for_it(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, ran = _gated(service, monkeypatch)

    async def scenario() -> None:
        async with running(served(create_app(service.settings, service, background_warmup=True))) as c:
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.headers["content-type"] == "application/problem+json"
            assert "warming up" in r.json()["detail"]
            r = await c.post("/v1/losses/mse", json=MSE)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            gate.set()
            await _until(lambda: _status_is(c, "/readyz", 200))
            assert len(ran) >= 3  # every loss was run before ready
            r = await c.post("/v1/losses/mse", json=MSE)
            assert r.status_code == 200 and r.json()["value"] == 2.5

    asyncio.run(scenario())


async def _status_is(c: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await c.get(path)).status_code == status


def test_a_failed_warm_up_shows_on_both_probes(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("no device after all")

    monkeypatch.setattr(service, "warmup", broken)

    async def scenario() -> None:
        async with running(served(create_app(service.settings, service, background_warmup=True))) as c:
            await _until(lambda: _status_is(c, "/healthz", 503), timeout=30)
            for path in ("/healthz", "/readyz"):
                r = await c.get(path)
                assert r.status_code == 503 and "warm-up failed" in r.json()["detail"], r.text
            r = await c.post("/v1/losses/mse", json=MSE)
            assert r.status_code == 503 and "warm-up failed" in r.json()["detail"]
            assert "retry-after" not in r.headers  # not worth retrying on this instance

    asyncio.run(scenario())


def test_a_shutdown_during_warm_up_stops_it(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, ran = _gated(service, monkeypatch)

    async def scenario() -> None:
        async with running(served(create_app(service.settings, service, background_warmup=True))) as c:
            assert (await c.get("/readyz")).status_code == 503
            threading.Timer(0.2, gate.set).start()
        # The lifespan's shutdown waited for the warm-up, which stopped before its first loss.

    asyncio.run(scenario())
    assert ran == [] and not service.ready


def test_foreground_warm_up_is_over_before_the_app_starts(service: Service) -> None:
    """What Ray Serve runs: the replica is ready when its lifespan has started."""

    async def scenario() -> None:
        async with running(create_app(service.settings, service)) as c:
            assert service.ready
            assert (await c.get("/readyz")).status_code == 200

    asyncio.run(scenario())


def test_sigterm_during_start_up_ends_the_process() -> None:
    """lossd handles SIGTERM from the start of main(), before uvicorn's handlers exist: as PID 1 in a
    container a signal without a handler would be dropped and `docker stop` would wait for SIGKILL."""
    env = {**os.environ, "LOSSD_WARMUP": "false", "LOSSD_DEVICE": "cpu"}
    proc = subprocess.Popen(serve_command(free_port()), env=env)
    try:
        status = Path(f"/proc/{proc.pid}/status")
        deadline = time.monotonic() + 30
        # SigCgt: the signals the process catches; SIGTERM is bit 15 - 1.
        while not int(re.findall(r"^SigCgt:\s*(\w+)", status.read_text(), re.M)[0], 16) & (1 << 14):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # ended by lossd's handler, not uvicorn's drain
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
