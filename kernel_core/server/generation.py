"""One engine request as a route runs it: submitted, measured, and refused in OpenAI's terms.

:func:`submit` waits for the request's first output before returning, so a refusal (a prompt
over the context, an unknown adapter) is raised while the route can still answer with a status
code, before any byte of a stream is sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from kernel_core.engine.llm_engine import Prompt
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams
from kernel_core.server import errors
from kernel_core.server.state import ServerState


async def submit(
    state: ServerState,
    prompt: Prompt,
    params: SamplingParams,
    *,
    adapter: str | None,
    priority: int,
    prompt_param: str,
    start: float | None = None,
) -> AsyncIterator[RequestOutput]:
    """The request's cumulative outputs, the first already received; closing the iterator early
    (or cancelling its consumer) aborts the request in the engine and frees its KV blocks."""
    state.check_accepting()
    tracker = state.metrics.track(params.n, time.monotonic() if start is None else start)
    stream = state.engine.generate(prompt, params, priority=priority, adapter=adapter)
    try:
        first = await anext(stream)
    except BaseException as exc:
        tracker.closed = True  # refused: nothing to count as a completion
        await stream.aclose()
        if isinstance(exc, Exception):
            raise errors.from_engine(exc, prompt_param) from None
        raise
    return _outputs(first, stream, tracker)


async def _outputs(first: RequestOutput, stream: AsyncIterator[RequestOutput], tracker) -> AsyncIterator[RequestOutput]:
    output = first
    try:
        while True:
            tracker.observe(output)
            yield output
            if output.finished:
                return
            output = await anext(stream)
    finally:
        tracker.close()
        await stream.aclose()


async def last(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    """Run a request to its end and return its final output."""
    final = None
    async for final in outputs:
        pass
    assert final is not None and final.finished
    return final


def failure(output: RequestOutput) -> errors.APIError | None:
    """A 500 for a completion that ended with ``finish_reason == "error"``."""
    for completion in output.outputs:
        if completion.finish_reason == "error":
            return errors.APIError(500, f"generation failed: {completion.error}", type="internal_error")
    return None
