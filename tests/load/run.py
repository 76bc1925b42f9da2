"""Run one load scenario headless against a lossd URL and check its SLOs; exit 1 when one is missed.

    python tests/load/run.py --scenario mixed --url http://127.0.0.1:8000 --users 20 --spawn-rate 5 --duration 60

The run is bounded by ``--duration`` and ``--max-requests``, and targets only the given URL,
which must be a loopback address unless ``--allow-remote`` is given. Exit codes: 0 all SLOs met,
1 an SLO missed, 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_DURATION_S = 3600.0
MAX_USERS = 1000
# Default p99 bound per scenario (ms), generous enough for a 2-core machine running locust too.
DEFAULT_P99_MS = {
    "classify": 500.0,
    "regress": 10_000.0,
    "catalogue": 1000.0,
    "batch": 2000.0,
    "bad": 500.0,
    "mixed": 10_000.0,
}


@dataclass
class Summary:
    requests: int
    failures: int
    p99_ms: float
    status_counts: dict[int, int]
    per_name: dict[str, dict[str, float]] = field(default_factory=dict)
    failure_messages: dict[str, int] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.status_counts.items() if s >= 500)


@dataclass(frozen=True)
class SLO:
    p99_ms: float
    max_error_rate: float = 0.01
    max_5xx: int = 0
    min_requests: int = 1


def check_slos(s: Summary, slo: SLO) -> list[str]:
    """The SLOs this run missed, as readable lines (empty: all met)."""
    missed = []
    if s.requests < slo.min_requests:
        missed.append(f"only {s.requests} requests completed (at least {slo.min_requests} wanted)")
    if s.server_errors > slo.max_5xx:
        missed.append(f"{s.server_errors} responses were 5xx (at most {slo.max_5xx} allowed)")
    rate = s.failures / s.requests if s.requests else 1.0
    if rate > slo.max_error_rate:
        missed.append(f"error rate {rate:.2%} over {slo.max_error_rate:.2%}")
    if s.p99_ms > slo.p99_ms:
        missed.append(f"p99 latency {s.p99_ms:.1f} ms over {slo.p99_ms:.1f} ms")
    return missed


def check_target(url: str, allow_remote: bool) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--url must be an http(s) URL, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addrs = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    if not allow_remote and not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(f"{parts.hostname} is not a loopback address; pass --allow-remote to load it on purpose")
    return parts.hostname, port


def run_locust(scenario: str, url: str, users: int, spawn_rate: float, duration: float, max_requests: int) -> Summary:
    import gevent
    from locust.env import Environment

    sys.path.insert(0, str(Path(__file__).parent))
    from locustfile import SCENARIOS

    statuses: dict[int, int] = {}

    def on_request(response: Any = None, exception: Any = None, **_: Any) -> None:
        code = getattr(response, "status_code", None) or 0  # 0: no HTTP response (connection error)
        statuses[code] = statuses.get(code, 0) + 1

    env = Environment(user_classes=list(SCENARIOS[scenario]), host=url.rstrip("/"))
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=spawn_rate)

    def stop_on_count() -> None:
        while runner.state not in ("stopped", "stopping"):
            if env.stats.total.num_requests >= max_requests:
                runner.quit()
                return
            gevent.sleep(0.2)

    gevent.spawn(stop_on_count)
    gevent.spawn_later(duration, runner.quit)
    runner.greenlet.join()
    total = env.stats.total
    per_name = {
        f"{e.method} {e.name}": {
            "requests": e.num_requests,
            "failures": e.num_failures,
            "p50_ms": e.get_response_time_percentile(0.5) or 0.0,
            "p99_ms": e.get_response_time_percentile(0.99) or 0.0,
        }
        for e in env.stats.entries.values()
    }
    return Summary(
        requests=total.num_requests,
        failures=total.num_failures,
        p99_ms=float(total.get_response_time_percentile(0.99) or 0.0),
        status_counts=statuses,
        per_name=per_name,
        failure_messages={f"{e.name}: {e.error}": e.occurrences for e in env.stats.errors.values()},
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=sorted(DEFAULT_P99_MS), default="mixed")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="lossd base URL (loopback by default)")
    p.add_argument("--users", type=int, default=10, help="concurrent simulated users")
    p.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (at most 3600)")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    p.add_argument("--p99-ms", type=float, help="p99 latency SLO over all requests (default per scenario)")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="largest share of failed requests")
    p.add_argument("--max-5xx", type=int, default=0, help="5xx responses allowed (0: none)")
    p.add_argument("--json", type=Path, help="write the summary and the SLO verdict here")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    a = p.parse_args(argv)
    if not 0 < a.duration <= MAX_DURATION_S or not 0 < a.users <= MAX_USERS or a.max_requests <= 0 or a.spawn_rate <= 0:
        p.error(f"duration must be in (0, {MAX_DURATION_S:g}] s, users in [1, {MAX_USERS}], counts positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    host, port = check_target(a.url, a.allow_remote)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        print(f"cannot reach {a.url}: {e}", file=sys.stderr)
        return 2
    slo = SLO(
        p99_ms=a.p99_ms if a.p99_ms is not None else DEFAULT_P99_MS[a.scenario],
        max_error_rate=a.max_error_rate,
        max_5xx=a.max_5xx,
    )
    summary = run_locust(a.scenario, a.url, a.users, a.spawn_rate, a.duration, a.max_requests)
    missed = check_slos(summary, slo)
    report = {
        "scenario": a.scenario,
        "url": a.url,
        "users": a.users,
        "duration_s": a.duration,
        "slo": asdict(slo),
        "missed": missed,
        **asdict(summary),
    }
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    print(
        f"{a.scenario}: {summary.requests} requests, {summary.failures} failed, {summary.server_errors} 5xx, p99 {summary.p99_ms:.1f} ms; statuses {dict(sorted(summary.status_counts.items()))}"
    )
    for name, n in summary.failure_messages.items():
        print(f"  failure x{n}: {name}")
    for line in missed:
        print(f"SLO MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
