"""``POST /v1/completions``: text in, text out; one engine request per prompt of the batch.

Choice ``i * n + j`` is completion ``j`` of prompt ``i``, as in OpenAI's API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from kernel_core.outputs import CompletionOutput, RequestOutput
from kernel_core.server import errors
from kernel_core.server.generation import Outputs, admit, failure, submit, submit_all
from kernel_core.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from kernel_core.server.state import ServerState
from kernel_core.server.streaming import event, merge, sse_response, until_disconnect

router = APIRouter()


@router.post("/v1/completions", responses={200: {"model": CompletionResponse}})
async def create_completion(body: CompletionRequest, request: Request):
    start = time.monotonic()
    state: ServerState = request.app.state.kcore
    adapter = admit(body, state)
    prompts = body.prompts()
    if not prompts:
        raise errors.bad_request("prompt: at least one prompt is required", param="prompt")
    try:
        params = body.sampling_params(max_tokens=body.max_tokens, logprobs=body.logprobs)
    except ValueError as exc:
        raise errors.from_engine(exc, "prompt") from None
    request_id = f"cmpl-{uuid.uuid4().hex}"
    submissions = [
        submit(state, prompt, params, adapter=adapter, priority=body.priority, prompt_param="prompt", start=start)
        for prompt in prompts
    ]
    streams = await until_disconnect(request, submit_all(submissions))
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_stream(state, body, request_id, streams, include_usage))
    finals = await until_disconnect(request, _collect(streams))
    for final in finals:
        if (error := failure(final)) is not None:
            raise error
    choices = [
        CompletionChoice(
            index=i * body.n + c.index,
            text=c.text,
            logprobs=_logprobs(state, c, 0, 0) if body.logprobs is not None else None,
            finish_reason=c.finish_reason,
        )
        for i, final in enumerate(finals)
        for c in final.outputs
    ]
    return CompletionResponse(id=request_id, model=body.model, choices=choices, usage=usage(finals))


async def _collect(streams: list[Outputs]) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for index, output in merge(streams):
        finals[index] = output
    return finals  # type: ignore[return-value]


async def _stream(
    state: ServerState, body: CompletionRequest, request_id: str, streams: list[Outputs],
    include_usage: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    sent_text: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for prompt_index, output in merge(streams):
        finals[prompt_index] = output
        if (error := failure(output)) is not None:
            raise error
        choices = []
        for c in output.outputs:
            index = prompt_index * body.n + c.index
            text_from, tokens_from = sent_text.get(index, 0), sent_tokens.get(index, 0)
            if len(c.token_ids) == tokens_from and c.finish_reason is None:
                continue
            sent_text[index], sent_tokens[index] = len(c.text), len(c.token_ids)
            choices.append(
                CompletionChoice(
                    index=index,
                    text=c.text[text_from:],
                    logprobs=_logprobs(state, c, tokens_from, text_from) if body.logprobs is not None else None,
                    finish_reason=c.finish_reason,
                )
            )
        if choices:
            yield event(CompletionResponse(id=request_id, created=created, model=body.model, choices=choices))
    if include_usage:
        yield event(CompletionResponse(id=request_id, created=created, model=body.model, choices=[],
                                       usage=usage([f for f in finals if f is not None])))


def usage(finals: list[RequestOutput]) -> Usage:
    prompt = sum(len(f.prompt_token_ids) for f in finals)
    completion = sum(len(c.token_ids) for f in finals for c in f.outputs)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def token_text(state: ServerState, token_id: int, decoded: str | None) -> str:
    return decoded if decoded is not None else state.tokenizer.decode([token_id])


def _logprobs(state: ServerState, c: CompletionOutput, tokens_from: int, text_from: int) -> CompletionLogprobs:
    """OpenAI's legacy logprobs of positions ``tokens_from`` on; offsets count from the start of
    the choice's text (``text_from`` is where this chunk's text starts)."""
    result = CompletionLogprobs()
    offset = text_from
    for token_id, position in zip(c.token_ids[tokens_from:], (c.logprobs or [])[tokens_from:]):
        chosen = position.get(token_id)
        text = token_text(state, token_id, chosen.decoded_token if chosen else None)
        result.tokens.append(text)
        result.token_logprobs.append(chosen.logprob if chosen else None)
        result.top_logprobs.append(
            {token_text(state, t, lp.decoded_token): lp.logprob for t, lp in sorted(position.items(), key=lambda e: e[1].rank)}
        )
        result.text_offset.append(offset)
        offset += len(text)
    return result
