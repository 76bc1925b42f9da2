"""The turn writer: what is written in one turn of the event loop leaves in one write at its end."""

from __future__ import annotations

import asyncio
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
