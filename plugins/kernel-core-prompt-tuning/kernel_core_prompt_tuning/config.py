"""Prompt tuning's config: PEFT's ``PromptTuningConfig`` fields and defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from kernel_core_sdk import PromptLearningConfig


class PromptTuningConfig(PromptLearningConfig):
    """``prompt_tuning_init``: ``RANDOM`` (an ``nn.Embedding``'s normal init), ``SAMPLE_VOCAB``
    (embeddings of random vocabulary tokens) or ``TEXT`` (embeddings of
    ``prompt_tuning_init_text``'s tokens, repeated or cut to ``num_virtual_tokens``, tokenized by
    ``tokenizer_name_or_path`` with ``tokenizer_kwargs``), as PEFT."""

    prompt_tuning_init: Literal["RANDOM", "SAMPLE_VOCAB", "TEXT"] = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _text_init_needs_text_and_tokenizer(self) -> PromptTuningConfig:
        """PEFT's rules: TEXT init needs the text and the tokenizer; tokenizer_kwargs only with it."""
        if self.prompt_tuning_init == "TEXT":
            missing = [name for name in ("prompt_tuning_init_text", "tokenizer_name_or_path") if not getattr(self, name)]
            if missing:
                raise ValueError(f"prompt_tuning_init 'TEXT' needs {' and '.join(missing)}")
        elif self.tokenizer_kwargs:
            raise ValueError("tokenizer_kwargs is only used with prompt_tuning_init 'TEXT'")
        return self
