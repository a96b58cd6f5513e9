"""Running the app under uvicorn, and stopping it gracefully.

On SIGTERM or Ctrl-C (SIGINT): ``/health`` turns 503 and new generation requests get 503 at
once; uvicorn stops accepting connections and gives in-flight requests ``shutdown_timeout``
seconds to finish, then cancels the rest (which aborts them in the engine); the app's lifespan
stops the engine. A second Ctrl-C skips the waiting: in-flight requests are cancelled at once.
Then :func:`serve` returns after SIGTERM (``kcore serve`` exits 0) and raises
:class:`KeyboardInterrupt` after Ctrl-C (``kcore`` prints one line and exits 130).

Three uvicorn behaviours are bent for that. It re-raises a caught signal once shut down: SIGTERM's
default action would kill the process with status -15, and SIGINT would surface as a
KeyboardInterrupt with a traceback out of asyncio's runner; so no signal is left for it to
re-raise. On a forced exit it skips the lifespan's shutdown and leaves in-flight requests to
asyncio's final cancelling, each logged with a traceback; here they are cancelled and the engine
stopped as on a timed-out drain. And it logs every request cancelled at shutdown as an "Exception
in ASGI application" with the CancelledError's traceback: that becomes one line.
"""

from __future__ import annotations

import asyncio
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
        #: Stopped by Ctrl-C rather than SIGTERM.
        self.interrupted = False

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None and self.servers and self.servers[0].sockets:
            self.on_ready(self.config.host, self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets)
        if self.force_exit and not self.lifespan.shutdown_event.is_set():
            for task in self.server_state.tasks:
                task.cancel()
            await self.lifespan.shutdown()  # stops the engine once the cancelled requests have aborted

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.kcore_app.state.kcore.draining = True
        super().handle_exit(sig, frame)
        self._captured_signals.remove(sig)  # handled here, not re-raised by uvicorn (see the module doc)
        self.interrupted = self.interrupted or sig == signal.SIGINT


def serve(
    app: FastAPI, *, host: str, port: int, shutdown_timeout: float, log_level: str = "info",
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns once everything has stopped, or raises
    :class:`KeyboardInterrupt` then if it was Ctrl-C. ``on_ready(host, port)`` runs once the app
    has started and the socket listens (the port bound, for port 0)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
        lifespan="on", access_log=False,
    )
    server = _Server(config, app, on_ready)
    quiet = _CancelledAtShutdown(server)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        server.run()
    finally:
        uvicorn_log.removeFilter(quiet)
    if server.interrupted:
        raise KeyboardInterrupt


class _CancelledAtShutdown(logging.Filter):
    """Once the server is stopping, a request task's CancelledError (uvicorn cancelled it: the
    drain timed out, or a second Ctrl-C) is logged as one line instead of a traceback."""

    def __init__(self, server: uvicorn.Server) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
        if cancelled and self.server.should_exit:
            record.msg, record.args = "a request still running at shutdown was cancelled", ()
            record.exc_info = record.exc_text = None
        return True
