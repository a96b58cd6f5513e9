"""Limits on what one request may make the server hold: its headers' size, its body's size and the
time the body takes to arrive (pure ASGI, in front of the routes).

Headers over :data:`MAX_HEADER_BYTES` in all get 431 (uvicorn's parser bounds them only while they
arrive in pieces). A body over ``max_bytes`` gets 413 before it is read (``Content-Length``) or as
soon as the bytes received pass the limit (chunked uploads); a body still incomplete
``read_timeout`` seconds after the request began gets 408, so a client trickling bytes cannot hold
a connection and a buffer forever.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException

from kernel_core.server.errors import APIError

ASGIApp = Any
Message = dict[str, Any]
#: Request line aside, the most header bytes (names and values) a request may carry.
MAX_HEADER_BYTES = 32 * 1024


class RequestLimits:
    """ASGI middleware enforcing :data:`MAX_HEADER_BYTES`, :attr:`max_bytes` and
    :attr:`read_timeout` on HTTP requests.

    What can be refused up front is answered here; what shows while the body arrives is raised as
    an HTTP exception from ``receive``, so the app's error handlers give it OpenAI's error body
    like any other refusal."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            refusal = APIError(431, f"the request headers ({header_bytes} bytes) exceed the limit of {MAX_HEADER_BYTES}")
            await refusal.response()(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await APIError(413, self._too_large(declared)).response()(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _too_large(self, size: int) -> str:
        return f"the request body ({size} bytes or more) exceeds the limit of {self.max_bytes} bytes"

    def _limited(self, receive):
        deadline = time.monotonic() + self.read_timeout
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: wait as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.read_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large(received))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return limited_receive


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
