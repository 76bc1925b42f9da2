"""Server configuration, from ``LOSSD_*`` environment variables or the CLI. Defaults are safe."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSSD_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_body_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    max_tensor_elements: int = Field(64 * 1024 * 1024, gt=0, description="Largest element count of one tensor.")
    max_tensors: int = Field(64, gt=0, description="Most tensors in one call (and calls in one batch).")
    max_batch_calls: int = Field(256, gt=0, description="Most calls in one /v1/batch request.")
    max_concurrency: int = Field(64, gt=0, description="Calls admitted at once (running or queued); 503 beyond.")
    compute_threads: int = Field(1, gt=0, description="Worker threads per device running loss computations.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads (0: leave torch's default).")
    deadline_ms: int = Field(
        30_000, gt=0, description="Default per-call deadline; 504 if it passes before the call runs."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 429 and 503.")
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Keys and the losses each may call ("*" for all), as JSON: {"key": ["*"]}. Empty: no auth.',
    )
    rate_limit_per_s: float = Field(0.0, ge=0, description="Requests per second per key (or client address); 0: off.")
    rate_limit_burst: int = Field(100, gt=0, description="Token-bucket burst for the rate limit.")
    vgg16_weights: Path | None = Field(None, description="safetensors file of torchvision vgg16().features weights.")
    warmup: bool = Field(True, description="Run every loss once on the device before /readyz turns 200.")
    log_level: str = Field("info", description="uvicorn log level.")
