"""OpenAI request bodies onto the engine's SamplingParams, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kernel_core.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest


def test_prompt_shapes():
    assert CompletionRequest(model="m", prompt="hi").prompts() == ["hi"]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(model="m", prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(model="m", prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


def test_openai_fields_and_extras_reach_sampling_params():
    body = CompletionRequest(
        model="m", prompt="x", n=2, temperature=0.5, top_p=0.9, stop="END", seed=3, presence_penalty=0.1,
        frequency_penalty=0.2, top_k=5, min_p=0.05, repetition_penalty=1.1, ignore_eos=True, min_tokens=1,
        stop_token_ids=[7], user="u", priority=4,
    )
    params = body.sampling_params(max_tokens=body.max_tokens, logprobs=2)
    assert (params.n, params.temperature, params.top_p, params.stop, params.seed) == (2, 0.5, 0.9, ("END",), 3)
    assert (params.presence_penalty, params.frequency_penalty, params.top_k, params.min_p) == (0.1, 0.2, 5, 0.05)
    assert (params.repetition_penalty, params.ignore_eos, params.min_tokens, params.stop_token_ids) == (1.1, True, 1, (7,))
    assert (params.max_tokens, params.logprobs) == (16, 2)  # OpenAI's completions default


def test_unset_fields_keep_the_engines_defaults_and_chat_has_no_length_cap():
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    params = chat.sampling_params(max_tokens=chat.max_completion_tokens or chat.max_tokens, logprobs=None)
    assert params.temperature == 1.0 and params.top_p == 1.0 and params.max_tokens is None


def test_what_cannot_be_honoured_is_named():
    assert CompletionRequest(model="m", prompt="x", echo=True).unsupported() == "echo"
    assert CompletionRequest(model="m", prompt="x", best_of=3).unsupported() == "best_of"
    assert CompletionRequest(model="m", prompt="x", best_of=1).unsupported() is None
    assert CompletionRequest(model="m", prompt="x", logit_bias={"1": 1.0}).unsupported() == "logit_bias"
    chat = dict(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ChatCompletionRequest(**chat, tools=[{"type": "function"}]).unsupported() == "tools"
    assert ChatCompletionRequest(**chat, response_format={"type": "json_object"}).unsupported() == "response_format"
    assert ChatCompletionRequest(**chat, response_format={"type": "text"}, tool_choice="none").unsupported() is None


def test_field_limits():
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", stop=["1", "2", "3", "4", "5"])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[])
    assert CompletionRequest(model="m", prompt="x", future_field=1).prompts() == ["x"]  # unknown fields ignored


def test_message_content_parts():
    assert ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]).text() == "ab"
    assert ChatMessage(role="assistant", content=None).text() == ""
    with pytest.raises(ValueError, match="image_url"):
        ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}]).text()
