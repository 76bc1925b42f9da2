"""uvicorn's httptools protocol with each connection's writes of one event-loop turn sent together,
and bounds on request heads (size: 431; time: LOSSD_HEADER_TIMEOUT_S) that uvicorn does not set.

uvicorn writes a response's status line and headers, then its body, as two writes: two send()
system calls, and on loopback two trips through the TCP stack on the server's core. Held until
the end of the turn, they leave as one. On this 2-core machine one send of 3.7 KB costs about
5 µs where a 150-byte header and the body cost 11 µs. Nothing is held past the turn in which it
was written, so latency does not change, and closing a connection sends what it holds first.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lossd.errors import Problem

# Joining copies; past this a list of buffers goes out as it is (writelines).
JOIN_MAX_BYTES = 64 * 1024
# A request line and headers past this size are a 431 (nginx allows 32 KiB, Node 16 KiB). Without a
# bound httptools gathers a header that never ends, at a cost that grows with its square: one client
# sending 200 MB of it held the loop for a minute.
HEAD_MAX_BYTES = 64 * 1024


class TurnWriter:
    """A transport wrapper that sends what was written in one turn of the event loop at its end."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if not held:
            return
        if len(held) == 1:
            self._transport.write(held[0])
        elif sum(map(len, held)) <= JOIN_MAX_BYTES:
            self._transport.write(b"".join(held))
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Everything else (get_extra_info, pause_reading, resume_reading, set_protocol...) as is.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`TurnWriter` (``uvicorn.Config(http=...)``)."""

    transport: TurnWriter  # type: ignore[assignment]
    # A connection must deliver a request's headers within this long of opening, or of their first
    # byte after an idle spell (uvicorn closes idle keep-alive connections itself), else it is closed:
    # 408 when part of a head arrived. Connections that never send would otherwise be held forever,
    # file descriptors and all, until none were left for anyone (LOSSD_HEADER_TIMEOUT_S).
    head_timeout_s = 10.0
    # Open connections past which a new one is answered 503 and closed (LOSSD_MAX_CONNECTIONS): short of
    # the open-file limit, which would otherwise reset every new client without a word.
    max_connections = 0  # 0: no bound
    retry_after_s = 1
    _head_bytes: int  # bytes received since the current request's head began, while it has not ended
    _in_head: bool  # between requests, or in one's head: bytes that arrive count towards a head
    _begun: bool  # a request's head has begun and not ended
    _head_timer: asyncio.TimerHandle | None

    @classmethod
    def configured(
        cls, head_timeout_s: float, max_connections: int, retry_after_s: int
    ) -> type[CoalescingHttpToolsProtocol]:
        """The protocol class for ``uvicorn.Config(http=...)`` with these bounds."""
        bounds = {"head_timeout_s": head_timeout_s, "max_connections": max_connections, "retry_after_s": retry_after_s}
        return type(cls.__name__, (cls,), bounds)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(TurnWriter(transport, self.loop))  # type: ignore[arg-type]
        self._head_bytes = 0
        self._in_head = True
        self._begun = False
        self._head_timer = None
        if self.max_connections and len(self.connections) > self.max_connections:
            detail = f"server busy: {self.max_connections} connections open (LOSSD_MAX_CONNECTIONS); retry later"
            self._refuse(Problem(503, detail, headers={"Retry-After": str(self.retry_after_s)}))
            return
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        if in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if not (self._in_head and in_head) or self.transport.is_closing():
            return
        if self._head_bytes > HEAD_MAX_BYTES:
            self._cancel_head_timer()
            self._refuse(Problem(431, f"request line and headers over {HEAD_MAX_BYTES} bytes"))
        elif self._begun and self._head_timer is None:  # a head begun and not ended
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        self._begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._begun = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request's head, if one comes

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:  # the client awaits an answer
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        elif self._head_bytes:
            self._refuse(Problem(408, f"the request's headers did not arrive within {self.head_timeout_s:g} s"))
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request that is not HTTP (bad framing, a Content-Length that is not a number): the
        400 every other error is, application/problem+json with a request id, then close."""
        self._refuse(Problem(400, msg))

    def _refuse(self, p: Problem) -> None:
        """An answer from the HTTP layer itself (no app behind it yet), as every other error is:
        application/problem+json with its headers and a request id; then close."""
        body = orjson.dumps(p.body())
        head = [b"HTTP/1.1 %d %s\r\n" % (p.status, p.title.encode())]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for key, text in p.headers.items():  # Retry-After
            head += [key.lower().encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n"]
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % os.urandom(8).hex().encode(),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        """A client that shuts down its side after its requests (``nc -N``, some HTTP/1.0 scripts).

        uvicorn takes EOF for a client gone: the transport closes, and calls still being computed
        are never answered. A client is only done sending (RFC 9112, section 9.6): when its last
        request arrived whole, it and any pipelined before it are answered, the last with
        ``connection: close``, and the connection closes after it. A request cut short by the EOF
        is not answered (nor, if its headers had arrived, those before it).
        """
        self.transport.flush()
        newest = self.cycle  # the last request whose headers were parsed
        if newest is None or newest.response_complete or newest.more_body:
            super().eof_received()
            return None  # the transport closes itself
        newest.keep_alive = False  # closes the transport once it is answered
        return True
