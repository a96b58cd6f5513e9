"""A user's request as the engine tracks it: ``n`` completions of one prompt, each a scheduled
sequence with its own detokenizer, stop checker and random stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.engine.request import Request
from kernel_core.engine.stop import StopChecker
from kernel_core.outputs import CompletionOutput, PositionLogprobs, RequestMetrics, RequestOutput
from kernel_core.sampling_params import SamplingParams


@dataclass(eq=False)
class Completion:
    """One completion: the sequence the scheduler runs plus everything that turns its tokens into text."""

    group: RequestGroup
    request: Request
    index: int
    stop: StopChecker
    detokenizer: IncrementalDetokenizer
    #: The completion's own sampling seed (``params.seed + index``); its generator lives on the worker.
    seed: int | None
    logprobs: list[PositionLogprobs] | None

    def output(self) -> CompletionOutput:
        status = self.request.status
        return CompletionOutput(
            index=self.index,
            text=self.stop.text,
            token_ids=list(self.request.output_token_ids),
            finish_reason=status.finish_reason,  # type: ignore[arg-type]
            stop_reason=self.stop.stop_reason if status.finished else None,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            error=self.request.error,
        )


@dataclass(eq=False)
class RequestGroup:
    """The ``n`` completions of one submitted prompt, reported together as one RequestOutput."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    completions: list[Completion] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] | None = None

    @property
    def finished(self) -> bool:
        return all(c.request.is_finished for c in self.completions)

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=list(self.prompt_logprobs) if self.prompt_logprobs is not None else None,
            outputs=[c.output() for c in self.completions],
            finished=self.finished,
            metrics=self.metrics,
        )
