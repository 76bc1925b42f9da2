"""The three compute endpoints as plain ASGI: ``POST /v1/losses/{name}``, ``/v1/batch``, ``/v1/composite``.

They are the hot path: a (32,10) cross_entropy call costs about 100 µs of codec and compute
work, and Starlette's Request object, routing and exception handling added tens of
microseconds more to each, so these endpoints read the ASGI scope and messages themselves. Everything else
(catalogue, operations, docs) is FastAPI, in :mod:`lossd.app`; the OpenAPI entries of these
three come from :mod:`lossd.openapi`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from lossd.engine import Slot
from lossd.errors import Problem
from lossd.service import JSON, SAFETENSORS, Service

PROBLEM = "application/problem+json"
JSON_MEDIA = JSON.encode()
SAFETENSORS_MEDIA = SAFETENSORS.encode()
LOSS_PREFIX = "/v1/losses/"
LOSS_ROUTE = "/v1/losses/{name}"
MULTI_ROUTES = ("/v1/batch", "/v1/composite")

Headers = dict[bytes, bytes]
Body = bytes | list[memoryview]


class Disconnected(Exception):
    """The client went away before its body was read: there is no one to answer."""


def route_path(scope: Scope) -> str:
    """The path without the ASGI root_path (set behind a prefix, as by Ray Serve)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


