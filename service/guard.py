"""A pure ASGI middleware in front of the app: body-size limit and per-endpoint metrics.

Pure ASGI (not Starlette's BaseHTTPMiddleware) because it sits on every request's path and must
cost microseconds. An oversized body is refused from its Content-Length before it is read; a
chunked body that grows past the limit is cut off as it streams in.
"""

from __future__ import annotations

import time

from .metrics import ServiceMetrics
from .responses import error_response


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit; answered here with the 413."""


class Guard:
    def __init__(self, app, max_body_bytes: int, metrics: ServiceMetrics, endpoints: set[str]):
        self.app = app
        self.limit = max_body_bytes
        self.metrics = metrics
        self.endpoints = endpoints  # known paths: metric labels stay bounded whatever clients send

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = {"code": 500}

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self._declared_length(scope) > self.limit:
                await self._too_large(scope, receive, send_tracking)
                return
            received = 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.limit:
                        raise BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_tracking)
            except BodyTooLarge:
                await self._too_large(scope, receive, send_tracking)
        finally:
            self.metrics.observe("http", endpoint, str(status["code"]), time.perf_counter() - started)

    @staticmethod
    def _declared_length(scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    async def _too_large(self, scope, receive, send):
        await error_response(413, f"request body larger than {self.limit} bytes", "body")(scope, receive, send)
