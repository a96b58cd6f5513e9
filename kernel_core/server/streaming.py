"""Server-sent events, and tying a request's life to its client's connection.

A stream is ``data: <json>\\n\\n`` per chunk and ends with ``data: [DONE]\\n\\n``, as OpenAI's
does. When the client disconnects, Starlette cancels the task writing the stream (ASGI spec
2.3, which uvicorn speaks, has it listen for ``http.disconnect``); the cancellation reaches the
engine's ``generate`` and aborts the request there, freeing its KV blocks. A non-streamed
request is watched the same way by :func:`until_disconnect`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from kernel_core.server.errors import APIError

log = logging.getLogger(__name__)
T = TypeVar("T")
DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The client went away before its non-streamed response was ready."""


def event(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


def sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    """Stream ``chunks`` (already ``data:`` events) and end with ``[DONE]``; an error raised while
    streaming becomes one error event, since the 200 is already sent."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as exc:
            yield event(exc.body())
        except Exception as exc:  # noqa: BLE001 - the status is sent; say what failed in the stream
            log.exception("a stream failed")
            yield event(APIError(500, f"internal error: {exc}", type="internal_error").body())
        finally:
            await chunks.aclose()
        yield DONE

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams of cumulative outputs as they come, each with its stream's index;
    a consumer slower than the streams gets only each stream's newest item (nothing piles up
    behind a slow client). Leaving early closes every stream (aborting their requests)."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()
        return
    newest: dict[int, T | BaseException] = {}
    ready = asyncio.Event()
    running = len(streams)

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        nonlocal running
        try:
            async for item in stream:
                newest[index] = item
                ready.set()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            newest[index] = exc
        finally:
            await stream.aclose()
            running -= 1
            ready.set()

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        while running or newest:
            await ready.wait()
            ready.clear()
            for index in sorted(newest):
                item = newest.pop(index)
                if isinstance(item, BaseException):
                    raise item
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects first: then ``work`` is cancelled (aborting
    its requests) and :class:`ClientDisconnected` is raised."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()
