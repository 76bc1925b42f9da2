"""API keys (401/403) and per-client token-bucket rate limiting (429)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from lossd.errors import Problem


class Keys:
    """Keys and the losses each may call; with no keys configured, everything is open."""

    def __init__(self, keys: Mapping[str, Sequence[str]]) -> None:
        self.keys = {k: frozenset(v) for k, v in keys.items()}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None, api_key: str | None) -> str | None:
        """Return the caller's key (None when auth is off); 401 when missing or unknown."""
        if not self.keys:
            return None
        key = api_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if key is None:
            raise Problem(
                401,
                "an API key is required (Authorization: Bearer KEY, or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if key not in self.keys:
            raise Problem(401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
        return key

    def authorize(self, key: str | None, loss: str) -> None:
        if key is None:
            return
        allowed = self.keys[key]
        if "*" not in allowed and loss not in allowed:
            raise Problem(403, f"this API key may not call {loss}")


class RateLimiter:
    """Token bucket per client (API key, or address when auth is off)."""

    def __init__(self, rate_per_s: float, burst: int, retry_after_floor: int = 1) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.floor = retry_after_floor

    def check(self, client: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            wait = max(self.floor, math.ceil((1.0 - tokens) / self.rate))
            raise Problem(429, f"rate limit of {self.rate:g} requests/s exceeded", headers={"Retry-After": str(wait)})
        self.buckets[client] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:  # bound memory under many distinct clients
            self.buckets.clear()
