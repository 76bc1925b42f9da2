"""The HTTP layer: thin FastAPI handlers over :class:`lossd.service.Service`."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import lossd
from lossd.errors import Problem
from lossd.openapi import install_openapi
from lossd.service import JSON, SAFETENSORS, Service, warmup_async
from lossd.settings import Settings

log = logging.getLogger("lossd")
PROBLEM = "application/problem+json"


def problem_response(p: Problem, request_id: str | None = None) -> Response:
    headers = dict(p.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    return Response(orjson.dumps(p.body()), status_code=p.status, media_type=PROBLEM, headers=headers)


class RequestContext:
    """Pure ASGI middleware: X-Request-ID on every response, metrics, and no bare 500s."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        # Unique per process and cheap: uuid4 per request costs a getrandom syscall.
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:200]
                break
        rid = rid or f"{self._prefix}-{next(self._ids):x}"
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = False
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await problem_response(
                    Problem(500, "internal error; the request id identifies it in the server log"), rid
                )(scope, receive, send_with_id)
        finally:
            # FastAPI routes leave themselves in the scope; the Starlette compute routes name
            # their endpoint in the request state.
            endpoint = state.get("endpoint") or getattr(scope.get("route"), "path", "other")
            self.service.metrics.observe(endpoint, state.get("loss", ""), status, time.perf_counter() - t0)


async def read_body(request: Request, limit: int) -> memoryview:
    """The request body, refused with 413 as soon as it is known to be over the limit.

    With a Content-Length the buffer is allocated once, uninitialised, and filled in place:
    large safetensors bodies are then viewed, never copied, on their way to the device.
    """
    cl = request.headers.get("content-length")
    if cl is None:
        chunked = bytearray()
        async for chunk in request.stream():
            chunked += chunk
            if len(chunked) > limit:
                raise Problem(413, f"body is over the limit of {limit} bytes")
        return memoryview(chunked)
    try:
        n = int(cl)
    except ValueError:
        raise Problem(400, "invalid Content-Length") from None
    if n > limit:
        raise Problem(413, f"body of {n} bytes is over the limit of {limit} bytes")
    view = np.empty(n, dtype=np.uint8).data  # bytearray(n) would zero-fill it first
    pos = 0
    async for chunk in request.stream():
        end = pos + len(chunk)
        if end > n:
            raise Problem(400, "body is longer than its Content-Length")
        view[pos:end] = chunk
        pos = end
    if pos != n:
        raise Problem(400, "body is shorter than its Content-Length")
    return view


class ChunkedBody(Response):
    """A response sent as several body messages (safetensors: header, then each tensor's memory)."""

    def __init__(self, chunks: list[memoryview], media_type: str) -> None:
        self.chunks = chunks
        super().__init__(b"", media_type=media_type)
        self.headers["content-length"] = str(sum(c.nbytes for c in chunks))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.chunks) - 1
        for i, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < last})


def content_kind(request: Request) -> bool:
    """True for a safetensors body, False for JSON; 415 for anything else."""
    ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if ctype in (JSON, ""):
        return False
    if ctype == SAFETENSORS:
        return True
    raise Problem(415, f"unsupported Content-Type {ctype!r}: use {JSON} or {SAFETENSORS}")


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(settings: Settings | None = None, service: Service | None = None) -> FastAPI:
    settings = settings or Settings()
    svc = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await warmup_async(svc)
        log.info("lossd %s ready on %s", lossd.__version__, ", ".join(str(e.device) for e in svc.engines))
        yield
        svc.close()

    app = FastAPIOffline(
        title="lossd",
        version=lossd.__version__,
        description="Loss values and gradients over HTTP: PyTorch losses resident on a device.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.add_middleware(RequestContext, service=svc)

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return problem_response(Problem(422, errors[0]["msg"] if errors else "invalid request", errors=errors))

    def authenticate(request: Request) -> str | None:
        return svc.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))

    async def loss_call(request: Request, name: str) -> Response:
        key = authenticate(request)
        spec = svc.spec(name)
        request.state.loss = spec.name
        svc.keys.authorize(key, spec.name)
        svc.admit(key, client_of(request))
        binary_in = content_kind(request)
        binary_out = binary_in or SAFETENSORS in request.headers.get("accept", "")
        deadline = svc.deadline(request.headers.get("x-deadline-ms"))
        with svc.slot():
            body = await read_body(request, settings.max_body_bytes)
            content, media = await svc.compute(spec, body, binary_in, binary_out, deadline)
        if isinstance(content, list):
            return ChunkedBody(content, media)
        return Response(content, media_type=media)

    async def multi_call(
        request: Request, run: Callable[[memoryview, str | None, float], Awaitable[bytes]]
    ) -> Response:
        key = authenticate(request)
        svc.admit(key, client_of(request))
        if content_kind(request):
            raise Problem(415, "batch and composite bodies are JSON")
        deadline = svc.deadline(request.headers.get("x-deadline-ms"))
        with svc.slot():
            body = await read_body(request, settings.max_body_bytes)
            return Response(await run(body, key, deadline), media_type=JSON)

    # The three compute endpoints are plain Starlette routes: their bodies (JSON or
    # safetensors) are decoded by the codecs, so FastAPI's parameter solving would only add
    # per-request work on the hottest path. Their OpenAPI entries come from lossd.openapi.
    async def compute(request: Request) -> Response:
        request.state.endpoint = "/v1/losses/{name}"
        return await loss_call(request, request.path_params["name"])

    async def batch(request: Request) -> Response:
        request.state.endpoint = "/v1/batch"
        return await multi_call(request, svc.batch)

    async def composite(request: Request) -> Response:
        request.state.endpoint = "/v1/composite"
        return await multi_call(request, svc.composite)

    app.router.routes.extend(
        [
            Route("/v1/losses/{name}", compute, methods=["POST"]),
            Route("/v1/batch", batch, methods=["POST"]),
            Route("/v1/composite", composite, methods=["POST"]),
        ]
    )

    @app.get("/v1/losses", tags=["catalogue"], summary="The loss catalogue", operation_id="list_losses")
    async def list_losses(request: Request) -> Response:
        authenticate(request)
        return Response(svc.catalogue_json(), media_type=JSON)

    @app.get("/v1/losses/{name}", tags=["catalogue"], summary="One loss of the catalogue", operation_id="get_loss")
    async def get_loss(name: str, request: Request) -> Response:
        authenticate(request)
        return Response(orjson.dumps(svc.loss_info(svc.spec(name))), media_type=JSON)

    @app.get("/v1/info", tags=["operations"], summary="Version, devices and limits", operation_id="info")
    async def info() -> Response:
        return Response(orjson.dumps(svc.info()), media_type=JSON)

    @app.get("/healthz", tags=["operations"], summary="Liveness", operation_id="healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz", tags=["operations"], summary="Readiness", operation_id="readyz")
    async def readyz() -> Response:
        if svc.ready and not svc.draining:
            return Response(b'{"status":"ready"}', media_type=JSON)
        reason = "draining" if svc.draining else "warming up"
        raise Problem(503, f"not ready: {reason}", headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", operation_id="metrics")
    async def metrics() -> Response:
        svc.update_gauges()
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app)
    return app
