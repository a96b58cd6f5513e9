"""What every route of one server shares: the engine, the settings, the served names, the metrics.

Kept on ``app.state.kcore``; routes reach it through ``request.app.state.kcore``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kernel_core.engine.async_engine import AsyncLLMEngine
from kernel_core.server.errors import service_unavailable, unknown_model
from kernel_core.server.metrics import Metrics


@dataclass(frozen=True)
class ServerSettings:
    """``kcore serve``'s options that are the server's, not the engine's."""

    #: The id clients send as ``model`` for the base model (``--model`` as given).
    model_name: str
    api_key: str | None = None
    #: The only folder ``POST /v1/adapters`` loads from (None: loading over HTTP is off).
    adapter_dir: Path | None = None
    #: Seconds in-flight requests get to finish on shutdown before they are aborted.
    shutdown_timeout: float = 30.0
    #: Largest request body accepted (413 beyond): a prompt of a whole context is well under it.
    max_request_bytes: int = 8 * 2**20
    #: Seconds a request's body may take to arrive in full (408 beyond).
    request_read_timeout: float = 30.0


@dataclass
class LoadedAdapter:
    name: str
    path: str
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServerState:
    engine: AsyncLLMEngine
    settings: ServerSettings
    created: int = field(default_factory=lambda: int(time.time()))
    #: Adapters loaded through this server (at start and over HTTP), by name: the names a request
    #: may use as ``model``, known without a round trip to the engine's worker.
    adapters: dict[str, LoadedAdapter] = field(default_factory=dict)
    #: Set when shutdown starts: new generation requests get 503 and ``/health`` turns 503.
    draining: bool = False
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.engine.stats, lambda: len(self.adapters))

    @property
    def tokenizer(self):
        return self.engine.engine.tokenizer

    @property
    def served_names(self) -> list[str]:
        return [self.settings.model_name, *self.adapters]

    def resolve_model(self, name: str) -> str | None:
        """The adapter a request's ``model`` selects (None: the base model); 404 if unknown."""
        if name == self.settings.model_name:
            return None
        if name in self.adapters:
            return name
        raise unknown_model(name, self.served_names)

    def check_accepting(self) -> None:
        if self.draining or not self.engine.is_running:
            raise service_unavailable(
                "the server is shutting down" if self.draining else f"the engine is not running: {self.engine.error}"
            )
