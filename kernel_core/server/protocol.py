"""The OpenAI wire format: request bodies validated by pydantic, response bodies built from them.

Field names, defaults and ranges follow OpenAI's API reference (and vLLM's extras), so any OpenAI
client talks to the server unchanged. Types are strict (no coercion from strings or booleans; an
integer is accepted where a number is). Unknown fields are ignored, as OpenAI-compatible servers do
(clients send fields of newer API versions). Fields the engine cannot honour are refused with a
400 naming them, never silently dropped: see :data:`UNSUPPORTED`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kernel_core.sampling_params import MAX_LOGPROBS, SamplingParams

#: OpenAI's cap on ``stop`` sequences.
MAX_STOP = 4


class _Body(BaseModel):
    # strict: a JSON value of another type is refused, not coerced ("5" or true for an integer,
    # "yes" for a boolean), so what is accepted is exactly what the published schema says
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        """JSON's ``\\ud800`` escapes decode to lone UTF-16 surrogates, which no tokenizer (nor
        UTF-8) can encode: refuse them here, naming the field, instead of failing deep inside."""
        if isinstance(data, dict) and (path := lone_surrogate(data)) is not None:  # not a dict: pydantic refuses it
            field = ".".join(str(part) for part in path)
            raise PydanticCustomError(
                "lone_surrogate", "{field}: holds a lone UTF-16 surrogate, which is not valid Unicode text",
                {"field": field},
            )
        return data


def lone_surrogate(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in ``value`` (nested lists and dicts, keys included) a string holds a code point of
    the surrogate range, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # strict UTF-8 refuses exactly the surrogates
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := lone_surrogate(key, (*path, str(key)))) is not None:
                return found
            if (found := lone_surrogate(item, (*path, key))) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := lone_surrogate(item, (*path, index))) is not None:
                return found
    return None


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """What completions and chat share: OpenAI's sampling fields plus vLLM-style extras."""

    model: str
    n: int = Field(default=1, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None  # accepted for compatibility; the server keeps no per-user state
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extras (vLLM's names): not in OpenAI's schema, sent by clients through ``extra_body``.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    # Known OpenAI fields the engine cannot honour: refused when set (see ``unsupported``).
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_count(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(value)}")
        return value

    def sampling_params(self, *, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """The engine's parameters; an invalid combination raises pydantic's ValidationError, whose
        location is the field name (the same names as here)."""
        given: dict[str, Any] = dict(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )
        return SamplingParams(
            **{key: value for key, value in given.items() if value is not None},
            stop=self.stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )

    def unsupported(self) -> str | None:
        """The first field that is set but cannot be honoured, if any."""
        return "logit_bias" if self.logit_bias else None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """The prompts of a batch request, in order: one string, strings, token ids, or lists of them."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # one prompt of token ids
        return list(prompt)

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of"
        return super().unsupported()


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts other than text raise ValueError."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)  # deprecated by OpenAI, still sent by many
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.tool_choice not in (None, "none"):
            return "tool_choice"
        if self.response_format is not None and self.response_format.get("type") != "text":
            return "response_format"
        return super().unsupported()


class TokenizeRequest(_Body):
    """``POST /tokenize``: ``prompt`` as is, or ``messages`` through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class LoadAdapterRequest(_Body):
    """``POST /v1/adapters``: ``path`` is relative to ``--adapter-dir`` (or absolute inside it)."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


# -- responses ------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``: the base model (``parent`` None) or an adapter on it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kernel-core"
    root: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
