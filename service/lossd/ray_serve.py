"""lossd on a Ray cluster: the same FastAPI app behind Ray Serve, one replica per GPU.

Ray Serve does the cluster work (placement, HTTP proxy, routing, autoscaling, draining
replicas on scale-down); each replica is an ordinary one-device lossd built from the same
settings. Two entry points:

    lossd serve --ray --host 0.0.0.0 --port 8000      # settings from flags and LOSSD_*
    serve run lossd.ray_serve:app_builder max_replicas=4

The app is built inside each replica (not pickled from the driver), so every replica
loads its own engine and weights on the GPU Ray gave it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lossd.settings import Settings

log = logging.getLogger("lossd")
APP_NAME = "lossd"


class ReplicaHeader:
    """Names the replica that answered in ``X-Lossd-Replica``, for tracing calls across the cluster.

    Also turns response bodies into ``bytes``: Ray pickles ASGI messages to its proxy, and
    lossd sends large bodies as memoryviews over tensor memory (uvicorn writes those as they are).
    """

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (b"x-lossd-replica", replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            elif isinstance(message.get("body"), memoryview):
                message["body"] = bytes(message["body"])
            await send(message)

        await self.app(scope, receive, send_tagged if scope["type"] == "http" else send)


@serve.ingress()
class LossdReplica:
    """One replica: one engine on the device Ray assigned (``CUDA_VISIBLE_DEVICES`` holds only it)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from lossd.app import create_app

        app = create_app(self.settings)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        self.service = app.state.service
        return app

    def check_health(self) -> None:
        """Ray restarts a replica whose check raises; warm-up is over once the lifespan has started."""
        if not getattr(self, "service", None) or not self.service.ready:
            raise RuntimeError("lossd replica is not ready")


def deployment_options(settings: Settings, gpus_available: float) -> dict[str, Any]:
    """Ray Serve deployment options for ``settings``: resources per replica, replica count or autoscaling, grace."""
    gpus = settings.ray_gpus_per_replica
    if gpus is None:
        gpus = 1.0 if gpus_available > 0 else 0.0
    lo, hi = settings.ray_min_replicas, max(settings.ray_min_replicas, settings.ray_max_replicas)
    scaling: dict[str, Any] = (
        {"num_replicas": hi}
        if lo == hi
        else {
            "autoscaling_config": {
                "min_replicas": lo,
                "max_replicas": hi,
                "target_ongoing_requests": settings.ray_target_ongoing_requests,
            }
        }
    )
    return {
        "name": "lossd",
        "ray_actor_options": {"num_gpus": gpus, "num_cpus": settings.ray_cpus_per_replica},
        # lossd's own admission control answers 503 past max_concurrency; let Ray hand it that many.
        "max_ongoing_requests": settings.max_concurrency,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 10.0,
        **scaling,
    }


def build(settings: Settings) -> Application:
    """The Serve application for ``settings``, one engine per replica on the device Ray gives it."""
    options = deployment_options(settings, _cluster_gpus())
    device = "cuda" if options["ray_actor_options"]["num_gpus"] > 0 else "cpu"
    replica_settings = settings.model_dump(mode="json") | {"device": device}
    return serve.deployment(**options)(LossdReplica).bind(replica_settings)


def app_builder(args: Mapping[str, str]) -> Application:
    """For ``serve run lossd.ray_serve:app_builder key=value ...``: LOSSD_* settings, ``key=value`` overriding.

    Keys are Settings fields without the ray_ prefix where they have one (``max_replicas=4``).
    """
    fields = Settings.model_fields
    overrides: dict[str, Any] = {(k if k in fields else f"ray_{k}"): v for k, v in args.items()}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise ValueError(f"unknown lossd settings: {', '.join(unknown)}")
    return build(Settings(**overrides))


def _cluster_gpus() -> float:
    """GPUs in the cluster; before ray.init (``serve run`` builds the app first), those of this machine."""
    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0))
    import torch

    return float(torch.cuda.device_count())


def serve_on_ray(settings: Settings) -> int:
    """``lossd serve --ray``: deploy on Ray Serve and hold until SIGTERM/SIGINT, then undeploy gracefully."""
    local = settings.ray_address is None
    # Before ray.init: a signal while Ray starts must not leave a local Ray behind (it is shut down below).
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(address=settings.ray_address, include_dashboard=False if local else None)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        log.warning("lossd on Ray Serve at http://%s:%d", settings.host, settings.port)
        stop.wait()
        # Replicas stop taking requests and get graceful_shutdown_timeout_s to finish theirs.
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0
