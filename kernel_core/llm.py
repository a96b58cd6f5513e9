"""``LLM``: offline batched generation in one call, the way vLLM users expect it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine, Prompt
from kernel_core.errors import InvalidRequestError
from kernel_core.adapters.registry import AdapterInfo
from kernel_core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from kernel_core.sampling_params import SamplingParams

Message = dict[str, Any]


class LLM:
    """``LLM(model="smollm2-135m-instruct", **engine_config)``; see :class:`EngineConfig`."""

    def __init__(self, model: str, **engine_config: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_config))
        self._ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priority: int | Sequence[int] = 0,
        adapter: str | None | Sequence[str | None] = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Complete every prompt (text or token ids), in input order.

        A prompt the engine refuses (e.g. longer than the context) gets an output with
        ``finish_reason == "error"`` and the message; the others run normally. ``adapter`` names
        a loaded adapter for every prompt, or gives one (or None, the base model) per prompt.
        """
        batch = _as_batch(prompts)
        params_list = _per_prompt(params or SamplingParams(), len(batch), SamplingParams, "params")
        priorities = _per_prompt(priority, len(batch), int, "priority")
        adapters = [adapter] * len(batch) if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(adapters) != len(batch):
            raise ValueError(f"adapter: {len(adapters)} values for {len(batch)} prompts")
        ids = [str(next(self._ids)) for _ in batch]
        results: dict[str, RequestOutput] = {}
        for request_id, prompt, p, prio, name in zip(ids, batch, params_list, priorities, adapters):
            try:
                self.engine.add_request(request_id, prompt, p, priority=prio, adapter=name)
            except InvalidRequestError as exc:
                results[request_id] = _refused(request_id, prompt, p, str(exc))
        with tqdm(total=len(batch), desc="Generating", unit="req", disable=not use_tqdm) as bar:
            bar.update(len(results))
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        results[output.request_id] = output
                        bar.update()
        return [results[request_id] for request_id in ids]

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT-format adapter folder of a served kind as ``name`` (needs ``enable_lora=True``)."""
        self.engine.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self.engine.unload_adapter(name)

    def list_adapters(self) -> list[AdapterInfo]:
        return self.engine.list_adapters()

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        **kwargs: Any,
    ) -> list[RequestOutput]:
        """Generate a reply to each conversation, formatted by the tokenizer's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.engine.tokenizer
        if not tokenizer.chat_template:
            raise InvalidRequestError("the model's tokenizer has no chat template: use generate()")
        prompts = [
            tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        return self.generate(prompts, params, **kwargs)


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (a string or a list of token ids) or a list of them, as a list."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise TypeError(f"prompts must be a string, a list of token ids, or a list of those, not {type(prompts).__name__}")
    return list(prompts)


def _per_prompt(value: Any, count: int, kind: type, name: str) -> list[Any]:
    if isinstance(value, kind):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name}: {len(values)} values for {count} prompts")
    return values


def _refused(request_id: str, prompt: Prompt, params: SamplingParams, error: str) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=[] if isinstance(prompt, str) else list(prompt),
        prompt_logprobs=None,
        outputs=[CompletionOutput(index=i, text="", token_ids=[], finish_reason="error", error=error) for i in range(params.n)],
        finished=True,
        metrics=RequestMetrics(arrival_time=0.0),
    )
