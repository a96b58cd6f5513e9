"""OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``) for every failure, with
the status OpenAI uses: 400 invalid field (``param`` names it), 401 missing or wrong API key, 404
unknown model or route, 409 adapter in use, 503 shutting down, 500 a bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernel_core.engine.async_engine import EngineNotRunningError
from kernel_core.errors import AdapterInUseError, ContextLengthError, InvalidRequestError, UnknownAdapterError

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client gets as OpenAI's body with ``status``."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unknown_model(name: str, known: list[str]) -> APIError:
    return APIError(
        404, f"The model `{name}` does not exist (served: {', '.join(known)}).", param="model", code="model_not_found"
    )


def unsupported(field: str) -> APIError:
    return bad_request(f"`{field}` is not supported by this server", param=field, code="unsupported_parameter")


def from_validation(exc: ValidationError | RequestValidationError) -> APIError:
    """400 naming the first invalid field (``messages.0.content``), as OpenAI's ``param`` does."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # a union's branch names (``str``, ``list[int]``) are pydantic's, not the client's
    loc = [part for part in loc if not any(ch in part for ch in "[]") and part not in ("str", "int")]
    message = first.get("msg", "invalid request")
    context = first.get("ctx") or {}
    if first.get("type") == "json_invalid":
        return bad_request(f"the body is not valid JSON: {context.get('error', message)}", code="invalid_json")
    if "field" in context:  # a check of the whole body that found the culprit itself, e.g. lone surrogates
        return bad_request(message, param=context["field"] or None)
    param = ".".join(loc) or None
    if param is None:  # the body as a whole, e.g. a JSON array where an object is expected
        return bad_request(f"the body: {message}", code="invalid_body")
    return bad_request(f"{param}: {message}", param=param)


def from_engine(exc: Exception, prompt_param: str) -> APIError:
    """What a refusal of the engine means to the client. ``prompt_param`` is the request's prompt
    field (``prompt`` or ``messages``): the engine's refusals name the prompt or the output budget."""
    if isinstance(exc, UnknownAdapterError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ContextLengthError):
        return context_length_exceeded(exc, prompt_param)
    if isinstance(exc, InvalidRequestError):
        # The engine says which limit was hit in words only; the KV-cache refusal is about max_tokens.
        param = "max_tokens" if "KV cache" in str(exc) else prompt_param
        return bad_request(str(exc), param=param)
    if isinstance(exc, AdapterInUseError):
        return APIError(409, str(exc), param="name", code="adapter_in_use")
    if isinstance(exc, EngineNotRunningError):
        return service_unavailable(str(exc))
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    raise exc


def context_length_exceeded(exc: ContextLengthError, prompt_param: str) -> APIError:
    """OpenAI's wording and code; ``param`` is ``max_tokens`` when the prompt alone would fit."""
    where = "messages" if prompt_param == "messages" else "prompt"
    completion = exc.max_tokens or 0
    message = (
        f"This model's maximum context length is {exc.max_model_len} tokens. However, you requested "
        f"{exc.prompt_tokens + completion} tokens ({exc.prompt_tokens} in the {where}, {completion} in the "
        f"completion). Please reduce the length of the {where} or completion."
    )
    param = prompt_param if exc.max_tokens is None else "max_tokens"
    return bad_request(message, param=param, code="context_length_exceeded")


def service_unavailable(message: str = "the server is shutting down") -> APIError:
    return APIError(503, message, type="service_unavailable", code="shutting_down")


def install(app: FastAPI) -> None:
    """Every error the app raises leaves as OpenAI's body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(ValidationError)
    async def _invalid_params(request: Request, exc: ValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not decode the body
            cause = exc.__cause__
            return bad_request(f"the body is not UTF-8 JSON: {type(cause).__name__}: {cause}", code="invalid_json").response()
        response = APIError(exc.status_code, str(exc.detail), type=kind).response()
        response.headers.update(exc.headers or {})  # e.g. 405's Allow
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="internal_error").response()
