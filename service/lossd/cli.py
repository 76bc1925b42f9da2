"""``lossd serve``: start the server (settings from flags, then LOSSD_* environment variables)."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Sequence

import uvicorn

from lossd.settings import Settings


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lossd", description="Loss-computation microservice")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the HTTP server")
    s.add_argument("--host", help="address to bind (default 127.0.0.1, or LOSSD_HOST)")
    s.add_argument("--port", type=int, help="port (default 8000, or LOSSD_PORT)")
    s.add_argument(
        "--devices",
        "--device",
        dest="device",
        help="auto, all, or a comma list such as cuda:0,cuda:1 or cpu,cpu: one engine each (LOSSD_DEVICE)",
    )
    s.add_argument("--cpu-engines", type=int, help="CPU engines for --devices all without CUDA (LOSSD_CPU_ENGINES)")
    s.add_argument("--max-concurrency", type=int, help="calls admitted at once before 503")
    s.add_argument("--shutdown-grace-s", type=float, help="on SIGTERM, seconds to finish calls in flight")
    s.add_argument("--log-level", help="uvicorn log level")
    r = s.add_argument_group("cluster", "run on Ray Serve instead of one process (needs ray[serve])")
    r.add_argument("--ray", action="store_true", default=None, help="deploy on Ray Serve; --host/--port: its proxy")
    r.add_argument("--ray-address", help="Ray cluster to join (auto, ray://head:10001); default: start one")
    r.add_argument("--ray-min-replicas", type=int, help="fewest replicas (LOSSD_RAY_MIN_REPLICAS)")
    r.add_argument("--ray-max-replicas", type=int, help="most replicas, e.g. the GPU count (LOSSD_RAY_MAX_REPLICAS)")
    r.add_argument("--ray-gpus-per-replica", type=float, help="GPUs per replica (default 1 with GPUs, else 0)")
    return p.parse_args(argv)


def _exit_on_stop_signals() -> None:
    """SIGTERM/SIGINT end the process until the server installs its own handlers (uvicorn's, or
    serve_on_ray's). As PID 1 in a container without an init, a signal with no handler is dropped:
    a `docker stop` during the seconds of start-up would wait for its SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: os._exit(128 + signum))


def max_connections(settings: Settings) -> int:
    """LOSSD_MAX_CONNECTIONS, or 9/10 of the open-file limit: the rest stays for files, the
    connections' own sockets to come and to go, and whatever else the process opens."""
    if settings.max_connections:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else max(1, soft * 9 // 10)


def main(argv: Sequence[str] | None = None) -> int:
    _exit_on_stop_signals()  # nothing to drain yet
    args = parse(argv)
    ray = bool(args.ray)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "ray") and v is not None}
    settings = Settings(**overrides)
    if ray:
        from lossd.ray_serve import serve_on_ray

        return serve_on_ray(settings)

    from lossd.app import create_app, served
    from lossd.shutdown import GracefulServer
    from lossd.transport import CoalescingHttpToolsProtocol

    try:
        app = create_app(settings, background_warmup=True)
    except ValueError as e:
        print(f"lossd: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        served(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol.configured(
            settings.header_timeout_s, max_connections(settings), settings.retry_after_s
        ),
        # The grace period is spent draining before uvicorn's own shutdown starts; this bounds what is left after it.
        timeout_graceful_shutdown=1,
    )
    server = GracefulServer(config, app.state.service, settings.shutdown_grace_s)
    server.run()
    return 1 if server.cut_short else 0


if __name__ == "__main__":
    raise SystemExit(main())
