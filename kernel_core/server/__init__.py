"""The OpenAI-compatible HTTP server (``kcore serve``, docs/http-server.md): FastAPI routes over
:class:`~kernel_core.engine.async_engine.AsyncLLMEngine`, one small module per job:

- ``app``        the FastAPI factory: routes, ``/health``, ``/metrics``, the engine's lifespan
- ``protocol``   OpenAI's request and response bodies (pydantic)
- ``completions``, ``chat``  the two generation routes
- ``generation`` one engine request as a route runs it: submitted, measured, refusals as 4xx
- ``streaming``  server-sent events, disconnects abort
- ``models``     ``/v1/models`` and loading / unloading adapters from ``--adapter-dir``
- ``tokenize``   ``/tokenize`` and ``/detokenize``
- ``metrics``    the Prometheus text exposition
- ``auth``       the bearer key, compared in constant time
- ``errors``     OpenAI's error bodies and statuses
- ``state``      what the routes share
- ``lifecycle``  uvicorn, and the graceful stop on SIGTERM
- ``examples``   the curl and openai examples ``--print-examples`` shows once listening

FastAPI and uvicorn are imported only here: ``import kernel_core`` does not need them.
"""

from kernel_core.server.app import create_app
from kernel_core.server.state import ServerSettings

__all__ = ["ServerSettings", "create_app"]
