"""``lossd serve``: start the server (settings from flags, then LOSSD_* environment variables)."""

from __future__ import annotations

import argparse
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
    s.add_argument("--device", help="auto|cpu|cuda|cuda:N (default auto, or LOSSD_DEVICE)")
    s.add_argument("--max-concurrency", type=int, help="calls admitted at once before 503")
    s.add_argument("--log-level", help="uvicorn log level")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    settings = Settings(**overrides)
    from lossd.app import create_app

    try:
        app = create_app(settings)
    except ValueError as e:
        print(f"lossd: {e}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
