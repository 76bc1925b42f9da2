"""The turn writer: what is written in one turn of the event loop leaves in one write at its end."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from serverutil import Server

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
