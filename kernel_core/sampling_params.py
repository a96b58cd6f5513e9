"""Per-request sampling parameters, validated once so the sampler and engine never re-check them.

Names, defaults and ranges follow vLLM's ``SamplingParams`` so OpenAI-style fields map onto them
one to one. The model is frozen: the engine, the sampler and ``n`` parallel samples share it.
An invalid value raises pydantic's ``ValidationError`` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: Temperatures below this are greedy, as in vLLM: dividing by them would overflow the logits.
GREEDY_TEMPERATURE = 1e-5
#: Most top-N logprobs a request may ask for (vLLM's default ``max_logprobs``).
MAX_LOGPROBS = 20
#: Most completions of one prompt (OpenAI's limit): each is a request of its own, so an
#: unbounded ``n`` would let one call queue millions of them.
MAX_N = 128


class SamplingParams(BaseModel):
    """How to pick each next token of a request, and when to stop."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    n: int = Field(default=1, ge=1, le=MAX_N, description="Independent completions of the prompt.")
    temperature: float = Field(default=1.0, ge=0.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus: smallest set reaching p.")
    top_k: int = Field(default=0, ge=-1, description="Keep the k most likely tokens; 0 or -1 = off.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, description="Drop tokens below min_p * max prob.")
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, description="Divides positive (multiplies negative) logits of seen tokens."
    )
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Once per generated token.")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Per occurrence in output.")
    seed: int | None = Field(
        default=None, ge=-(2**63), lt=2**64, description="Own random stream: same seed, same output."
    )
    stop: tuple[str, ...] = Field(default=(), description="Strings that end the output when generated.")
    stop_token_ids: tuple[int, ...] = Field(default=(), description="Token ids that end the output.")
    max_tokens: int | None = Field(default=16, ge=1, description="Output tokens at most; None = context.")
    min_tokens: int = Field(default=0, ge=0, description="No EOS or stop token before this many.")
    ignore_eos: bool = Field(default=False, description="Keep generating past EOS.")
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="Top-N logprobs per sampled token (plus its own)."
    )
    prompt_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="Top-N logprobs per prompt token (plus its own)."
    )
    skip_special_tokens: bool = Field(default=True, description="Leave special tokens out of the text.")
    include_stop_str_in_output: bool = Field(default=False, description="Keep the matched stop string.")

    @field_validator("top_k")
    @classmethod
    def _top_k_off_or_positive(cls, value: int) -> int:
        # -1 is vLLM's legacy spelling of "off"; normalise so the sampler tests one value.
        return 0 if value == -1 else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: Any) -> Any:
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text for text in value):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _token_ids_non_negative(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(token < 0 for token in value):
            raise ValueError("token ids must be non-negative")
        return value

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens_fit(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not a model validator) so the error's location names min_tokens.
        max_tokens = info.data.get("max_tokens")
        if max_tokens is not None and value > max_tokens:
            raise ValueError(f"min_tokens ({value}) must not exceed max_tokens ({max_tokens})")
        return value

    @property
    def is_greedy(self) -> bool:
        """True when the next token is the argmax: top-k/p, min-p and the seed then do nothing."""
        return self.temperature < GREEDY_TEMPERATURE
