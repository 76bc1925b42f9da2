"""The exception hierarchy from real lossd error responses, and the retry policy against a scripted stub."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from clientutil import DROP, MSE_OK, Stub, problem
from serverutil import Server

from lossd_client import (
    NO_RETRY,
    AsyncLossClient,
    AuthError,
    BadRequest,
    BodyTimeout,
    DeadlineExceeded,
    Forbidden,
    LossClient,
    LossdError,
    LossNotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Retry,
    TransportError,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from lossd_client.errors import from_response

FAST = Retry(max_retries=3, backoff=0.01, max_backoff=0.05, max_total=10.0)


def test_not_found_validation_bad_request_unavailable(url: str) -> None:
    with LossClient(url) as c:
        with pytest.raises(LossNotFound) as nf:
            c.compute("focall", input=[[1.0]], target=[0])
        with pytest.raises(ValidationError) as ve:
            c.cross_entropy([[1.0, 2.0], [0.5, 0.1]], [0, 7])
        with pytest.raises(BadRequest) as br:
            c.mse(["a", "b"], [0.0, 1.0])  # strings where numbers belong
        with pytest.raises(Unavailable) as un:  # perceptual without configured weights: 503, no Retry-After
            img = np.full((1, 3, 8, 8), 0.5, np.float32)
            c.perceptual(img, img)
    assert nf.value.status == 404 and "focal" in nf.value.detail and nf.value.request_id
    assert ve.value.status == 422 and ve.value.errors[0].loc == ("inputs", "target") and "7" in ve.value.detail
    assert br.value.status == 400 and br.value.problem["title"]
    assert un.value.status == 503 and un.value.retry_after is None and not isinstance(un.value, Overloaded)
    assert all(isinstance(e.value, LossdError) for e in (nf, ve, br, un))


def test_unsupported_media_type_from_a_real_response(url: str) -> None:
    resp = httpx.post(url + "/v1/losses/mse", content=b"x", headers={"Content-Type": "text/plain"})
    err = from_response(resp, loss_path=True)
    assert isinstance(err, UnsupportedMediaType) and err.status == 415 and err.request_id


def test_deadline_exceeded(url: str) -> None:
    with LossClient(url, deadline_ms=0) as c, pytest.raises(DeadlineExceeded) as e:
        c.mse([1.0], [0.0])
    assert e.value.status == 504


def test_auth_errors_and_rate_limit(aux_servers: tuple[Server, Server]) -> None:
    auth = aux_servers[0].url
    with LossClient(auth, api_key="") as c, pytest.raises(AuthError) as missing:
        c.mse([1.0], [0.0])
    with LossClient(auth, api_key="wrong") as c, pytest.raises(AuthError) as wrong:
        c.losses()
    with LossClient(auth, api_key="mse-only") as c:
        assert c.mse([3.0], [1.0]).value == 4.0
        with pytest.raises(Forbidden) as forbidden:
            c.l1([3.0], [1.0])
    assert missing.value.status == 401 and not isinstance(missing.value, Forbidden)
    assert wrong.value.status == 401 and "not valid" in wrong.value.detail
    assert forbidden.value.status == 403 and isinstance(forbidden.value, AuthError)
    # 5 calls per key, then 429 with Retry-After 100 s: past the retry budget, so no waiting.
    with LossClient(auth, api_key="limited", retry=Retry(max_total=5.0)) as c:
        for _ in range(5):
            c.mse([1.0], [0.0])
        t0 = time.monotonic()
        with pytest.raises(RateLimited) as rl:
            c.mse([1.0], [0.0])
    assert rl.value.status == 429 and rl.value.retry_after is not None and rl.value.retry_after >= 50
    assert time.monotonic() - t0 < 2.0


@pytest.mark.asyncio
async def test_async_errors(aux_servers: tuple[Server, Server], url: str) -> None:
    async with AsyncLossClient(aux_servers[0].url, api_key="nope") as c:
        with pytest.raises(AuthError):
            await c.mse([1.0], [0.0])
    async with AsyncLossClient(url) as c:
        with pytest.raises(ValidationError):
            await c.compute("mse", input=[1.0, 2.0], target=[1.0])
        with pytest.raises(LossNotFound):
            await c.loss_info("nope")


def test_payload_too_large_both_transports(aux_servers: tuple[Server, Server]) -> None:
    big = np.zeros(1_000_001, np.float32)  # one over the server's element limit
    with LossClient(aux_servers[1].url) as c:
        for binary in (False, True):
            with pytest.raises(PayloadTooLarge) as e:
                c.compute("mse", input=big, target=big, binary=binary)
            assert e.value.status == 413 and "1000001" in e.value.detail


@pytest.mark.asyncio
async def test_overloaded_from_a_busy_server(aux_servers: tuple[Server, Server]) -> None:
    """max_concurrency=1: while one heavy call runs, another is refused with 503 + Retry-After."""
    rng = np.random.default_rng(0)
    z1, z2 = (rng.standard_normal((1024, 256), dtype=np.float32) for _ in range(2))
    async with AsyncLossClient(aux_servers[1].url, retry=NO_RETRY) as c:
        heavy = asyncio.create_task(c.info_nce(z1, z2, grad=True))
        refused: Overloaded | None = None
        deadline = time.monotonic() + 20
        while refused is None and not heavy.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            try:
                await c.mse([1.0], [0.0])
            except Overloaded as e:
                refused = e
        result = await heavy
    assert refused is not None, "no call was refused while the heavy one ran"
    assert refused.status == 503 and refused.retry_after == 1.0 and "busy" in refused.detail
    assert np.isfinite(result.value) and result.grads["z1"].shape == (1024, 256)


# -- retries against a scripted stub -------------------------------------------------------


def test_retry_honours_retry_after_then_succeeds(stub: Stub) -> None:
    stub.script = [problem(503, "busy", **{"Retry-After": "1"}), MSE_OK]
    t0 = time.monotonic()
    with LossClient(stub.url, retry=Retry(backoff=0.01)) as c:
        r = c.mse([1.0], [0.0])
    elapsed = time.monotonic() - t0
    assert r.value == 0.5 and len(stub.requests) == 2
    assert 1.0 <= elapsed < 3.0
    ids = {q["headers"]["X-Request-ID"] for q in stub.requests}
    assert len(ids) == 1  # one request id across the attempts


@pytest.mark.asyncio
async def test_async_retry_503_then_200(stub: Stub) -> None:
    stub.script = [problem(503, "busy", **{"Retry-After": "1"}), MSE_OK]
    t0 = time.monotonic()
    async with AsyncLossClient(stub.url, retry=Retry(backoff=0.01)) as c:
        r = await c.mse([1.0], [0.0])
    assert r.value == 0.5 and len(stub.requests) == 2 and time.monotonic() - t0 >= 1.0


def test_retry_429_and_dropped_connections(stub: Stub) -> None:
    stub.script = [problem(429, "slow down", **{"Retry-After": "0"}), DROP, MSE_OK]
    with LossClient(stub.url, retry=FAST) as c:
        assert c.mse([1.0], [0.0]).value == 0.5
    assert len(stub.requests) == 3


def test_retries_are_bounded_in_count(stub: Stub) -> None:
    stub.script = [problem(503, "busy", **{"Retry-After": "0"})]
    with LossClient(stub.url, retry=Retry(max_retries=2, backoff=0.01)) as c, pytest.raises(Overloaded):
        c.mse([1.0], [0.0])
    assert len(stub.requests) == 3


def test_retries_are_bounded_in_time(stub: Stub) -> None:
    stub.script = [problem(503, "busy", **{"Retry-After": "1"})]
    t0 = time.monotonic()
    with LossClient(stub.url, retry=Retry(max_retries=10, backoff=0.01, max_total=1.5)) as c:
        with pytest.raises(Overloaded):
            c.mse([1.0], [0.0])
    # waits 1 s once; a second wait would end past 1.5 s, so it raises instead of waiting
    assert len(stub.requests) == 2 and time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 422])
def test_no_retry_on_other_4xx(stub: Stub, status: int) -> None:
    stub.script = [problem(status, "no"), MSE_OK]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(LossdError) as e:
        c.mse([1.0], [0.0])
    assert e.value.status == status and len(stub.requests) == 1
    if status == 408:  # the server's body timeout: typed, not the client's own RequestTimeout
        assert isinstance(e.value, BodyTimeout) and not isinstance(e.value, TransportError)


def test_no_retry_on_503_without_retry_after(stub: Stub) -> None:
    stub.script = [problem(503, "perceptual needs weights"), MSE_OK]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(Unavailable) as e:
        c.mse([1.0], [0.0])
    assert not isinstance(e.value, Overloaded) and len(stub.requests) == 1


def test_connection_refused_is_retried_then_raised() -> None:
    retry = Retry(max_retries=3, backoff=0.1, max_backoff=0.1)  # each wait in [0.05, 0.1] s
    with LossClient("http://127.0.0.1:9", retry=retry) as c:  # discard port: nothing listens
        t0 = time.monotonic()
        with pytest.raises(TransportError):
            c.mse([1.0], [0.0])
    assert time.monotonic() - t0 >= 0.15  # three waits: it retried


def test_api_key_and_headers_sent(stub: Stub) -> None:
    stub.script = [MSE_OK]
    with LossClient(stub.url, api_key="k1", deadline_ms=1500) as c:
        c.mse([1.0], [0.0])
    h = stub.requests[0]["headers"]
    assert h["Authorization"] == "Bearer k1" and h["X-Deadline-Ms"] == "1500"
    assert stub.requests[0]["path"] == "/v1/losses/mse"