async def send_problem(send: Send, p: Problem, request_id: str) -> None:
    """Answer with an application/problem+json error."""
    body = orjson.dumps(p.body())
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in p.headers.items()]
    headers += [
        (b"content-type", PROBLEM.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")),
    ]
    await send({"type": "http.response.start", "status": p.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def content_kind(headers: Headers) -> bool:
    """True for a safetensors body, False for JSON (the default); 415 for anything else, and for
    a compressed body (RFC 9110, 15.5.16: a content coding the server does not take)."""
    coding = headers.get(b"content-encoding")
    if coding is not None and coding.strip().lower() not in (b"", b"identity"):
        shown = coding.decode("latin-1")[:40]
        raise Problem(415, f"unsupported Content-Encoding {shown!r}: send the body uncompressed")
    raw = headers.get(b"content-type")
    if raw is None:
        return False
    ctype = raw.decode("latin-1").split(";")[0].strip().lower()
    if ctype in (JSON, ""):
        return False
    if ctype == SAFETENSORS:
        return True
    raise Problem(415, f"unsupported Content-Type {ctype!r}: use {JSON} or {SAFETENSORS}")


def wants_safetensors(accept: bytes | None) -> bool:
    """Whether an Accept header prefers safetensors to JSON (JSON unless safetensors is named
    with a q above zero and at least that of JSON or of a wildcard covering JSON)."""
    if not accept or SAFETENSORS_MEDIA not in accept.lower():
        return False
    q: dict[str, float] = {}
    for item in accept.decode("latin-1").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        weight = 1.0
        for p in params:
            key, _, value = p.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        q[media.lower()] = max(q.get(media.lower(), 0.0), weight)
    st = q.get(SAFETENSORS, 0.0)
    json_q = q.get(JSON, q.get("application/*", q.get("*/*", 0.0)))
    return st > 0 and st >= json_q


def _text(headers: Headers, name: bytes) -> str | None:
    v = headers.get(name)
    return None if v is None else v.decode("latin-1")


def content_length(headers: Headers) -> int | None:
    """The Content-Length (None for a chunked body); 400 if it is not a number."""
    cl = headers.get(b"content-length")
    if cl is None:
        return None
    try:
        return int(cl)
    except ValueError:
        raise Problem(400, "invalid Content-Length") from None


async def read_body(
    receive: Receive, length: int | None, limit: int, writable: bool, grow: Callable[[int], None]
) -> memoryview:
    """The request body of :func:`content_length` ``length``, refused with 413 as soon as it is
    known to be over the limit.

    A body that arrives in one message is used as it is (no copy) unless ``writable`` is asked
    for (safetensors tensors are views over the body, and torch wants writable memory). With a
    Content-Length, larger bodies are gathered into one uninitialised buffer allocated up front.
    A body without one (chunked) is counted through ``grow`` as it arrives.
    """
    if length is None:
        chunked = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            piece = message.get("body", b"")
            chunked += piece
            if len(chunked) > limit:
                raise Problem(413, f"body is over the limit of {limit} bytes")
            if piece:
                grow(len(piece))
            if not message.get("more_body", False):
                return memoryview(chunked)
    n = length
    if n > limit:
        raise Problem(413, f"body of {n} bytes is over the limit of {limit} bytes")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise Disconnected
    first: bytes = message.get("body", b"")
    more: bool = message.get("more_body", False)
    if not more and not writable:
        if len(first) != n:
            raise Problem(400, "body length does not match its Content-Length")
        return memoryview(first)
    view = np.empty(n, dtype=np.uint8).data  # bytearray(n) would zero-fill it first
    pos = 0
    while True:
        end = pos + len(first)
        if end > n:
            raise Problem(400, "body is longer than its Content-Length")
        view[pos:end] = first
        pos = end
        if not more:
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        first = message.get("body", b"")
        more = message.get("more_body", False)
    if pos != n:
        raise Problem(400, "body is shorter than its Content-Length")
    return view


class BodyTimeouts:
    """Cancels the requests whose body has not arrived within ``timeout`` seconds of admission.

    An admitted request holds one of the ``max_concurrency`` slots while its body arrives: a few
    stalled uploads would otherwise lock every tenant out. One timer for all readers, armed only
    while there are some (a timer per request would cost microseconds on every call).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._readers: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, task: asyncio.Task[object], loop: asyncio.AbstractEventLoop) -> None:
        self._readers[task] = loop.time()
        if self._timer is None or self._loop is not loop:  # (a new loop: an app served twice, in tests)
            self._loop = loop
            self._timer = loop.call_later(self.timeout, self._sweep, loop)

    def done(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; True if it was cancelled for taking too long."""
        self._readers.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for task, since in list(self._readers.items()):
            if now - since >= self.timeout:
                del self._readers[task]
                self._expired.add(task)
                task.cancel()
        if self._readers:
            due = min(self._readers.values()) + self.timeout
            self._timer = loop.call_later(max(due - now, 0.05), self._sweep, loop)


class ComputeEndpoints:
    """Answers the compute endpoints; :meth:`route` says whether a request is one of them."""

    def __init__(self, service: Service) -> None:
        self.svc = service
        self.timeouts = BodyTimeouts(service.settings.body_timeout_s)

    async def _read(self, receive: Receive, headers: Headers, writable: bool, slot: Slot) -> memoryview:
        """The body (see :func:`read_body`), counted against the slot's byte budget from its
        Content-Length; 408 if it does not arrive in time."""
        limit = self.svc.settings.max_body_bytes
        length = content_length(headers)
        if length is not None and length <= limit:  # over the limit, read_body answers 413
            slot.grow(length)
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        self.timeouts.start(task, asyncio.get_running_loop())
        try:
            body = await read_body(receive, length, limit, writable, slot.grow)
        except asyncio.CancelledError:
            if not self.timeouts.done(task):
                raise  # cancelled by someone else (the server shutting down)
            task.uncancel()
            timeout = self.timeouts.timeout
            raise Problem(
                408, f"the body did not arrive within {timeout:g} s", headers={"Connection": "close"}
            ) from None
        except BaseException:
            self.timeouts.done(task)
            raise
        self.timeouts.done(task)
        return body

    @staticmethod
    def route(scope: Scope) -> tuple[str, str] | None:
        """(route template, loss name or "") of a compute request, else None (FastAPI answers it)."""
        path = route_path(scope)
        if path.startswith(LOSS_PREFIX):
            name = path[len(LOSS_PREFIX) :]
            # GET of a loss is its catalogue entry, which FastAPI answers.
            if scope["method"] != "GET" and name and "/" not in name:
                return LOSS_ROUTE, name
            return None
        if path in MULTI_ROUTES:
            return path, ""
        return None

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        route: tuple[str, str],
        request_id: str,
        state: dict[str, str],
    ) -> int:
        """Answer one request (``route`` from :meth:`route`); returns the status sent (0 when the client had gone)."""
        template, name = route
        try:
            if scope["method"] != "POST":
                allow = "GET, POST" if template == LOSS_ROUTE else "POST"
                raise Problem(405, f"method not allowed; use {allow}", headers={"Allow": allow})
            if template == LOSS_ROUTE:
                body, media = await self._loss(scope, receive, headers, name, state)
            else:
                run = self.svc.batch if template == "/v1/batch" else self.svc.composite
                body, media = await self._multi(scope, receive, headers, run)
        except Disconnected:
            return 0
        except Problem as p:
            await send_problem(send, p, request_id)
            return p.status
        chunks: list[bytes] | list[memoryview] = body if isinstance(body, list) else [body]
        size = str(sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)).encode()
        hs = [(b"content-type", media), (b"content-length", size), (b"x-request-id", request_id.encode("latin-1"))]
        await send({"type": "http.response.start", "status": 200, "headers": hs})
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < last})
        return 200

    def _client(self, scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def _loss(
        self, scope: Scope, receive: Receive, headers: Headers, name: str, state: dict[str, str]
    ) -> tuple[Body, bytes]:
        svc = self.svc
        key = svc.keys.authenticate(_text(headers, b"authorization"), _text(headers, b"x-api-key"))
        spec = svc.spec(name)
        state["loss"] = spec.name
        svc.keys.authorize(key, spec.name)
        who = key or self._client(scope)
        svc.admit(who)
        binary_in = content_kind(headers)
        binary_out = binary_in or wants_safetensors(headers.get(b"accept"))
        deadline = svc.deadline(_text(headers, b"x-deadline-ms"))
        with svc.dispatcher.slot(client=who) as slot:
            body = await self._read(receive, headers, binary_in, slot)
            content = await svc.compute(spec, body, binary_in, binary_out, deadline)
        return content, SAFETENSORS_MEDIA if binary_out else JSON_MEDIA

    async def _multi(
        self,
        scope: Scope,
        receive: Receive,
        headers: Headers,
        run: Callable[[memoryview, str | None, float], Awaitable[bytes]],
    ) -> tuple[Body, bytes]:
        svc = self.svc
        key = svc.keys.authenticate(_text(headers, b"authorization"), _text(headers, b"x-api-key"))
        who = key or self._client(scope)
        svc.admit(who)
        if content_kind(headers):
            raise Problem(415, "batch and composite bodies are JSON")
        deadline = svc.deadline(_text(headers, b"x-deadline-ms"))
        with svc.dispatcher.slot(client=who) as slot:
            body = await self._read(receive, headers, False, slot)
            return await run(body, key, deadline), JSON_MEDIA
