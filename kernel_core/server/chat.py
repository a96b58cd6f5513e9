"""``POST /v1/chat/completions``: the messages through the model's chat template, one engine
request with ``n`` completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from kernel_core.outputs import CompletionOutput
from kernel_core.server import errors
from kernel_core.server.completions import token_text, usage
from kernel_core.server.generation import Outputs, admit, failure, last, submit
from kernel_core.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    Delta,
    TokenLogprob,
    TopLogprob,
)
from kernel_core.server.state import ServerState
from kernel_core.server.streaming import event, sse_response, until_disconnect

router = APIRouter()


@router.post("/v1/chat/completions", responses={200: {"model": ChatCompletionResponse}})
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    start = time.monotonic()
    state: ServerState = request.app.state.kcore
    adapter = admit(body, state)
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.bad_request("top_logprobs: requires logprobs to be true", param="top_logprobs")
    prompt = render(state, body.messages)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    try:
        params = body.sampling_params(max_tokens=body.max_completion_tokens or body.max_tokens, logprobs=logprobs)
    except ValueError as exc:
        raise errors.from_engine(exc, "messages") from None
    outputs = await until_disconnect(
        request,
        submit(state, prompt, params, adapter=adapter, priority=body.priority, prompt_param="messages", start=start),
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_stream(state, body, request_id, outputs, include_usage))
    final = await until_disconnect(request, last(outputs))
    if (error := failure(final)) is not None:
        raise error
    choices = [
        ChatChoice(
            index=c.index,
            message=AssistantMessage(content=c.text),
            logprobs=_logprobs(state, c, 0, body.top_logprobs or 0) if body.logprobs else None,
            finish_reason=c.finish_reason,
        )
        for c in final.outputs
    ]
    return ChatCompletionResponse(id=request_id, model=body.model, choices=choices, usage=usage([final]))


def render(state: ServerState, messages: list[ChatMessage]) -> str:
    """The conversation through the chat template, ending where the assistant's reply starts."""
    tokenizer = state.tokenizer
    if not tokenizer.chat_template:
        raise errors.bad_request(
            f"model `{state.settings.model_name}` has no chat template: use /v1/completions", param="messages"
        )
    try:
        conversation = [{"role": m.role, "content": m.text()} for m in messages]
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template error is about the messages sent
        raise errors.bad_request(f"messages: {exc}", param="messages") from None


async def _stream(
    state: ServerState, body: ChatCompletionRequest, request_id: str, outputs: Outputs,
    include_usage: bool,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(choices: list[ChatChunkChoice], **extra) -> str:
        return event(ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=choices, **extra))

    yield chunk([ChatChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(body.n)])
    sent_text = [0] * body.n
    sent_tokens = [0] * body.n
    final = None
    try:
        async for final in outputs:
            if (error := failure(final)) is not None:
                raise error
            choices = []
            for c in final.outputs:
                i = c.index
                if len(c.token_ids) == sent_tokens[i] and c.finish_reason is None:
                    continue
                text = c.text[sent_text[i]:]
                logprobs = _logprobs(state, c, sent_tokens[i], body.top_logprobs or 0) if body.logprobs else None
                sent_text[i], sent_tokens[i] = len(c.text), len(c.token_ids)
                choices.append(
                    ChatChunkChoice(index=i, delta=Delta(content=text), logprobs=logprobs, finish_reason=c.finish_reason)
                )
            if choices:
                yield chunk(choices)
    finally:
        await outputs.aclose()
    if include_usage and final is not None:
        yield chunk([], usage=usage([final]))


def _logprobs(state: ServerState, c: CompletionOutput, tokens_from: int, top_n: int) -> ChoiceLogprobs:
    """Each sampled token with its ``top_n`` most likely alternatives (by rank)."""
    content = []
    for token_id, position in zip(c.token_ids[tokens_from:], (c.logprobs or [])[tokens_from:]):
        chosen = position.get(token_id)
        text = token_text(state, token_id, chosen.decoded_token if chosen else None)
        top = [
            TopLogprob(token=(t := token_text(state, tid, lp.decoded_token)), logprob=lp.logprob,
                       bytes=list(t.encode("utf-8")))
            for tid, lp in sorted(position.items(), key=lambda e: e[1].rank)[:top_n]
        ]
        content.append(
            TokenLogprob(token=text, logprob=chosen.logprob if chosen else -9999.0,
                         bytes=list(text.encode("utf-8")), top_logprobs=top)
        )
    return ChoiceLogprobs(content=content)
