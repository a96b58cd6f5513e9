"""One engine request as a route runs it: submitted, measured, and refused in OpenAI's terms.

:func:`submit` waits for the request's first output before returning, so a refusal (a prompt
over the context, an unknown adapter) is raised while the route can still answer with a status
code, before any byte of a stream is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable

from kernel_core.engine.llm_engine import Prompt
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams
from kernel_core.server import errors
from kernel_core.server.metrics import RequestTracker
from kernel_core.server.protocol import SamplingFields
from kernel_core.server.state import ServerState


def admit(body: SamplingFields, state: ServerState) -> str | None:
    """The adapter a generation request's ``model`` names (None: the base model), after refusing
    the fields this server does not implement, as both generation routes must first."""
    adapter = state.resolve_model(body.model)
    if (field := body.unsupported()) is not None:
        raise errors.unsupported(field)
    return adapter


async def submit(
    state: ServerState,
    prompt: Prompt,
    params: SamplingParams,
    *,
    adapter: str | None,
    priority: int,
    prompt_param: str,
    start: float | None = None,
) -> Outputs:
    """The request's cumulative outputs, the first already received. Closing them early
    (``aclose``), or cancelling the task that awaits them, aborts the request in the engine and
    frees its KV blocks."""
    state.check_accepting()
    tracker = state.metrics.track(params.n, time.monotonic() if start is None else start)
    stream = state.engine.generate(prompt, params, priority=priority, adapter=adapter, clip_max_tokens=False)
    try:
        first = await anext(stream)
    except BaseException as exc:
        await stream.aclose()
        if isinstance(exc, Exception):
            tracker.closed = True  # refused: no completion to count
            raise errors.from_engine(exc, prompt_param) from None
        tracker.close()  # cancelled (the client left) while it waited: counted as aborted
        raise
    return Outputs(first, stream, tracker)


async def submit_all(submissions: list[Awaitable[Outputs]]) -> list[Outputs]:
    """Several :func:`submit` at once (their prompts then share the first engine step); if one
    is refused, or this is cancelled, those already admitted are aborted."""
    tasks = [asyncio.ensure_future(submission) for submission in submissions]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                await task.result().aclose()
        raise


class Outputs:
    """An engine request's outputs as an async iterator that measures each one and that can be
    closed (aborting the request) whether or not iteration has started."""

    def __init__(self, first: RequestOutput, stream: AsyncGenerator[RequestOutput, None], tracker: RequestTracker):
        self._next: RequestOutput | None = first
        self._stream = stream
        self._tracker = tracker
        self._done = False

    def __aiter__(self) -> Outputs:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        if self._next is not None:
            output, self._next = self._next, None
        else:
            try:
                output = await anext(self._stream)
            except BaseException:  # cancelled (the engine's generate has aborted it) or failed
                await self.aclose()
                raise
        self._tracker.observe(output)
        if output.finished:
            await self.aclose()
        return output

    async def aclose(self) -> None:
        """Abort the request unless it finished; idempotent."""
        if not self._done:
            self._done = True
            self._tracker.close()
            await self._stream.aclose()


async def last(outputs: Outputs) -> RequestOutput:
    """Run a request to its end and return its final output."""
    final = None
    try:
        async for final in outputs:
            pass
    finally:
        await outputs.aclose()
    assert final is not None and final.finished
    return final


def failure(output: RequestOutput) -> errors.APIError | None:
    """A 500 for a completion that ended with ``finish_reason == "error"``."""
    for completion in output.outputs:
        if completion.finish_reason == "error":
            return errors.APIError(500, f"generation failed: {completion.error}", type="internal_error")
    return None
