"""Running the app under uvicorn, and stopping it gracefully.

On SIGTERM (or the first Ctrl-C): ``/health`` turns 503 and new generation requests get 503 at
once; uvicorn stops accepting connections and gives in-flight requests ``shutdown_timeout``
seconds to finish, then cancels the rest (which aborts them in the engine); the app's lifespan
stops the engine; the process exits 0. uvicorn re-raises a caught signal once it has shut down,
which would make SIGTERM's default action kill the process with status -15: a SIGTERM that was
handled is therefore not re-raised.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, on_ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config)
        self.kcore_app = app
        self.on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None and self.servers and self.servers[0].sockets:
            self.on_ready(self.config.host, self.servers[0].sockets[0].getsockname()[1])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.kcore_app.state.kcore.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)  # handled: exit 0, not by the default action


def serve(
    app: FastAPI, *, host: str, port: int, shutdown_timeout: float, log_level: str = "info",
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns once everything has stopped. ``on_ready(host,
    port)`` runs once the app has started and the socket listens (the port bound, for port 0)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
        lifespan="on", access_log=False,
    )
    _Server(config, app, on_ready).run()
