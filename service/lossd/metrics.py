"""Prometheus metrics, on a registry of the app's own (no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lossd_requests",
            "HTTP requests by method, endpoint, loss and status",
            ["method", "endpoint", "loss", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lossd_request_duration_seconds",
            "End-to-end request latency",
            ["method", "endpoint", "loss"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter("lossd_errors", "Error responses by status", ["status"], registry=self.registry)
        self.compute = Histogram(
            "lossd_compute_seconds",
            "Device time per call batch",
            ["device"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge("lossd_inflight_calls", "Calls in flight per device", ["device"], registry=self.registry)
        self.device_calls = Counter("lossd_device_calls", "Calls run per device", ["device"], registry=self.registry)
        self.rejected = Counter(
            "lossd_rejected", "Calls refused before running, by reason", ["reason"], registry=self.registry
        )
        self.ready = Gauge("lossd_ready", "1 when the server takes work", registry=self.registry)
        self.admitted = Gauge(
            "lossd_admitted_requests",
            "Compute requests holding a slot (receiving, queued, computing or answering); 503 at LOSSD_MAX_CONCURRENCY",
            registry=self.registry,
        )
        self.body_bytes = Gauge(
            "lossd_inflight_body_bytes", "Request body bytes of the admitted requests", registry=self.registry
        )
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._device_children: dict[str, tuple[Any, Any]] = {}

    def observe(self, method: str, endpoint: str, loss: str, status: int, seconds: float) -> None:
        # labels() costs a lock and a dict build per call: keep the children of each label set.
        key = (method, endpoint, loss, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, endpoint, loss, str(status)),
                self.latency.labels(method, endpoint, loss),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            self.errors.labels(str(status)).inc()

    def add_device(self, device: str) -> tuple[Any, Any]:
        """A device's series (compute seconds, calls), made at 0 at start-up so that every engine shows on a
        dashboard before its first call."""
        children = self._device_children.get(device)
        if children is None:
            children = self._device_children[device] = (self.compute.labels(device), self.device_calls.labels(device))
            self.inflight.labels(device).set(0)
        return children

    def observe_compute(self, device: str, seconds: float) -> None:
        children = self._device_children.get(device) or self.add_device(device)
        children[0].observe(seconds)
        children[1].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
