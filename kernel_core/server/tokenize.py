"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's routes): the served model's tokenizer, so a
client can count tokens or build token-id prompts without loading it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kernel_core.server import errors
from kernel_core.server.chat import render
from kernel_core.server.protocol import DetokenizeRequest, TokenizeRequest
from kernel_core.server.state import ServerState

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    state: ServerState = request.app.state.kcore
    if body.model is not None:
        state.resolve_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise errors.bad_request("give exactly one of `prompt` and `messages`", param="prompt")
    if body.messages is not None:
        text = render(state, body.messages) if body.add_generation_prompt else _render_closed(state, body)
        tokens = state.tokenizer.encode(text, add_special_tokens=False)
    else:
        tokens = state.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return {"count": len(tokens), "max_model_len": state.engine.engine.max_model_len, "tokens": tokens}


def _render_closed(state: ServerState, body: TokenizeRequest) -> str:
    try:
        conversation = [{"role": m.role, "content": m.text()} for m in body.messages]
        return state.tokenizer.apply_chat_template(conversation, add_generation_prompt=False, tokenize=False)
    except Exception as exc:  # noqa: BLE001
        raise errors.bad_request(f"messages: {exc}", param="messages") from None


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    state: ServerState = request.app.state.kcore
    if body.model is not None:
        state.resolve_model(body.model)
    vocab = len(state.tokenizer)
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise errors.bad_request(f"tokens: ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}
