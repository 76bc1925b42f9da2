"""Answers that are not lossd's results, against a scripted stub: redirects, proxies' pages, broken bodies,
malformed problems, and the request id and class of every error.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from clientutil import DROP, MSE_OK, Stub, problem

from lossd_client import (
    NO_RETRY,
    AsyncLossClient,
    Call,
    DeadlineExceeded,
    LossClient,
    LossdError,
    LossNotFound,
    NotFound,
    Overloaded,
    Retry,
    ServerError,
    TransportError,
    Unavailable,
    UnexpectedResponse,
    ValidationError,
)

FAST = Retry(max_retries=3, backoff=0.01, max_backoff=0.05, max_total=10.0)
HTML = b"<html><body><h1>Welcome to nginx</h1></body></html>"
JSON_CT = {"Content-Type": "application/json"}
ST_CT = {"Content-Type": "application/x-safetensors"}


def sent_id(stub: Stub, i: int = -1) -> str:
    rid: str = stub.requests[i]["headers"]["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    return rid


# -- 2xx bodies that are not results, and redirects ---------------------------------------

BAD_OK: dict[str, tuple[int, dict[str, str], Any]] = {
    "html": (200, {"Content-Type": "text/html"}, HTML),
    "no_value": (200, JSON_CT, {"loss": "mse", "grads": {}}),
    "not_an_object": (200, JSON_CT, [1, 2]),
    "bad_tensor": (200, JSON_CT, {"loss": "mse", "value": {"dtype": "float32", "shape": [3], "data": [1.0]}}),
    "bad_number": (200, JSON_CT, {"loss": "mse", "value": "lots"}),
    "corrupt_safetensors": (200, ST_CT, b"\x40\x00\x00\x00\x00\x00\x00\x00{not json"),
    "short_safetensors": (200, ST_CT, b"\x01\x02"),
    "safetensors_without_value": (200, ST_CT, b"\x10\x00\x00\x00\x00\x00\x00\x00{}              "),
    "empty_204": (204, {}, b""),
}


@pytest.mark.parametrize("case", BAD_OK)
def test_2xx_that_is_not_a_result(stub: Stub, case: str) -> None:
    stub.script = [BAD_OK[case]]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(UnexpectedResponse) as e:
        c.mse([1.0], [0.0])
    err = e.value
    assert isinstance(err, ServerError) and err.status == BAD_OK[case][0] and len(stub.requests) == 1
    assert err.request_id == sent_id(stub) and "unexpected response" in err.detail
    assert isinstance(err.problem["body"], str)
    if case == "html":
        assert "text/html" in err.detail and "nginx" in err.problem["body"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_names_its_location(stub: Stub, status: int) -> None:
    stub.script = [(status, {"Location": "https://lossd.example/v1/losses/mse", "Content-Type": "text/html"}, HTML)]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(UnexpectedResponse) as e:
        c.mse([1.0], [0.0])
    assert e.value.status == status and "https://lossd.example/v1/losses/mse" in e.value.detail
    assert e.value.request_id == sent_id(stub) and len(stub.requests) == 1  # neither followed nor retried


def test_catalogue_and_info_bodies_are_checked(stub: Stub) -> None:
    stub.script = [(200, {"Content-Type": "text/html"}, HTML)]
    with LossClient(stub.url) as c:
        with pytest.raises(UnexpectedResponse):
            c.losses()
        with pytest.raises(UnexpectedResponse):
            c.loss_info("mse")
        with pytest.raises(UnexpectedResponse):
            c.info()
    stub.script = [(200, JSON_CT, {"losses": [{"name": "mse"}]})]  # entries missing their fields
    with LossClient(stub.url) as c, pytest.raises(UnexpectedResponse):
        c.losses()
    stub.script = [(200, JSON_CT, ["not", "an", "object"])]
    with LossClient(stub.url) as c, pytest.raises(UnexpectedResponse):
        c.info()


def test_batch_and_composite_bodies_are_checked(stub: Stub) -> None:
    calls = [Call("mse", {"input": [1.0], "target": [0.0]}), Call("l1", {"input": [1.0], "target": [0.0]})]
    for body in ({"results": [{"loss": "mse", "value": 1.0}]}, {"results": "no"}, {"value": 1.0}, [{"error": 1}]):
        stub.script = [(200, JSON_CT, body)]
        with LossClient(stub.url) as c, pytest.raises(UnexpectedResponse):
            c.batch(calls)
    stub.script = [(200, JSON_CT, {"results": [{"error": "broken"}, {"loss": "l1", "value": 1.0}]})]
    with LossClient(stub.url) as c, pytest.raises(UnexpectedResponse):
        c.batch(calls)
    stub.script = [(200, JSON_CT, {"value": 1.0, "terms": [{"loss": "mse"}]})]
    with LossClient(stub.url) as c, pytest.raises(UnexpectedResponse):
        c.composite({"a": [1.0], "b": [0.0]}, [])


def test_async_2xx_that_is_not_a_result(stub: Stub) -> None:
    stub.script = [(200, {"Content-Type": "text/html"}, HTML)]

    async def run() -> None:
        async with AsyncLossClient(stub.url) as c:
            with pytest.raises(UnexpectedResponse):
                await c.mse([1.0], [0.0])
            with pytest.raises(UnexpectedResponse):
                await c.losses()

    asyncio.run(run())


def test_problem_with_malformed_errors_entries(stub: Stub) -> None:
    errors = ["a string", None, 3, {"loc": ["inputs", "target"], "msg": "bad"}, {"loc": "params", "msg": 5}, {}]
    stub.script = [
        (422, {"Content-Type": "application/problem+json"}, {"status": 422, "detail": "x", "errors": errors})
    ]
    with LossClient(stub.url) as c, pytest.raises(ValidationError) as e:
        c.mse([1.0], [0.0])
    assert [(f.loc, f.msg) for f in e.value.errors] == [(("inputs", "target"), "bad"), (("params",), "5"), ((), "")]
    stub.script = [(422, {"Content-Type": "application/problem+json"}, {"status": 422, "errors": 7})]
    with LossClient(stub.url) as c, pytest.raises(ValidationError) as e:
        c.mse([1.0], [0.0])
    assert e.value.errors == []


# -- request ids ---------------------------------------------------------------------------


def test_request_id_falls_back_to_the_one_sent(stub: Stub) -> None:
    stub.script = [(422, {"Content-Type": "application/problem+json", "X-Request-ID": ""}, {"detail": "no"})]
    with LossClient(stub.url) as c, pytest.raises(ValidationError) as e:
        c.mse([1.0], [0.0])
    assert e.value.request_id == sent_id(stub)
    stub.script = [(200, {**JSON_CT, "X-Request-ID": ""}, MSE_OK[2])]
    with LossClient(stub.url) as c:
        r = c.mse([1.0], [0.0])
    assert r.request_id == sent_id(stub)
    stub.script = [(200, {**JSON_CT, "X-Request-ID": ""}, {"results": [{"error": problem(404, "nope")[2]}]})]
    with LossClient(stub.url) as c:
        (err,) = c.batch([Call("nope", {"input": [1.0]})])
    assert isinstance(err, LossNotFound) and err.request_id == sent_id(stub)


def test_transport_errors_carry_the_request_id(stub: Stub) -> None:
    stub.script = [DROP]
    with LossClient(stub.url, retry=NO_RETRY) as c, pytest.raises(TransportError) as e:
        c.mse([1.0], [0.0])
    assert e.value.request_id == sent_id(stub)
    with LossClient("http://127.0.0.1:9", retry=NO_RETRY) as c, pytest.raises(TransportError) as refused:
        c.mse([1.0], [0.0])
    assert refused.value.request_id and re.fullmatch(r"[0-9a-f]{32}", refused.value.request_id)


# -- whose 503 / 504 -------------------------------------------------------------------------


def test_proxy_504_is_not_a_deadline(stub: Stub) -> None:
    stub.script = [(504, {"Content-Type": "text/html"}, HTML), MSE_OK]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(ServerError) as e:
        c.mse([1.0], [0.0])
    assert not isinstance(e.value, DeadlineExceeded) and e.value.status == 504 and len(stub.requests) == 1
    stub.script = [problem(504, "the deadline passed")]
    with LossClient(stub.url, retry=FAST) as c, pytest.raises(DeadlineExceeded):
        c.mse([1.0], [0.0])


@pytest.mark.parametrize("retry_after", [None, "0"])
def test_proxy_503_is_retried(stub: Stub, retry_after: str | None) -> None:
    headers = {"Content-Type": "text/html", **({"Retry-After": retry_after} if retry_after else {})}
    stub.script = [(503, headers, HTML), MSE_OK]
    with LossClient(stub.url, retry=FAST) as c:
        assert c.mse([1.0], [0.0]).value == 0.5
    assert len(stub.requests) == 2
    stub.script = [(503, headers, HTML)]
    with LossClient(stub.url, retry=NO_RETRY) as c, pytest.raises(ServerError) as e:
        c.mse([1.0], [0.0])
    assert not isinstance(e.value, Unavailable) and e.value.status == 503 and "nginx" in e.value.detail


def test_proxy_404_on_a_loss_path_is_not_an_unknown_loss(stub: Stub) -> None:
    stub.script = [(404, {"Content-Type": "text/html"}, HTML)]
    with LossClient(stub.url) as c, pytest.raises(NotFound) as e:
        c.mse([1.0], [0.0])
    assert not isinstance(e.value, LossNotFound)


def test_batch_503_per_call(stub: Stub) -> None:
    """A failed call of a batch has no headers: Overloaded only when its problem says when to retry."""
    not_configured = problem(503, "perceptual needs weights")[2]
    oom = {**problem(503, "out of memory")[2], "retry_after": 1}
    stub.script = [(200, JSON_CT, {"results": [{"error": not_configured}, {"error": oom}]})]
    with LossClient(stub.url) as c:
        a, b = c.batch([Call("perceptual", {"input": [1.0]}), Call("mse", {"input": [1.0]})])
    assert isinstance(a, Unavailable) and not isinstance(a, Overloaded)
    assert isinstance(b, Overloaded) and b.retry_after == 1.0


# -- base URL ------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["127.0.0.1:8000", "localhost:8000", "ftp://127.0.0.1:8000", "http://", ""])
def test_base_url_needs_a_scheme(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSD_URL", "nohost:1")  # "" falls back to $LOSSD_URL
    for cls in (LossClient, AsyncLossClient):
        with pytest.raises(ValueError, match="http:// or https://"):
            cls(base_url)


def test_every_error_is_a_lossd_error(stub: Stub) -> None:
    """Whatever comes back, the caller catches LossdError only."""
    for step in [*BAD_OK.values(), (302, {}, b""), (418, {"Content-Type": "text/plain"}, b"teapot")]:
        stub.script = [step]
        with LossClient(stub.url, retry=NO_RETRY) as c, pytest.raises(LossdError):
            c.mse([1.0], [0.0])
