"""The executor contract: how the engine reaches the model side (plugin API 1.7).

The engine schedules, keeps the KV block tables and adapter bookkeeping, and turns tokens into
text; an :class:`Executor` owns the *workers*, each a model runner holding the model (or its
shard), the attention backend, the KV cache tensors and the adapter slots. The engine talks to
them only through the executor, with plain data: a :class:`ModelStep` in, a :class:`StepResult`
out. Sampling happens on the worker side (rank 0 answers), so logits never cross a process
boundary; an executor that runs workers in other processes or on other machines serialises or
broadcasts these records as they are (they hold only dataclasses, lists, scalars and
``SamplingParams``). The in-process executor passes them by reference and
copies nothing.

This mirrors vLLM's Executor / Worker split: one executor per engine, one worker per rank.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kernel_core.contracts.serving import NO_SLOT

if TYPE_CHECKING:
    from kernel_core.config import EngineConfig
    from kernel_core.contracts.serving import ServedAdapter
    from kernel_core.runner.logprobs import TokenLogprobs
    from kernel_core.sampling_params import SamplingParams


@dataclass(slots=True)
class SampleRequest:
    """What the sampler reads of one request whose scheduled slice ends its known tokens."""

    params: SamplingParams
    #: The prompt without virtual tokens (they are never penalised).
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    #: The request's own seed (``params.seed + index`` for the index-th of ``n``); None: the
    #: worker's global stream. The worker keeps one generator per seeded request until the
    #: request appears in :attr:`ModelStep.finished_request_ids`.
    seed: int | None = None


@dataclass(slots=True)
class PromptLogprobsRequest:
    """Logprobs of prompt tokens computed by this step: rows ``first .. first + len(targets)``
    of the request's slice predict ``target_token_ids``."""

    first: int
    target_token_ids: list[int]
    num_top: int


@dataclass(slots=True)
class StepRequest:
    """One request's part of a step: its scheduled tokens and where their KV goes."""

    request_id: str
    #: The scheduled slice of the request's tokens (virtual placeholders included).
    token_ids: list[int]
    #: Position of ``token_ids[0]`` (tokens already computed before this step).
    start: int
    block_table: list[int]
    #: The adapter slot it runs on (``NO_SLOT``: the base model).
    adapter_slot: int = NO_SLOT
    #: Set when the step samples this request's next token.
    sample: SampleRequest | None = None
    prompt_logprobs: PromptLogprobsRequest | None = None


@dataclass(slots=True)
class ModelStep:
    """One forward over every scheduled request, flattened in this order."""

    requests: list[StepRequest]
    #: Requests that finished since the last step: workers drop their per-request state.
    finished_request_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StepResult:
    """What a step returns, in the order of the step's sampled requests."""

    sampled_token_ids: list[int]
    #: Per sampled request: None unless its ``params.logprobs`` is set.
    logprobs: list[TokenLogprobs | None]
    #: Request id -> the logprobs of each prompt position asked for.
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutorContext:
    """What the engine decided, for the executor to build its workers from."""

    config: EngineConfig
    tensor_parallel_size: int
    #: The worker of rank 0 over what the engine loaded in its own process (its model shard,
    #: attention backend, adapter servings): the driver an executor keeps in the engine's process.
    create_worker: Callable[[int, int], Worker]
    #: Builds the worker of any ``rank`` from the engine's settings alone, loading that rank's
    #: shard, in the process that calls it. Picklable: an executor sends it to the process (or
    #: machine) that runs the rank, after starting the ``torch.distributed`` group there.
    build_worker: Callable[[int, int], Worker]
    #: The ``torch.distributed`` backend for the ranks' group (``Platform.distributed_backend()``:
    #: gloo on the CPU, NCCL on CUDA/ROCm).
    distributed_backend: str = "gloo"


class Worker(ABC):
    """The model side of one rank: model, attention backend, KV caches, adapter slots, sampler."""

    @abstractmethod
    def execute(self, step: ModelStep) -> StepResult | None:
        """Run ``step``; the driver (rank 0) returns its result, other ranks may return None."""

    @abstractmethod
    def write_adapter(self, slot: int, kind: str, adapter: ServedAdapter) -> None:
        """Place a converted adapter of ``kind`` (its ``peft_type``) in adapter slot ``slot``."""


class Executor(ABC):
    """Runs the engine's steps on ``tensor_parallel_size`` workers.

    Every method takes and returns plain data, so one that runs workers elsewhere can send it
    as is. Methods after :meth:`shutdown` raise :class:`~kernel_core.errors.KernelCoreError`.
    """

    def __init__(self, context: ExecutorContext) -> None:
        """Build (or start) every worker; raise naming what failed, leaving nothing running."""
        self.context = context

    @abstractmethod
    def execute(self, step: ModelStep) -> StepResult:
        """Run one step on every worker; the driver worker's result."""

    @abstractmethod
    def write_adapter(self, slot: int, kind: str, adapter: ServedAdapter) -> None:
        """Place a converted adapter in ``slot`` on every worker (between steps)."""

    @abstractmethod
    def check_health(self) -> None:
        """Raise :class:`~kernel_core.errors.KernelCoreError` naming the worker that is gone."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop every worker and free what they hold; a second call does nothing."""
