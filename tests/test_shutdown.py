"""Graceful shutdown: on SIGTERM lossd stops taking new work (/readyz and new calls 503), answers
every call it had accepted, and exits 0; past the grace period it stops anyway, exit 1."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import orjson
import torch
from serverutil import Server, run_server

ACCEPT_WAIT_S = 1.0  # after a request's first body bytes, time for the server to have admitted it


def mse_body(seed: int) -> tuple[bytes, float]:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2000, generator=gen, dtype=torch.float64), torch.randn(2000, generator=gen, dtype=torch.float64)
    body = orjson.dumps(
        {
            "inputs": {
                "input": {"dtype": "float64", "shape": [2000], "data": x.tolist()},
                "target": {"dtype": "float64", "shape": [2000], "data": y.tolist()},
            }
        }
    )
    return body, float(((x - y) ** 2).mean())


def trickle(body: bytes, seconds: float, started: threading.Event) -> Iterator[bytes]:
    """The body in 10 pieces over ``seconds``: the call stays in flight on the server that long."""
    step = -(-len(body) // 10)
    for i in range(0, len(body), step):
        yield body[i : i + step]
        started.set()
        time.sleep(seconds / 10)


def slow_calls(
    srv: Server, n: int, upload_s: float
) -> tuple[list[Future[httpx.Response]], list[float], ThreadPoolExecutor]:
    """Start ``n`` mse calls whose bodies take ``upload_s`` to arrive; return once the server has them all."""
    pool = ThreadPoolExecutor(n)
    events = [threading.Event() for _ in range(n)]
    futures, expected = [], []
    for i in range(n):
        body, ref = mse_body(i)
        expected.append(ref)
        futures.append(
            pool.submit(
                httpx.post,
                srv.url + "/v1/losses/mse",
                content=trickle(body, upload_s, events[i]),
                headers={"Content-Type": "application/json"},
                timeout=60.0,
            )
        )
    for e in events:
        assert e.wait(30), "a call never started sending"
    time.sleep(ACCEPT_WAIT_S)
    return futures, expected, pool


def test_sigterm_drains_accepted_calls_then_exits_0() -> None:
    env = {"LOSSD_SHUTDOWN_GRACE_S": "30", "LOSSD_WARMUP": "false", "LOSSD_COMPUTE_THREADS": "1"}
    with run_server(env=env) as srv:
        futures, expected, pool = slow_calls(srv, n=6, upload_s=4.0)
        t0 = time.monotonic()
        os.kill(srv.pid, signal.SIGTERM)
        time.sleep(0.3)
        # Still listening while it drains, but taking no new work.
        ready = httpx.get(srv.url + "/readyz", timeout=5.0)
        assert ready.status_code == 503
        assert "draining" in ready.json()["detail"]
        fresh = httpx.post(srv.url + "/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}}, timeout=5.0)
        assert fresh.status_code == 503
        assert "Retry-After" in fresh.headers
        assert srv.proc.poll() is None, "exited before its calls were answered"

        for f, ref in zip(futures, expected):
            r = f.result(timeout=60)
            assert r.status_code == 200, r.text
            assert abs(r.json()["value"] - ref) <= 1e-12 * max(1.0, abs(ref))
        pool.shutdown()
        assert srv.proc.wait(timeout=30) == 0
        # It waited for the calls (about 3 s of upload left), not for the whole grace period.
        assert time.monotonic() - t0 < 20


def test_grace_period_bounds_the_wait() -> None:
    env = {"LOSSD_SHUTDOWN_GRACE_S": "1", "LOSSD_WARMUP": "false"}
    with run_server(env=env) as srv:
        futures, _, pool = slow_calls(srv, n=2, upload_s=12.0)
        t0 = time.monotonic()
        os.kill(srv.pid, signal.SIGTERM)
        assert srv.proc.wait(timeout=15) == 1  # calls were cut: not a clean exit
        assert time.monotonic() - t0 < 8
        for f in futures:
            try:
                r = f.result(timeout=30)
            except httpx.HTTPError:
                continue  # the connection closed under it
            assert r.status_code != 200
        pool.shutdown()


def test_a_call_cut_by_the_grace_period_gets_a_retryable_problem() -> None:
    """A call still computing when the grace runs out is answered 503 problem+json with Retry-After and its
    X-Request-ID (uvicorn alone would send a bare text/plain 500), then the server exits 1."""
    import safetensors.torch

    env = {"LOSSD_SHUTDOWN_GRACE_S": "1", "LOSSD_WARMUP": "false", "LOSSD_TORCH_THREADS": "1"}
    gen = torch.Generator().manual_seed(0)
    # info_nce at its cost bound, N=4096 and D=1024: seconds of compute on one thread.
    z = {"z1": torch.randn(4096, 1024, generator=gen), "z2": torch.randn(4096, 1024, generator=gen)}
    body = safetensors.torch.save(z, metadata={"grad": "true"})
    with run_server(env=env) as srv, ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            httpx.post,
            srv.url + "/v1/losses/info_nce",
            content=body,
            headers={"Content-Type": "application/x-safetensors", "X-Request-ID": "cut-1"},
            timeout=60.0,
        )
        time.sleep(1.0)  # uploaded and computing
        assert not call.done()
        os.kill(srv.pid, signal.SIGTERM)
        r = call.result(timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["x-request-id"] == "cut-1" and "Retry-After" in r.headers
        assert "retry" in r.json()["detail"]
        assert srv.proc.wait(timeout=30) == 1
