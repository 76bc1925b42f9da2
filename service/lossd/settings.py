"""Server configuration, from ``LOSSD_*`` environment variables or the CLI. Defaults are safe."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSSD_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    device: str = Field(
        "auto", description="auto, cpu, cuda, cuda:N, all, or a comma list (cuda:0,cuda:1): one engine per device."
    )
    max_body_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    max_tensor_elements: int = Field(64 * 1024 * 1024, gt=0, description="Largest element count of one tensor.")
    max_tensors: int = Field(64, gt=0, description="Most tensors in one call (and calls in one batch).")
    max_batch_calls: int = Field(256, gt=0, description="Most calls in one /v1/batch request.")
    max_concurrency: int = Field(64, gt=0, description="Calls admitted at once (running or queued); 503 beyond.")
    max_concurrency_per_client: int = Field(
        0,
        ge=0,
        description="Calls one client (its API key; its address where there are no keys) may have admitted at "
        "once; 503 beyond, so that one tenant's stalled uploads or flood leave slots for the others. 0: no bound. "
        "Behind a proxy without keys every client has the proxy's address: use keys.",
    )
    max_inflight_body_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Request body bytes of all admitted calls together; 503 beyond (a body alone may be larger). "
        "Decoding JSON takes several times a body's size: size it to the host's memory.",
    )
    inline_max_bytes: int = Field(
        65536,
        ge=0,
        description="Bodies up to this size are decoded on the event loop and computed there too when the call "
        "is little work (at most 16 calls and 16,384 elements of linear losses; on a GPU only while its worker "
        "is idle), which is cheaper than a thread hand-off; the rest goes to worker threads. 0: always hand off.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Time to receive a compute request's body once admitted; 408 (and the connection closed) "
        "past it, so stalled uploads cannot hold admission slots.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time for a connection to send a request's headers once it opens or starts one; past it the "
        "connection is closed (408 if part of a head came), so silent connections cannot use up the server's.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open connections past which a new one is answered 503 (with Retry-After) and closed, rather "
        "than reset when file descriptors run out. 0: nine tenths of the open-file limit (ulimit -n).",
    )
    compute_threads: int = Field(1, gt=0, description="Worker threads per device running loss computations.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads (0: leave torch's default). CPU reductions split their sums by it: "
        "set one value across a fleet whose values must agree bit for bit.",
    )
    deadline_ms: int = Field(
        30_000, gt=0, description="Default per-call deadline; 504 if it passes before the call runs."
    )
    retry_after_s: int = Field(
        1,
        ge=0,
        description="Retry-After sent with 503 (busy, not ready, draining); a 429 sends the time until its "
        "key's next request is allowed, at least this.",
    )
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Keys and the losses each may call ("*" for all), as JSON: {"key": ["*"]}. Empty: no auth.',
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Web origins that may call from a browser (CORS), as JSON: ["https://app.example"], or ["*"]. '
        "Empty: no CORS headers, for server-side clients and same-origin pages.",
    )
    rate_limit_per_s: float = Field(0.0, ge=0, description="Requests per second per key (or client address); 0: off.")
    rate_limit_burst: int = Field(100, gt=0, description="Token-bucket burst for the rate limit.")
    vgg16_weights: Path | None = Field(None, description="safetensors file of torchvision vgg16().features weights.")
    warmup: bool = Field(True, description="Run every loss once on the device before /readyz turns 200.")
    log_level: str = Field("info", description="uvicorn log level.")
    otel: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry (to the globally configured providers). Off: its per-request "
        "provider checks cost about 20 µs, a tenth of a small call.",
    )
    # Scale-out and shutdown (README, Deployment).
    cpu_engines: int = Field(1, gt=0, description="CPU engines that device=all starts on a machine without CUDA.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: refuse new calls, wait this long for calls in flight, then exit."
    )
    ray_address: str | None = Field(
        None, description="serve --ray: Ray cluster to join (auto, ray://host:10001); unset starts a local one."
    )
    ray_min_replicas: int = Field(1, ge=0, description="serve --ray: fewest replicas the autoscaler keeps.")
    ray_max_replicas: int = Field(1, gt=0, description="serve --ray: most replicas (one per GPU: the GPU count).")
    ray_gpus_per_replica: float | None = Field(
        None, ge=0, description="serve --ray: GPUs per replica; unset: 1 where the cluster has GPUs, else 0."
    )
    ray_cpus_per_replica: float = Field(1.0, ge=0, description="serve --ray: CPUs reserved per replica.")
    ray_target_ongoing_requests: float = Field(
        4.0, gt=0, description="serve --ray: calls in flight per replica the autoscaler aims at."
    )


def markdown_table() -> str:
    """The README's configuration table, generated so that it cannot drift from the settings."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
        rows.append(f"| `LOSSD_{name.upper()}` | `{default!r}` | {f.description} |")
    return "\n".join(rows)
