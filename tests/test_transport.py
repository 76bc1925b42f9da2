"""The turn writer: what is written in one turn of the event loop leaves in one write at its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import httpx
from serverutil import Server, run_server

from lossd.transport import JOIN_MAX_BYTES, TurnWriter


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def scenario() -> None:
        t = FakeTransport()
        w = TurnWriter(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        w.write(b"HTTP/1.1 200 OK\r\n\r\n")
        w.write(memoryview(b"body"))
        assert t.calls == []  # held until the end of the turn
        await asyncio.sleep(0)
        assert t.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
        w.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert t.calls[1:] == [("write", b"next")]
        assert w.get_extra_info("peername") == "info:peername"  # the rest passes through

    asyncio.run(scenario())


def test_large_writes_are_not_copied_and_close_sends_what_is_held() -> None:
    async def scenario() -> None:
        t = FakeTransport()
        w = TurnWriter(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        big = bytes(JOIN_MAX_BYTES)
        w.write(b"head")
        w.write(big)
        await asyncio.sleep(0)
        assert t.calls == [("writelines", [b"head", big])]
        w.write(b"last words")
        w.close()
        assert t.calls[1:] == [("write", b"last words"), ("close", None)]

    asyncio.run(scenario())


def _exchange(server: Server, request: bytes, half_close: bool = False) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_served_responses_survive_pipelining_and_a_client_that_half_closes(server: Server) -> None:
    """Through `lossd serve`: pipelined requests are answered in order, each head and body together; a
    client that shuts down its side right after its request still gets the answer written before the
    transport closed behind its EOF (held writes are flushed first)."""
    get = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    body = b'{"inputs": {"input": [1.0, 2.0], "target": [2.0, 2.0]}}'
    post = b"POST /v1/losses/mse HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    data = b""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(get + post % (len(body), body) + get)
        while data.count(b"HTTP/1.1 200 OK") < 3 or not data.endswith(b'{"status":"ok"}'):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.index(b'{"status":"ok"}') < data.index(b'"loss":"mse"') < data.rindex(b'{"status":"ok"}')
    for _ in range(5):
        assert _exchange(server, get, half_close=True).startswith(b"HTTP/1.1 200 OK")


def _until_closed(server: Server, request: bytes, *, shut_after: bool = True) -> bytes:
    """Send, shut down our side, read until the server closes the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(request)
        if shut_after:
            s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            data += chunk
    return data


def _post(body: bytes, loss: str = "mse") -> bytes:
    return (
        b"POST /v1/losses/%s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (loss.encode(), len(body), body)
    )


def test_compute_calls_are_answered_to_a_client_that_half_closes(server: Server) -> None:
    """RFC 9112 9.6: a client that shuts down its sending side after whole requests is only done
    sending. Every request is answered, small (computed at the end of the loop turn) and large (host
    pool and worker), pipelined ones in order, and the server closes after the last answer."""
    small = b'{"inputs": {"input": [1.0, 2.0], "target": [2.0, 4.0]}}'  # mse: (1 + 4) / 2
    n = 40_000  # over LOSSD_INLINE_MAX_BYTES: decoded off the loop
    large = b'{"inputs": {"input": [%s], "target": [%s]}, "params": {"reduction": "sum"}}' % (
        b",".join([b"1.5"] * n),
        b",".join([b"0.5"] * n),
    )
    for _ in range(3):
        data = _until_closed(server, _post(small))
        assert data.startswith(b"HTTP/1.1 200 OK"), data
        # "connection: close" is in the answer only where it was still being computed at the EOF.
        assert data.endswith(b'"value":2.5,"grads":{}}'), data
        data = _until_closed(server, _post(large))
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'"value":%d.0,"grads":{}}' % n), data[:300]
    get = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    data = _until_closed(server, _post(small) + get + _post(large) + _post(small))
    assert data.count(b"HTTP/1.1 200 OK") == 4, data[:600]
    assert data.index(b'"value":2.5,') < data.index(b'{"status":"ok"}') < data.index(b'"value":%d.0,' % n)
    assert data.endswith(b'"value":2.5,"grads":{}}')
    # HTTP/1.0 without keep-alive, the way simple scripts speak it.
    data = _until_closed(server, _post(small).replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'"value":2.5,"grads":{}}'), data


def test_a_request_cut_short_by_the_clients_eof_closes_the_connection(server: Server) -> None:
    """A body shorter than its Content-Length, or headers never finished, can never be answered: the
    server closes at once instead of waiting, and goes on serving everyone else."""
    whole = _post(b'{"inputs": {"input": [1.0], "target": [3.0]}}')
    for cut in (whole[: whole.index(b"\r\n\r\n") + 4 + 10], whole[:30], whole + whole[:50]):
        data = _until_closed(server, cut)
        assert data.count(b"HTTP/1.1") == (1 if cut.startswith(whole) else 0), data
    assert _until_closed(server, whole).endswith(b'"value":4.0,"grads":{}}')


