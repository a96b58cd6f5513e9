"""The model side of one rank: a :class:`~kernel_core.runner.model_runner.ModelRunner` (model,
attention backend, KV caches), the adapter slots on its device and the sampler. It turns a
:class:`~kernel_core.contracts.executor.ModelStep` into a
:class:`~kernel_core.contracts.executor.StepResult`; logits stay here."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from kernel_core.adapters.slots import AdapterSlots
from kernel_core.contracts.attention import AttentionBackend
from kernel_core.contracts.executor import ModelStep, StepRequest, StepResult, Worker
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.contracts.serving import AdapterServing, ServedAdapter
from kernel_core.runner.logprobs import TokenLogprobs, prompt_logprobs
from kernel_core.runner.model_runner import ModelRunner
from kernel_core.runner.sampler import Sampler, SamplingRow, make_generator


class ModelWorker(Worker):
    """One rank's model runner, adapter slots, sampler and the seeded requests' generators."""

    def __init__(
        self,
        model: ModelArchitecture,
        attention: AttentionBackend,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        eos_token_ids: Collection[int],
        seed: int,
        servings: Mapping[str, AdapterServing] | None = None,
        max_slots: int = 0,
    ) -> None:
        self.slots = AdapterSlots(servings, max_slots=max_slots) if servings is not None else None
        self.runner = ModelRunner(
            model, attention, num_blocks=num_blocks, block_size=block_size, dtype=dtype, device=device,
            adapters=self.slots,
        )
        self.sampler = Sampler(eos_token_ids)
        self.device = device
        #: Seeded requests' private streams, from their first sampled token until they finish.
        self._generators: dict[str, torch.Generator] = {}
        torch.manual_seed(seed)  # the stream of unseeded sampling

    @torch.inference_mode()
    def execute(self, step: ModelStep) -> StepResult | None:
        """The step's result; None on a tensor-parallel rank other than 0, which computes its
        shard of every layer and of the logits, but samples nothing (rank 0 answers)."""
        for request_id in step.finished_request_ids:
            self._generators.pop(request_id, None)
        inputs = self.runner.prepare(step.requests)
        hidden = self.runner.execute(inputs)
        result = StepResult([], [], self._prompt_logprobs(step.requests, hidden))
        sampling = [i for i, r in enumerate(step.requests) if r.sample is not None]
        if sampling:
            logits = self.runner.logits(hidden, inputs.last_rows[sampling])
            if logits is None:
                return None
            sampled = self.sampler(logits, [self._sampling_row(step.requests[i]) for i in sampling])
            result.sampled_token_ids, result.logprobs = sampled.token_ids, sampled.logprobs
        return result

    def write_adapter(self, slot: int, kind: str, adapter: ServedAdapter) -> None:
        assert self.slots is not None, "an adapter written to a worker built without adapter serving"
        self.slots.write(slot, kind, adapter)

    def _sampling_row(self, request: StepRequest) -> SamplingRow:
        sample = request.sample
        assert sample is not None
        generator = None
        if sample.seed is not None:
            generator = self._generators.get(request.request_id)
            if generator is None:
                generator = self._generators[request.request_id] = make_generator(sample.seed, self.device)
        return SamplingRow(sample.params, sample.prompt_token_ids, sample.output_token_ids, generator)

    def _prompt_logprobs(self, requests: Sequence[StepRequest], hidden: torch.Tensor) -> dict[str, list[TokenLogprobs]]:
        """Logprobs of the prompt tokens this step computed, for the requests asking for them."""
        found: dict[str, list[TokenLogprobs]] = {}
        start = 0
        for request in requests:
            asked = request.prompt_logprobs
            if asked is not None:
                first = start + asked.first
                rows = torch.arange(first, first + len(asked.target_token_ids), device=hidden.device)
                logits = self.runner.logits(hidden, rows)  # every rank takes part; rank 0 gets them
                if logits is not None:
                    found[request.request_id] = prompt_logprobs(logits, asked.target_token_ids, asked.num_top)
            start += len(request.token_ids)
        return found
