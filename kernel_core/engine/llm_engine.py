"""The step-level engine: add requests, run steps, abort; one step = schedule, one flattened
forward, sample, detokenize, retire. A failure inside one request's processing finishes that
request with an error and nothing else."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from kernel_core.config import EngineConfig
from kernel_core.contracts.events import RequestAdded, RequestFinished, StepDone
from kernel_core.contracts.serving import NO_SLOT
from kernel_core.contracts.executor import (
    Executor, ExecutorContext, ModelStep, PromptLogprobsRequest, SampleRequest, StepRequest,
)
from kernel_core.engine.components import Components, RankWorkerFactory, build_components, worker_factory
from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.engine.group import Completion, RequestGroup
from kernel_core.engine.request import VIRTUAL_TOKEN_ID, Request, RequestStatus
from kernel_core.engine.scheduler import ScheduledStep, Scheduler
from kernel_core.engine.selection import select_executor
from kernel_core.engine.stop import StopChecker
from kernel_core.errors import AdapterLoadError, ContextLengthError, InvalidRequestError, UnknownAdapterError
from kernel_core.adapters.loading import HostAdapter
from kernel_core.adapters.registry import AdapterInfo, AdapterRegistry
from kernel_core.outputs import RequestMetrics, RequestOutput
from kernel_core.plugins import PluginManager, get_plugin_manager
from kernel_core.sampling_params import SamplingParams

log = logging.getLogger(__name__)
Prompt = str | Sequence[int]


class LLMEngine:
    """Continuous batching over the plugins chosen by an :class:`EngineConfig`."""

    def __init__(self, config: EngineConfig, manager: PluginManager | None = None) -> None:
        self.config = config
        self.plugins = manager or get_plugin_manager()
        # chosen first: a size no installed executor runs is refused before any weight loads
        registration = select_executor(self.plugins, config.distributed_executor, config.tensor_parallel_size)
        log.info("executor %r for tensor_parallel_size %d", registration.name, config.tensor_parallel_size)
        self.components: Components = build_components(config, self.plugins)
        c = self.components
        self.tokenizer = c.tokenizer
        self.max_model_len = c.max_model_len
        self.eos_token_ids = _eos_token_ids(c)
        self.adapters: AdapterRegistry | None = c.adapters
        self.scheduler = Scheduler(
            c.policy, c.cache, max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
            adapters=self.adapters,
        )
        #: The only way to the model side: every step, adapter write and virtual-token prefill.
        self.executor: Executor = c.options.create(
            registration,
            ExecutorContext(
                config, config.tensor_parallel_size, worker_factory(config, c, self.eos_token_ids),
                RankWorkerFactory(config.model_copy(update={"num_kv_blocks": c.num_blocks}), self.eos_token_ids),
                c.platform.distributed_backend(),
            ),
        )
        c.options.warn_unused()
        if self.adapters is not None:
            self.adapters.slots.writer = self.executor.write_adapter
        #: Requests finished since the last step: the workers drop their state with the next one.
        self._finished_ids: list[str] = []
        self._groups: dict[str, RequestGroup] = {}
        self._completions: dict[str, Completion] = {}
        self._changed: dict[str, RequestGroup] = {}  # groups with news for the next step()'s outputs
        self._steps = itertools.count(1)
        #: Adapter name -> (KV blocks reserved for its virtual tokens, the cache id pinning them
        #: once a request has computed them, else None).
        self._pins: dict[str, tuple[int, str | None]] = {}

    # -- submission --------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        adapter: str | None = None,
        arrival_time: float | None = None,
        timeout: float | None = None,
        clip_max_tokens: bool = True,
    ) -> None:
        """Queue a request; raises :class:`InvalidRequestError` (a ValueError) naming what is wrong.

        A ``max_tokens`` beyond what ``max_model_len`` leaves after the prompt is clipped to it
        (as vLLM's offline engine does); ``clip_max_tokens=False`` refuses it instead with
        :class:`ContextLengthError`, as OpenAI's API does and ``kcore serve`` therefore must."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"request {request_id!r}: params must be SamplingParams, not {type(params).__name__}")
        if request_id in self._groups:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self._check_stop_token_ids(request_id, params)
        if adapter is not None and self.adapters is None:
            raise InvalidRequestError(
                f"request {request_id!r}: adapter {adapter!r} given, but adapter serving is not enabled (enable_lora=True)"
            )
        virtual = 0
        if adapter is not None:
            try:  # unknown adapter: refused before anything is queued
                virtual = self.adapters.num_virtual_tokens(adapter)
            except UnknownAdapterError as exc:
                raise UnknownAdapterError(f"request {request_id!r}: {exc}") from None
        text, token_ids = self._tokenize(request_id, prompt)
        max_tokens = self._max_tokens(request_id, len(token_ids), params, clip_max_tokens, virtual)
        arrival = time.time() if arrival_time is None else arrival_time
        timeout = timeout if timeout is not None else self.config.request_timeout
        group = RequestGroup(request_id, text, token_ids, params, RequestMetrics(arrival))
        if params.prompt_logprobs is not None:
            group.prompt_logprobs = [None]
        adapter_key = self._use_adapter(request_id, adapter, params.n)
        try:
            self._build_completions(group, max_tokens, priority, adapter, adapter_key, timeout, virtual)
        except BaseException:
            for _ in range(params.n if adapter_key is not None else 0):
                self.adapters.done(adapter)  # nothing was queued: the adapter is not in use
            raise
        self._groups[request_id] = group
        for completion in group.completions:
            self._completions[completion.request.request_id] = completion
            self.scheduler.add(completion.request)
        self.plugins.notify(
            "kernel_core_request_added",
            event=RequestAdded(request_id, len(token_ids), adapter, arrival),
        )

    def _build_completions(
        self, group: RequestGroup, max_tokens: int, priority: int, adapter: str | None, adapter_key: int | None,
        timeout: float | None, virtual: int,
    ) -> None:
        """The group's ``n`` completions, each with its scheduler request, stop checker and
        detokenizer; the scheduler's prompt starts with the adapter's ``virtual`` placeholders."""
        params, token_ids, request_id = group.params, group.prompt_token_ids, group.request_id
        arrival = group.metrics.arrival_time
        for index in range(params.n):
            child_id = request_id if params.n == 1 else f"{request_id}#{index}"
            request = Request(
                child_id, [VIRTUAL_TOKEN_ID] * virtual + token_ids, max_tokens, arrival, priority=priority,
                adapter=adapter, adapter_key=adapter_key, num_virtual_tokens=virtual,
                deadline=arrival + timeout if timeout is not None else None,
                skip_prefix_cache=params.prompt_logprobs is not None,
            )
            seed = None if params.seed is None else params.seed + index
            group.completions.append(
                Completion(
                    group=group,
                    request=request,
                    index=index,
                    stop=StopChecker(params, max_tokens, self.eos_token_ids),
                    detokenizer=IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens),
                    seed=seed,
                    logprobs=[] if params.logprobs is not None else None,
                )
            )

    def _tokenize(self, request_id: str, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError(f"request {request_id!r}: the prompt is empty")
            _check_encodable(request_id, prompt)
            return prompt, self.tokenizer.encode(prompt, add_special_tokens=False)
        if not isinstance(prompt, Sequence) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise InvalidRequestError(
                f"request {request_id!r}: a prompt is a string or a list of token ids, not {type(prompt).__name__}"
            )
        if not prompt:
            raise InvalidRequestError(f"request {request_id!r}: the prompt has no token ids")
        vocab = self.components.model.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(
                f"request {request_id!r}: token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})"
            )
        return None, list(prompt)

    def _check_stop_token_ids(self, request_id: str, params: SamplingParams) -> None:
        """Stop token ids index the logits while ``min_tokens`` masks them: one outside the
        vocabulary would fail the whole step's batch, so it is refused here."""
        vocab = self.components.model.vocab_size
        bad = [t for t in params.stop_token_ids if t >= vocab]
        if bad:
            raise InvalidRequestError(
                f"request {request_id!r}: stop_token_ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})"
            )

    def _max_tokens(self, request_id: str, prompt_len: int, params: SamplingParams, clip: bool, virtual: int) -> int:
        """The request's output budget; ``virtual`` adapter tokens come before the prompt and
        take their room in ``max_model_len`` and the KV cache (``prompt_len`` excludes them)."""
        prompt = f"{prompt_len} tokens" + (f" after the adapter's {virtual} virtual tokens" if virtual else "")
        prompt_len += virtual
        label = "virtual + prompt" if virtual else "prompt"
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ContextLengthError(
                f"request {request_id!r}: the prompt has {prompt}, but max_model_len is "
                f"{self.max_model_len} ({'virtual tokens, ' if virtual else ''}prompt plus at least one output token "
                "must fit)",
                prompt_tokens=prompt_len, max_tokens=None, max_model_len=self.max_model_len,
            )
        if not clip and params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthError(
                f"request {request_id!r}: {prompt_len} {label} + {params.max_tokens} output tokens exceed "
                f"max_model_len {self.max_model_len}: lower max_tokens to at most {room}",
                prompt_tokens=prompt_len, max_tokens=params.max_tokens, max_model_len=self.max_model_len,
            )
        # The request must fit the KV pool whole: a longer one could never finish, and preempting
        # every other request would not make room for it.
        capacity = self.scheduler.capacity_tokens
        if prompt_len >= capacity:
            raise InvalidRequestError(
                f"request {request_id!r}: the {label} has {prompt_len} tokens, but the KV cache holds {capacity} "
                "(prompt plus at least one output token must fit): raise kv_cache_memory or num_kv_blocks"
            )
        if params.max_tokens is None:  # as many as fit
            return min(room, capacity - prompt_len)
        max_tokens = min(params.max_tokens, room)
        if prompt_len + max_tokens > capacity:
            raise InvalidRequestError(
                f"request {request_id!r}: {prompt_len} {label} + {params.max_tokens} output tokens exceed the KV cache "
                f"({capacity} tokens): lower max_tokens to at most {capacity - prompt_len}, or raise kv_cache_memory"
            )
        return max_tokens

    # -- adapters ----------------------------------------------------------------------------

    def _use_adapter(self, request_id: str, adapter: str | None, count: int) -> int | None:
        """Count ``count`` more users of ``adapter`` (its weights then stay in host memory) and
        return its key; an evicted adapter whose folder cannot be read again fails the request."""
        if adapter is None or self.adapters is None:
            return None
        try:
            key = self.adapters.use(adapter)
        except AdapterLoadError as exc:
            raise InvalidRequestError(f"request {request_id!r}: {exc}") from None
        for _ in range(count - 1):
            self.adapters.use(adapter)  # in host memory now: cannot fail
        return key

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT-format adapter folder of a served kind as ``name``; requests name it in ``adapter=``."""
        self.register_adapter(self._registry().prepare(name, path))

    def register_adapter(self, adapter: HostAdapter) -> None:
        """Make a prepared adapter usable under its name. An adapter with virtual tokens gets
        the full KV blocks they fill reserved (with prefix caching on) and written right here,
        between steps, so its first request already finds them; they stay pinned, never evicted
        while it is loaded. When no adapter slot or no block is free now (running requests hold
        them), the first request that computes them pins them instead. Refused, naming the
        numbers and leaving nothing behind, when the pool left after every pin could not hold
        them plus one token, or a queued request."""
        registry = self._registry()
        blocks = self._virtual_blocks(adapter.num_virtual_tokens)
        if blocks:
            self._check_pinnable(adapter.name, adapter.num_virtual_tokens, blocks)
        registry.register(adapter)
        if blocks:
            self._pins[adapter.name] = (blocks, None)
            self.scheduler.reserved_blocks += blocks
            try:
                self._write_virtual_blocks(adapter.name, blocks)
            except BaseException:
                self.unload_adapter(adapter.name)
                raise

    def unload_adapter(self, name: str) -> None:
        """Unload ``name``; refused (AdapterInUseError) while queued or running requests use it."""
        self._registry().unload(name)
        blocks, pin = self._pins.pop(name, (0, None))
        self.scheduler.reserved_blocks -= blocks
        if pin is not None:
            self.components.cache.free(pin)

    @property
    def pinned_blocks(self) -> int:
        """KV blocks held by loaded adapters' virtual tokens (never free while they are loaded)."""
        return sum(blocks for blocks, pin in self._pins.values() if pin is not None)

    def _virtual_blocks(self, virtual: int) -> int:
        """Full KV blocks ``virtual`` tokens fill: what can be pinned and shared (none without prefix caching)."""
        cache = self.components.cache
        return virtual // cache.block_size if cache.enable_prefix_caching else 0

    def _check_pinnable(self, name: str, virtual: int, blocks: int) -> None:
        cache, reserved = self.components.cache, self.scheduler.reserved_blocks
        left = (cache.num_blocks - reserved - blocks) * cache.block_size
        queued = self.scheduler.waiting + self.scheduler.running
        longest = max((r.num_prompt_tokens + r.max_tokens for r in queued), default=0)
        if left < max(virtual + 1, longest):
            raise AdapterLoadError(
                f"adapter {name!r}: its {virtual} virtual tokens would pin {blocks} KV blocks of {cache.block_size} "
                f"tokens; with the {reserved} blocks other adapters pin, the pool of {cache.num_blocks} blocks would "
                f"leave {left} tokens, fewer than {'a queued request needs' if longest > virtual else 'the virtual tokens and one output token'} "
                f"({max(virtual + 1, longest)}): raise kv_cache_memory or num_kv_blocks, or unload adapters"
            )

    def _write_virtual_blocks(self, name: str, blocks: int) -> None:
        """Compute the KV of ``name``'s first ``blocks`` full blocks of virtual tokens through
        the step path (a prefill of placeholders whose KV or embeddings the adapter's hooks
        supply), under an engine-held cache id that then pins them. Causal attention makes a
        prefix's KV independent of what follows, so every request on the adapter can share it."""
        registry, cache = self._registry(), self.components.cache
        tokens = blocks * cache.block_size
        in_slot = registry.slot_of(name) is not None
        if not (in_slot or registry.can_acquire(name)):
            return  # every slot held by running requests: the first request pins them
        pin = _pin_id(registry.key_of(name))
        if not cache.allocate(pin, tokens):
            cache.free(pin)
            return  # running requests hold the pool: the first request pins them
        request = Request(pin, [VIRTUAL_TOKEN_ID] * tokens, 0, time.time(), adapter=name,
                          adapter_key=registry.key_of(name), num_virtual_tokens=tokens)
        slot = registry.acquire(name)
        try:
            chunk = self.config.max_num_batched_tokens
            while request.num_computed_tokens < tokens:
                count = min(chunk, tokens - request.num_computed_tokens)
                start = request.num_computed_tokens
                self.executor.execute(ModelStep([
                    StepRequest(pin, request.token_slice(start, start + count), start, cache.block_table(pin), slot)
                ]))
                request.num_computed_tokens += count
        except BaseException:
            cache.free(pin)
            raise
        finally:
            registry.release(name)
        cache.commit(pin, request.prompt_token_ids, request.adapter_key)
        self._pins[name] = (blocks, pin)

    def _pin_virtual_tokens(self, requests: Sequence[Request]) -> None:
        """Pin the virtual tokens' blocks of adapters whose first request has just computed them."""
        cache = self.components.cache
        for request in requests:
            blocks, pin = self._pins.get(request.adapter or "", (0, ""))
            tokens = blocks * cache.block_size
            if pin is not None or request.num_computed_tokens < tokens:
                continue
            pin = _pin_id(request.adapter_key)
            if cache.match_prefix(pin, [VIRTUAL_TOKEN_ID] * tokens, request.adapter_key) == tokens:
                self._pins[request.adapter] = (blocks, pin)  # type: ignore[index]
            else:
                cache.free(pin)  # not all cached (cannot happen after a commit): next time

    def list_adapters(self) -> list[AdapterInfo]:
        return self._registry().info()

    def _registry(self) -> AdapterRegistry:
        if self.adapters is None:
            raise InvalidRequestError("adapter serving is not enabled: build the engine with enable_lora=True")
        return self.adapters

    # -- lifecycle ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the executor's workers; the engine runs no step after it (idempotent)."""
        self.executor.shutdown()

    def abort_request(self, request_id: str) -> bool:
        """Abort a request (all its completions) in any state; False if it is unknown or done."""
        group = self._groups.get(request_id)
        if group is None or group.finished:
            return False
        for completion in group.completions:
            if not completion.request.is_finished:
                self._finish(completion, RequestStatus.FINISHED_ABORTED)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._changed)

    def num_unfinished_requests(self) -> int:
        return sum(not g.finished for g in self._groups.values())

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the requests with news (new text or finished)."""
        started = time.perf_counter()
        self._expire(time.time())
        scheduled = self.scheduler.schedule()
        if scheduled.requests:
            self._run(scheduled)
        outputs = [group.output() for group in self._changed.values()]
        for group in self._changed.values():
            if group.finished:
                del self._groups[group.request_id]
        self._changed.clear()
        self.plugins.notify(
            "kernel_core_step_done",
            stats=StepDone(
                step=next(self._steps),
                num_running=len(self.scheduler.running),
                num_waiting=len(self.scheduler.waiting),
                num_scheduled_tokens=scheduled.num_tokens,
                num_preempted=len(scheduled.preempted),
                kv_cache_usage=self.components.cache.stats().usage,
                duration_s=time.perf_counter() - started,
            ),
        )
        return outputs

    def _run(self, scheduled: ScheduledStep) -> None:
        now = time.time()
        try:
            step, completions = self._model_step(scheduled)
            result = self.executor.execute(step)
            for request_id, entries in result.prompt_logprobs.items():
                group = self._completions[request_id].group
                group.prompt_logprobs += [e.to_dict(self._decode_token) for e in entries]  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - a failed forward fails its batch, not the engine
            log.exception("engine step failed")
            for request in scheduled.requests:
                self._finish(self._completions[request.request_id], RequestStatus.FINISHED_ERROR, f"engine step failed: {exc}")
            self.components.cache.reset_prefix_cache()  # blocks committed this step hold no KV
            return
        for request, count in zip(scheduled.requests, scheduled.num_new_tokens):
            request.num_computed_tokens += count
            metrics = self._completions[request.request_id].group.metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
        self._pin_virtual_tokens(scheduled.requests)
        for row, completion in enumerate(completions):
            self._append(completion, result.sampled_token_ids[row], result.logprobs[row])

    def _model_step(self, scheduled: ScheduledStep) -> tuple[ModelStep, list[Completion]]:
        """The step as plain data for the executor (lists the engine holds, by reference), and
        the completions it samples, in the order of its sampled token ids."""
        slots = self._adapter_slots(scheduled)
        cache = self.components.cache
        requests: list[StepRequest] = []
        completions: list[Completion] = []
        for i, (request, count) in enumerate(zip(scheduled.requests, scheduled.num_new_tokens)):
            completion = self._completions[request.request_id]
            start = request.num_computed_tokens
            sample = None
            if start + count == request.num_tokens:
                completions.append(completion)
                sample = _sample_request(completion)
            requests.append(StepRequest(
                request.request_id, request.token_slice(start, start + count), start,
                cache.block_table(request.request_id), NO_SLOT if slots is None else slots[i], sample,
                self._prompt_logprobs_request(completion, start, count),
            ))
        finished, self._finished_ids = self._finished_ids, []
        return ModelStep(requests, finished), completions

    def _adapter_slots(self, scheduled: ScheduledStep) -> list[int] | None:
        """Each scheduled request's adapter slot, after ordering the step by slot: each adapter's
        tokens then form one run, which kernels handle as slices rather than gathers."""
        if self.adapters is None:
            return None
        slots = [NO_SLOT if r.adapter is None else self.adapters.slot_of(r.adapter) for r in scheduled.requests]
        assert None not in slots, "a scheduled request's adapter holds no slot"
        order = sorted(range(len(slots)), key=slots.__getitem__)
        scheduled.requests = [scheduled.requests[i] for i in order]
        scheduled.num_new_tokens = [scheduled.num_new_tokens[i] for i in order]
        return [slots[i] for i in order]  # type: ignore[misc]

    def _prompt_logprobs_request(self, completion: Completion, computed: int, count: int) -> PromptLogprobsRequest | None:
        """The prompt positions of this step's slice whose logprobs the request asked for."""
        request, group = completion.request, completion.group
        # a virtual token predicts nothing reported: the first one reported is the prompt's second
        first = max(computed, request.num_virtual_tokens)
        end = min(computed + count, request.num_prompt_tokens - 1)
        if group.prompt_logprobs is None or completion.index != 0 or first >= end:
            return None
        return PromptLogprobsRequest(
            first - computed, request.prompt_token_ids[first + 1 : end + 1], group.params.prompt_logprobs or 0
        )

    def _append(self, completion: Completion, token_id: int, logprobs) -> None:
        """Append a sampled token and turn it into text; any failure finishes this request alone."""
        request, group = completion.request, completion.group
        request.output_token_ids.append(token_id)
        if group.metrics.first_token_time is None:
            group.metrics.first_token_time = time.time()
        self._changed[group.request_id] = group
        try:
            if completion.logprobs is not None and logprobs is not None:
                completion.logprobs.append(logprobs.to_dict(self._decode_token))
            completion.stop.append(token_id, completion.detokenizer)
        except Exception as exc:  # noqa: BLE001 - e.g. a detokenizer error: this request only
            log.exception("request %r failed while processing its output", request.request_id)
            self._finish(completion, RequestStatus.FINISHED_ERROR, f"{type(exc).__name__}: {exc}")
            return
        if completion.stop.finished:
            status = RequestStatus.FINISHED_STOPPED if completion.stop.finish_reason == "stop" else RequestStatus.FINISHED_LENGTH
            self._finish(completion, status)

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _expire(self, now: float) -> None:
        for completion in list(self._completions.values()):
            request = completion.request
            if request.deadline is not None and now >= request.deadline and not request.is_finished:
                timeout = request.deadline - request.arrival_time
                self._finish(completion, RequestStatus.FINISHED_ABORTED, f"timed out after {timeout:g} s")

    def _finish(self, completion: Completion, status: RequestStatus, error: str | None = None) -> None:
        """Every exit path ends here: the request leaves its queue and its blocks return."""
        request = completion.request
        self.scheduler.finish(request, status, error)
        self._finished_ids.append(request.request_id)
        if request.adapter is not None and self.adapters is not None:
            self.adapters.done(request.adapter)
        del self._completions[request.request_id]
        group = completion.group
        group.metrics.finished_time = time.time()
        self._changed[group.request_id] = group
        self.plugins.notify(
            "kernel_core_request_finished",
            event=RequestFinished(
                request_id=request.request_id,
                finish_reason=status.finish_reason or "",
                num_prompt_tokens=len(group.prompt_token_ids),
                num_output_tokens=len(request.output_token_ids),
                adapter=request.adapter,
                arrival_time=request.arrival_time,
                first_token_time=group.metrics.first_token_time,
                finish_time=group.metrics.finished_time,
                error=error,
            ),
        )


def _check_encodable(request_id: str, prompt: str) -> None:
    """A lone UTF-16 surrogate (``"\\ud800"``, from a bad JSON escape or a cut string) is no
    character: the tokenizer would fail with a TypeError that names nothing."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"request {request_id!r}: the prompt holds a lone surrogate {prompt[exc.start]!r} at index "
            f"{exc.start}, which is not a character (text must be valid Unicode)"
        ) from None


def _pin_id(adapter_key: int | None) -> str:
    """The cache id holding an adapter load's pinned virtual-token blocks: no request id holds a NUL."""
    return f"\0virtual-tokens:{adapter_key}"


def _sample_request(completion: Completion) -> SampleRequest:
    return SampleRequest(
        params=completion.stop.params,
        prompt_token_ids=completion.group.prompt_token_ids,  # without virtual tokens: not penalised
        output_token_ids=completion.request.output_token_ids,
        seed=completion.seed,
    )


def _eos_token_ids(c: Components) -> tuple[int, ...]:
    """EOS of the tokenizer plus those of generation_config.json (often a list)."""
    ids = {c.tokenizer.eos_token_id} if c.tokenizer.eos_token_id is not None else set()
    generation = c.folder / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return tuple(sorted(ids))