def test_requests_that_are_not_http_get_a_problem_with_a_request_id(server: Server) -> None:
    """Bad framing never reaches the app; the 400 is still application/problem+json with X-Request-ID."""
    bad = [
        b"POST /v1/losses/mse HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/losses/mse HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n",
    ]
    ids = set()
    for request in bad:
        data = _until_closed(server, request, shut_after=False)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), data
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert headers[b"content-type"] == b"application/problem+json"
        assert int(headers[b"content-length"]) == len(body)
        assert headers[b"connection"] == b"close"
        ids.add(headers[b"x-request-id"])
        problem = json.loads(body)
        assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["detail"]
    assert len(ids) == len(bad)
    assert _until_closed(server, _post(b'{"inputs": {"input": [1.0], "target": [3.0]}}')).endswith(
        b'"value":4.0,"grads":{}}'
    )


def test_a_websocket_upgrade_is_refused_as_uvicorn_refuses_it(server: Server) -> None:
    """lossd has no WebSocket routes: uvicorn's denial (403), not a parser error, and the server goes on."""
    upgrade = (
        b"GET /v1/losses/mse HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert _until_closed(server, upgrade, shut_after=False).startswith(b"HTTP/1.1 403 ")
    assert _until_closed(server, _post(b'{"inputs": {"input": [1.0], "target": [3.0]}}')).endswith(
        b'"value":4.0,"grads":{}}'
    )


def _problem_then_close(data: bytes, status: int) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), data[:200]
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"content-type"] == b"application/problem+json" and headers[b"connection"] == b"close"
    assert b"x-request-id" in headers
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status
    return problem


def test_a_head_that_never_ends_is_a_431_and_costs_the_others_nothing(server: Server) -> None:
    """A header that never ends used to be gathered without bound (a minute of a stalled loop for 200 MB):
    past 64 KiB of request line and headers the answer is 431, the connection closes, the rest is served."""
    host, port = server.url.removeprefix("http://").split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB, but the server closes after the first 64 KiB or so
                s.sendall(b"a" * 65536)
        except OSError:  # reset: the server closed while we were still sending
            pass
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    problem = _problem_then_close(data, 431)
    assert "65536" in problem["detail"]
    # A long but legal head is fine.
    ok = _until_closed(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"b" * 30_000 + b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK"), ok[:200]


def test_silent_and_half_sent_connections_are_closed_after_the_header_timeout() -> None:
    """A connection that sends nothing, or part of a head, is closed after LOSSD_HEADER_TIMEOUT_S (408 for
    the part), so such connections cannot pile up until no file descriptor is left; a client waiting for
    a long computation, and keep-alive between requests, are not affected."""
    import safetensors.torch
    import torch

    with run_server({"LOSSD_HEADER_TIMEOUT_S": "1", "LOSSD_WARMUP": "false", "LOSSD_TORCH_THREADS": "1"}) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        t0 = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=20) as silent:
            assert silent.recv(1) == b""  # closed, without a word
        assert time.monotonic() - t0 < 8
        with socket.create_connection((host, int(port)), timeout=20) as partial:
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            data = b""
            while chunk := partial.recv(65536):
                data += chunk
        assert "did not arrive" in _problem_then_close(data, 408)["detail"]
        # Keep-alive: on the same connection, a request after a pause longer than the header timeout but
        # shorter than uvicorn's idle limit (5 s) is answered.
        get = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=20) as kept:
            for _ in range(2):
                kept.sendall(get)
                data = b""
                while not data.endswith(b'{"status":"ok"}'):
                    chunk = kept.recv(65536)
                    assert chunk, "closed while idle between requests"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 OK")
                time.sleep(1.5)
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            # A call computing for longer than the header timeout still gets its answer.
            gen = torch.Generator().manual_seed(0)
            z = {"z1": torch.randn(4096, 512, generator=gen), "z2": torch.randn(4096, 512, generator=gen)}
            t1 = time.monotonic()
            r = client.post(
                "/v1/losses/info_nce",
                content=safetensors.torch.save(z, metadata={"grad": "true"}),
                headers={"Content-Type": "application/x-safetensors"},
            )
            assert r.status_code == 200 and time.monotonic() - t1 > 1


def test_connections_past_the_bound_get_a_503_not_a_reset() -> None:
    """LOSSD_MAX_CONNECTIONS: a connection past the bound is answered 503 problem+json with Retry-After and
    closed (past the open-file limit it would be reset without a word); once others close, new ones are
    served again. The default bound sits below the open-file limit."""
    import resource

    from lossd.cli import max_connections
    from lossd.settings import Settings

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert 0 < max_connections(Settings()) < soft
    assert max_connections(Settings(max_connections=7)) == 7

    with run_server({"LOSSD_MAX_CONNECTIONS": "3", "LOSSD_WARMUP": "false", "LOSSD_RETRY_AFTER_S": "2"}) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)
            with socket.create_connection((host, int(port)), timeout=10) as extra:
                data = b""
                while chunk := extra.recv(65536):
                    data += chunk
            problem = _problem_then_close(data, 503)
            assert "LOSSD_MAX_CONNECTIONS" in problem["detail"] and problem["retry_after"] == 2
            assert b"\r\nretry-after: 2\r\n" in data.partition(b"\r\n\r\n")[0]
        finally:
            for c in held:
                c.close()
        time.sleep(0.2)
        assert httpx.get(srv.url + "/healthz").status_code == 200
