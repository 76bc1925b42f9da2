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
import time
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
DRAIN_ACTOR = "lossd-drain"  # named in RAY_NAMESPACE: the driver's own namespace is anonymous
RAY_NAMESPACE = "lossd"
POLL_S = 0.25  # how often a replica asks whether to drain (and says how many calls it holds)


@ray.remote(num_cpus=0)
class DrainFlag:
    """``lossd serve --ray``'s word to every replica on SIGTERM: stop taking work. Ray's own
    undeploy removes the route first, so the proxy would answer new calls 404 (an unknown loss to
    a client) for the whole grace; with this flag the replicas answer 503 with Retry-After, as a
    single process does, until their calls are done. Replicas poll it and report their calls.
    """

    def __init__(self) -> None:
        self.draining = False
        self.reports: dict[str, tuple[int, bool, float]] = {}  # replica -> (calls, draining, when)

    def drain(self) -> None:
        self.draining = True

    def poll(self, replica: str, calls: int, draining: bool) -> bool:
        self.reports[replica] = (calls, draining, time.monotonic())
        return self.draining

    def drained(self) -> bool:
        """Every replica heard from lately has taken the word and holds no call."""
        fresh = [(n, d) for n, d, when in self.reports.values() if time.monotonic() - when < 8 * POLL_S]
        return all(d and n == 0 for n, d in fresh)


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
        from starlette.middleware.cors import CORSMiddleware

        from lossd.app import cors_options, create_app

        app = create_app(self.settings)
        replica = serve.get_replica_context().replica_id.unique_id
        app.add_middleware(ReplicaHeader, replica=replica)
        if self.settings.cors_origins:  # outermost, as lossd.app.with_cors puts it
            app.add_middleware(CORSMiddleware, **cors_options(self.settings))
        self.service = app.state.service
        threading.Thread(target=self._watch_drain, args=(replica,), name="lossd-drain", daemon=True).start()
        return app

    def _watch_drain(self, replica: str) -> None:
        """Take :class:`DrainFlag`'s word, where ``lossd serve --ray`` set one up (``serve run`` does not)."""
        try:
            flag = ray.get_actor(DRAIN_ACTOR, namespace=RAY_NAMESPACE)
        except ValueError:
            return
        svc = self.service
        while True:
            try:
                if ray.get(flag.poll.remote(replica, svc.dispatcher.admitted, svc.draining)) and not svc.draining:
                    svc.drain()
            except ray.exceptions.RayError:  # the driver, and its flag, are gone
                return
            time.sleep(POLL_S)

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
    """The Serve application for ``settings``: replicas with an engine on each GPU Ray gives them."""
    options = deployment_options(settings, _cluster_gpus())
    device = replica_device(options["ray_actor_options"]["num_gpus"])
    replica_settings = settings.model_dump(mode="json") | {"device": device}
    return serve.deployment(**options)(LossdReplica).bind(replica_settings)


def replica_device(gpus: float) -> str:
    """The device setting of a replica holding ``gpus`` GPUs. Ray shows a replica only its own
    (CUDA_VISIBLE_DEVICES): with two or more, one engine on each; with a share of one, that one."""
    return "all" if gpus >= 2 else "cuda" if gpus > 0 else "cpu"


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
    stop = threading.Event()

    def stop_on_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    # Before ray.init, so that a signal while Ray starts does not leave a local Ray behind (it is shut
    # down below), and again after it: ray.init puts in a SIGTERM handler of its own that exits at once.
    stop_on_signals()
    ray.init(address=settings.ray_address, include_dashboard=False if local else None)
    stop_on_signals()
    cut_short = False
    try:
        flag = DrainFlag.options(name=DRAIN_ACTOR, namespace=RAY_NAMESPACE).remote()  # type: ignore[attr-defined]
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        log.warning("lossd on Ray Serve at http://%s:%d", settings.host, settings.port)
        stop.wait()
        cut_short = not _drain(flag, settings.shutdown_grace_s)
        if not (local and cut_short):
            # Calls still running in a shared cluster get Ray's graceful_shutdown_timeout_s too (while
            # the proxy, the route gone, answers new calls 404). A local Ray ends with this process.
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
    finally:
        ray.shutdown()
    return 1 if cut_short else 0


def _drain(flag: Any, grace_s: float) -> bool:
    """Tell the replicas to drain and wait until their calls are done (True) or the grace is over."""
    ray.get(flag.drain.remote())
    time.sleep(2 * POLL_S)  # every replica has polled since (drained() also waits for their word)
    deadline = time.monotonic() + grace_s
    while not ray.get(flag.drained.remote()):
        if time.monotonic() > deadline:
            log.warning("grace of %.0fs over with calls still running", grace_s)
            return False
        time.sleep(POLL_S)
    return True
