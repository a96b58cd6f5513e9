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
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.kcore_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.kcore_app.state.kcore.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)  # handled: exit 0, not by the default action


def serve(app: FastAPI, *, host: str, port: int, shutdown_timeout: float, log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns once everything has stopped."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
        lifespan="on", access_log=False,
    )
    _Server(config, app).run()
