"""The HTTP layer: thin FastAPI handlers over :class:`lossd.service.Service`."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import lossd
from lossd.endpoints import ComputeEndpoints
from lossd.errors import Problem
from lossd.openapi import install_openapi
from lossd.service import JSON, Service, warmup_async
from lossd.settings import Settings

log = logging.getLogger("lossd")
PROBLEM = "application/problem+json"


def problem_response(p: Problem, request_id: str | None = None) -> Response:
    headers = dict(p.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    return Response(orjson.dumps(p.body()), status_code=p.status, media_type=PROBLEM, headers=headers)


class RequestContext:
    """Pure ASGI middleware: X-Request-ID on every response, metrics, no bare 500s, and the
    compute endpoints (answered by :class:`lossd.endpoints.ComputeEndpoints`, not FastAPI)."""

    def __init__(self, app: ASGIApp, service: Service, settings: Settings) -> None:
        self.app = app
        self.service = service
        self.compute = ComputeEndpoints(service, settings)
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
        route = self.compute.route(scope)
        if route is not None:
            state["endpoint"] = route
            try:
                status = await self.compute(scope, receive, send, route, rid, state)
            except Exception:
                log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
                # The compute endpoints send nothing before their answer is complete.
                await problem_response(
                    Problem(500, "internal error; the request id identifies it in the server log"), rid
                )(scope, receive, send)
            if status:
                self.service.metrics.observe(route, state.get("loss", ""), status, time.perf_counter() - t0)
            return

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
            endpoint = getattr(scope.get("route"), "path", "other")
            self.service.metrics.observe(endpoint, state.get("loss", ""), status, time.perf_counter() - t0)


def create_app(settings: Settings | None = None, service: Service | None = None) -> FastAPI:
    settings = settings or Settings()
    svc = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await warmup_async(svc)
        # torch, pydantic and the catalogue leave some 200,000 long-lived objects: move them
        # out of the collector's sight so that full collections stop walking them under load.
        gc.collect()
        gc.freeze()
        log.info("lossd %s ready on %s", lossd.__version__, ", ".join(str(e.device) for e in svc.engines))
        yield
        svc.close()

    app = FastAPIOffline(
        title="lossd",
        version=lossd.__version__,
        description="Loss values and gradients over HTTP: PyTorch losses resident on a device.",
        lifespan=lifespan,
        telemetry={"tracing": settings.otel, "metrics": settings.otel, "logs": settings.otel},
    )
    app.state.service = svc
    app.add_middleware(RequestContext, service=svc, settings=settings)

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
