"""The POST routes on every client's per-step path (/act, /value, /imagine), served straight from ASGI.

They are FastAPI routes like the others (one registration: the document describes them, and FastAPI
would serve them), but `HotPaths` hands their requests to the endpoint itself. FastAPI's stack
(its telemetry, body-limit, exception and exit-stack middlewares, the router and dependency
solving) costs about 35 us of a 110 us /act in process, and these endpoints need none of it: they
parse their own bodies, check the token themselves and return finished responses. Their errors go
through the app's own exception handlers, so every status, message and header stays the same.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request


class HotRoute(APIRoute):
    """A POST route whose requests `HotPaths` hands to the endpoint directly."""


class HotPaths:
    """The ASGI app in front of FastAPI: a POST to a `HotRoute`'s path goes to its endpoint, the rest to FastAPI."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.endpoints = {route.path: route.endpoint for route in app.routes if isinstance(route, HotRoute)}

    async def __call__(self, scope, receive, send):
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # a bug: uvicorn logs it and answers 500, as FastAPI's ServerErrorMiddleware would
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception):
        handlers = self.app.exception_handlers
        return next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)
