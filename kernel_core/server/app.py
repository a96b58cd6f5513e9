"""The FastAPI app: routes, error bodies, auth on ``/v1``, ``/health`` and ``/metrics``, and the
engine's start and stop tied to the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from kernel_core import __version__
from kernel_core.engine.async_engine import AsyncLLMEngine
from kernel_core.server import chat, completions, errors, models, openapi, tokenize
from kernel_core.server.auth import require_api_key
from kernel_core.server.limits import RequestLimits
from kernel_core.server.state import LoadedAdapter, ServerSettings, ServerState
from kernel_core.server.streaming import ClientDisconnected

log = logging.getLogger(__name__)
#: Seconds the engine gets at the lifespan's end, when the HTTP server has already let
#: in-flight requests finish (or cancelled them) within ``shutdown_timeout``.
ENGINE_STOP_TIMEOUT = 5.0


def create_app(
    engine: AsyncLLMEngine, settings: ServerSettings, adapters: Mapping[str, str] | None = None
) -> FastAPI:
    """An app serving ``engine`` (not started: the app's lifespan starts and stops it);
    ``adapters`` (name to folder) are those already loaded in the engine, served as models."""
    state = ServerState(engine, settings)
    for name, path in (adapters or {}).items():
        state.adapters[name] = LoadedAdapter(name, str(path))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            state.draining = True
            await engine.shutdown(timeout=ENGINE_STOP_TIMEOUT)

    app = FastAPI(title="kernel-core", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.kcore = state
    errors.install(app)
    openapi.install(app, settings)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": no one reads it

    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes, read_timeout=settings.request_read_timeout)
    app.add_middleware(_CountResponses, state=state)

    keyed = [Depends(require_api_key)]
    for router in (completions.router, chat.router, models.router, tokenize.router):
        app.include_router(router, dependencies=keyed)

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Shutting down"}})
    async def health() -> Response:
        """200 while the engine runs and the server accepts requests; 503 when shutting down or
        the engine failed."""
        ok = engine.is_running and not state.draining
        stats = engine.stats
        body = Health(
            status="ok" if ok else ("draining" if state.draining else "engine failed"),
            num_running=stats.num_running,
            num_waiting=stats.num_waiting,
            num_free_blocks=stats.num_free_blocks,
            num_blocks=stats.num_blocks,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


class Health(BaseModel):
    """``GET /health``'s body, with 200 and with 503 alike."""

    status: str
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int


class _CountResponses:
    """Counts ``/v1`` responses by status (pure ASGI: a streamed body passes through untouched,
    and the client's disconnect still reaches the route)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.state.metrics.http.labels(code=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
