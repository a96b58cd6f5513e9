"""The OpenAPI schema the server publishes at ``/openapi.json``, made to tell the truth.

FastAPI documents a 422 for every route with a body, but this server answers invalid input with
OpenAI's 400 body; and it cannot see which statuses a route raises by hand. The schema is what
clients generate code from and what ``tests/server/test_fuzz.py`` (schemathesis) checks every
response against, so each route declares here what it can answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from kernel_core.server.auth import OPEN_PATHS
from kernel_core.server.state import ServerSettings


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every non-2xx JSON answer: OpenAI's error body."""

    error: ErrorDetail


#: What each status means, on the routes that can answer it.
_STATUS = {
    "400": "Invalid request: the body, a field (named in `param`) or a limit such as the context length",
    "401": "Missing or wrong API key",
    "404": "Unknown model or adapter",
    "408": "The request body did not arrive in time",
    "409": "The adapter is in use by queued or running requests",
    "413": "The request body is larger than the server accepts",
    "431": "The request headers are larger than the server accepts",
    "503": "The server is shutting down, or its engine failed",
}
_GENERATION = ("400", "404", "408", "413", "503")
#: Statuses by route (path, method) besides 200 and the 431 every route may answer.
ROUTE_STATUSES: dict[tuple[str, str], tuple[str, ...]] = {
    ("/v1/completions", "post"): _GENERATION,
    ("/v1/chat/completions", "post"): _GENERATION,
    ("/v1/models", "get"): (),
    ("/v1/adapters", "post"): ("400", "408", "413"),
    ("/v1/adapters/{name}", "delete"): ("404", "409"),
    ("/tokenize", "post"): ("400", "404", "408", "413"),
    ("/detokenize", "post"): ("400", "404", "408", "413"),
    ("/health", "get"): (),  # its 503 carries the health body itself (see app.py)
    ("/metrics", "get"): (),
}
#: Routes that answer a stream of server-sent events when the body asks for ``stream``.
STREAMING = {"/v1/completions", "/v1/chat/completions"}


#: One server-sent event of a stream (``stream: true``).
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "a chunk's JSON (the route's response body, or a chat chunk), an error body, "
            "or `[DONE]` last",
        }
    },
}


def install(app: FastAPI, settings: ServerSettings) -> None:
    """Replace ``app.openapi`` with :func:`build` (computed once, as FastAPI does)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """FastAPI's schema with each route's real statuses, OpenAI's error body, the SSE media type
    of streaming routes, and the bearer scheme on the keyed routes when an API key is set."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_body.pop("$defs"))
    components["ErrorBody"] = error_body
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    if settings.api_key is not None:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)
            statuses = [*ROUTE_STATUSES.get((path, method), ()), "431"]
            if settings.api_key is not None and path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
                statuses.append("401")
            for status in statuses:
                responses[status] = {"description": _STATUS[status], "content": error}
            if path in STREAMING:
                responses["200"]["content"]["text/event-stream"] = {"schema": _SSE_EVENT}
    return schema
