"""What `zoo serve` wraps around its endpoints: the Prometheus metrics, and two ASGI middlewares (every request
counted and timed; a body over the limit refused as it arrives). Imported by `zoo.serve.app`, after its check that
the serve extra is installed."""

from __future__ import annotations

import time

import prometheus_client as prom
from starlette.exceptions import HTTPException

from zoo.serve.batcher import Batcher

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # histogram buckets


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (a process may build many apps)."""

    def __init__(self, batcher: Batcher, in_flight) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("zoo_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram(
            "zoo_serve_request_duration_seconds", "Time to answer a request", ["endpoint"], buckets=SECONDS, registry=r
        )
        self.batch_size = prom.Histogram(
            "zoo_serve_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.inference = prom.Histogram(
            "zoo_serve_inference_duration_seconds", "Time of one model call", buckets=SECONDS, registry=r
        )
        prom.Gauge("zoo_serve_queue_depth", "Images waiting for a model call", registry=r).set_function(
            lambda: batcher.depth
        )
        prom.Gauge("zoo_serve_requests_in_flight", "Requests admitted and not yet answered", registry=r).set_function(
            in_flight
        )

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)


class CountRequests:
    """ASGI middleware: every request counted by endpoint (its route's path) and status, and timed."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # 500: an exception escaped before a response began

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class LimitBody:
    """ASGI middleware: a request body over `max_bytes` (declared or as it arrives) is a 413 before it is read."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0
        too_large = HTTPException(
            413, f"the request body is over this server's limit of {self.max_bytes / 2**20:g} MB (--max-request-mb)"
        )

        async def limited() -> dict:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, limited, send)
