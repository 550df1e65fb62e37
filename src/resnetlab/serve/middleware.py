"""ASGI middleware of the service: request limits and metrics, around every endpoint."""
from __future__ import annotations

import asyncio
import json
import time

from .metrics import ServeMetrics
from .uploads import RequestError


class RequestLimits:
    """Refuse bodies over ``max_body_bytes`` (413) and clients that stall mid-body (408).

    A declared Content-Length over the limit is answered at once, unread. Otherwise the body
    is counted as the endpoint reads it, and a ``RequestError`` stops the read: a chunked
    upload cannot slip past the limit, and a stalled one frees its handler after the timeout.
    """

    def __init__(self, app, max_body_bytes: int, idle_timeout_s: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await send_json_error(send, 413, self._too_large(int(declared)))
        received, body_done = 0, False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no deadline on it
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                raise RequestError(408, f"the request body stalled: no bytes for {self.idle_timeout_s:g} s")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise RequestError(413, self._too_large(received))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, size: int) -> str:
        return (f"the request body is {size:,} bytes or more; the service takes at most "
                f"{self.max_body_bytes:,} (resnetlab serve --max-body-mb)")


class RecordMetrics:
    """Count every request by endpoint and status, and time it.

    Paths that are no endpoint are counted as "unmatched": a scan of random URLs cannot grow
    the number of series without bound.
    """

    def __init__(self, app, metrics: ServeMetrics, endpoints: set[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "unmatched"
            self.metrics.record_request(endpoint, status, time.perf_counter() - started)


async def send_json_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
