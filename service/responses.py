"""JSON answers of the HTTP front end: one error shape, `{"detail", "field"}`, for the app and its middleware."""

from __future__ import annotations

import orjson
from starlette.responses import Response


def json_response(payload: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")


def error_response(status: int, detail: str, field: str | None, headers: dict | None = None) -> Response:
    return json_response({"detail": detail, "field": field}, status, headers)
