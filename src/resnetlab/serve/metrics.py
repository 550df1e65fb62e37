"""Prometheus metrics of one service process, in a registry of its own (``GET /metrics``)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: a CIFAR net answers in milliseconds, a ResNet-152 batch on a CPU in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("resnetlab_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("resnetlab_errors", "Requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("resnetlab_request_latency_seconds", "Time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("resnetlab_images", "Images run through the model", registry=self.registry)
        self.batch_size = Histogram("resnetlab_batch_size", "Images per forward pass",
                                    buckets=_powers_of_two(max_batch), registry=self.registry)
        self.queued = Gauge("resnetlab_queued_images", "Images waiting for a batch", registry=self.registry)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def record_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _powers_of_two(limit: int) -> tuple[int, ...]:
    buckets, size = [], 1
    while size < limit:
        buckets.append(size)
        size *= 2
    return (*buckets, limit)
