"""The HTTP layer: thin FastAPI handlers over :class:`lossd.service.Service`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import lossd
from lossd.endpoints import PROBLEM, ComputeEndpoints, send_problem
from lossd.errors import Problem
from lossd.openapi import install_openapi
from lossd.service import JSON, Service, warmup_async
from lossd.settings import Settings

log = logging.getLogger("lossd")


def problem_response(p: Problem) -> Response:
    """A problem as a response of a FastAPI handler (RequestContext adds the request id)."""
    return Response(orjson.dumps(p.body()), status_code=p.status, media_type=PROBLEM, headers=p.headers)


def internal_error() -> Problem:
    return Problem(500, "internal error; the request id identifies it in the server log")


class RequestContext:
    """Pure ASGI middleware: X-Request-ID on every response, metrics, no bare 500s, and the
    compute endpoints (answered by :class:`lossd.endpoints.ComputeEndpoints`, not FastAPI).

    ``compute_only``: pass every other request to ``app`` untouched (see :func:`served`).
    ``compute``: the endpoints to answer with (one set per app, shared by both placements).
    """

    def __init__(self, app: ASGIApp, service: Service, compute: ComputeEndpoints, compute_only: bool = False) -> None:
        self.app = app
        self.service = service
        self.compute_only = compute_only
        self.compute = compute
        # Unique per process and cheap: uuid4 per request costs a getrandom syscall.
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    def _request_id(self, given: bytes | None) -> str:
        return given.decode("latin-1")[:200] if given else f"{self._prefix}-{next(self._ids):x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        route = self.compute.route(scope)
        if route is not None:
            headers = dict(scope["headers"])
            rid = state["request_id"] = self._request_id(headers.get(b"x-request-id"))
            state["endpoint"] = route[0]
            try:
                status = await self.compute(scope, receive, send, headers, route, rid, state)
            except asyncio.CancelledError:
                # uvicorn cancels the calls still running when the shutdown grace runs out, Ray those whose
                # client went away: a retryable 503 rather than uvicorn's bare text/plain 500. The compute
                # endpoints send nothing before their answer is complete; where a send fails (the client
                # is gone, or the answer was half sent) there is no one to tell.
                cut = Problem(
                    503,
                    "the server stopped before this call finished; retry",
                    headers={"Retry-After": str(self.service.settings.retry_after_s)},
                )
                with contextlib.suppress(Exception):
                    await send_problem(send, cut, rid)
                self.service.metrics.observe(
                    scope["method"], route[0], state.get("loss", ""), 503, time.perf_counter() - t0
                )
                raise
            except Exception:
                log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
                status = 500  # the compute endpoints send nothing before their answer is complete
                await send_problem(send, internal_error(), rid)
            if status:
                self.service.metrics.observe(
                    scope["method"], route[0], state.get("loss", ""), status, time.perf_counter() - t0
                )
            return
        if self.compute_only:
            await self.app(scope, receive, send)
            return

        # The last of repeated headers, as the compute endpoints read them.
        rid = state["request_id"] = self._request_id(dict(scope["headers"]).get(b"x-request-id"))
        started = False
        status = 500

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
                await send_problem(send, internal_error(), rid)
        finally:
            endpoint = getattr(scope.get("route"), "path", "other")
            self.service.metrics.observe(
                scope["method"], endpoint, state.get("loss", ""), status, time.perf_counter() - t0
            )


def served(app: FastAPI) -> ASGIApp:
    """What ``lossd serve`` runs: the compute endpoints answered in front of FastAPI's own
    middleware stack, everything else by ``app``.

    FastAPI wraps every request in its error, telemetry and body-limit layers; the compute
    endpoints need none of them (they answer their own errors, and bodies have their own
    limits), and the layers cost about 10 µs a request, half as much as a (32,10)
    cross_entropy's kernels. With LOSSD_OTEL on, compute requests stay inside FastAPI so that
    its tracing sees them. Ray Serve runs the FastAPI app itself (lossd.ray_serve).
    """
    svc: Service = app.state.service
    if svc.settings.otel:
        return with_cors(app, svc.settings)
    return with_cors(RequestContext(app, svc, app.state.compute, compute_only=True), svc.settings)


def with_cors(app: ASGIApp, settings: Settings) -> ASGIApp:
    """``app`` answering browsers on the origins LOSSD_CORS_ORIGINS names (preflights included), so
    that a page on another origin can call lossd; unchanged when the setting is empty. Outermost, and
    once: a second layer would send the CORS headers twice, which browsers refuse."""
    return CORSMiddleware(app, **cors_options(settings)) if settings.cors_origins else app


def cors_options(settings: Settings) -> dict[str, Any]:
    """Starlette's CORSMiddleware for LOSSD_CORS_ORIGINS: the methods lossd has, any request header
    (keys, ids, deadlines), and the response headers a client reads."""
    return {
        "allow_origins": settings.cors_origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["*"],
        "expose_headers": ["X-Request-ID", "Retry-After"],
        "max_age": 600,
    }


async def _warm_up(svc: Service) -> None:
    await warmup_async(svc)
    if svc.ready:
        log.info("lossd %s ready on %s", lossd.__version__, ", ".join(str(e.device) for e in svc.engines))


async def _warm_up_in_background(svc: Service) -> None:
    try:
        await _warm_up(svc)
    except Exception:
        # Served anyway, so the failure shows: /readyz stays 503 and /healthz turns 503 too,
        # for a liveness probe to restart the process (in the foreground, startup fails).
        log.exception("warm-up failed")
        svc.failed = "warm-up failed; the server log has the error"


def create_app(
    settings: Settings | None = None, service: Service | None = None, *, background_warmup: bool = False
) -> FastAPI:
    """The FastAPI app over one :class:`Service`.

    ``background_warmup``: warm up while already serving (``lossd serve``), so that /healthz
    answers and /readyz says 503 during warm-up instead of the port being closed. Otherwise the
    app starts (its lifespan completes) only once warm, which is what Ray Serve's replica
    health checks expect.
    """
    settings = settings or Settings()
    svc = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warming = asyncio.create_task(_warm_up_in_background(svc)) if background_warmup else None
        if warming is None:
            await _warm_up(svc)
        yield
        if warming is not None:
            svc.draining = True  # a warm-up still running stops after its current loss
            await warming
        svc.close()

    app = FastAPIOffline(
        title="lossd",
        version=lossd.__version__,
        description="Loss values and gradients over HTTP: PyTorch losses resident on a device.",
        lifespan=lifespan,
        telemetry={"tracing": settings.otel, "metrics": settings.otel, "logs": settings.otel},
    )
    app.state.service = svc
    app.state.compute = ComputeEndpoints(svc)
    app.add_middleware(RequestContext, service=svc, compute=app.state.compute)

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
        if svc.failed:
            raise Problem(503, svc.failed)
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz", tags=["operations"], summary="Readiness", operation_id="readyz")
    async def readyz() -> Response:
        if svc.ready and not svc.draining:
            return Response(b'{"status":"ready"}', media_type=JSON)
        reason = "draining" if svc.draining else svc.failed or "warming up"
        raise Problem(503, f"not ready: {reason}", headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", operation_id="metrics")
    async def metrics() -> Response:
        svc.update_gauges()
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app)
    return app
