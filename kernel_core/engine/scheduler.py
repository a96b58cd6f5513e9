"""The scheduling mechanism: one token budget per step, continuous batching, chunked prefill,
preemption by recompute. The policy plugin decides the order and the victims; the cache manager
plugin does the block bookkeeping.

There are no prefill and decode phases: each request advances ``num_computed_tokens`` towards
``num_tokens``, so a long prompt is simply split across steps and decodes of other requests ride
along in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernel_core.contracts.cache import CacheManager
from kernel_core.contracts.scheduler import SchedulerPolicy
from kernel_core.engine.request import Request, RequestStatus
from kernel_core.adapters.registry import AdapterRegistry


@dataclass
class ScheduledStep:
    """What one step computes: for each request, how many of its next tokens."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def add(self, request: Request, num_new_tokens: int) -> None:
        self.requests.append(request)
        self.num_new_tokens.append(num_new_tokens)



class Scheduler:
    """Owns the waiting and running queues and every request's KV blocks."""

    def __init__(
        self,
        policy: SchedulerPolicy,
        cache: CacheManager,
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        adapters: AdapterRegistry | None = None,
    ) -> None:
        self.policy = policy
        self.adapters = adapters
        self.cache = cache
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        #: Blocks loaded adapters pin for their virtual tokens (the engine's): out of every request's reach.
        self.reserved_blocks = 0
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0  # since start, for metrics
        #: Free blocks when the head of the waiting queue last failed to fit: until more are free
        #: (or the queue changes) retrying would only repeat the prefix lookup and fail again.
        self._retry_above: int | None = None

    @property
    def capacity_tokens(self) -> int:
        """Most tokens one request can ever hold: the pool less the blocks adapters pin."""
        return (self.cache.num_blocks - self.reserved_blocks) * self.cache.block_size

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        self._retry_above = None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        """Pick this step's work: running requests first (preempting on block shortage), then
        waiting ones while budget, sequence slots and blocks last."""
        step = ScheduledStep()
        budget = self.max_num_batched_tokens
        for request in self.policy.order(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:
                continue
            if self._allocate_or_preempt(request, num_new, step):
                step.add(request, num_new)
                budget -= num_new
                self._commit(request, num_new)
        budget = self.max_num_batched_tokens - step.num_tokens
        if not step.preempted:
            self._admit_waiting(step, budget)
        return step

    def _allocate_or_preempt(self, request: Request, num_new: int, step: ScheduledStep) -> bool:
        """Grow ``request``'s blocks, preempting the policy's victims until they fit.

        Victims come only from requests not yet scheduled this step (``request`` included):
        a scheduled request has committed blocks whose KV this step is about to write.
        """
        while not self.cache.allocate(request.request_id, request.num_computed_tokens + num_new):
            victim = self.policy.pick_victim([r for r in self.running if r not in step.requests])
            self.preempt(victim)
            step.preempted.append(victim)
            if victim is request:
                return False
        return True

    def _admit_waiting(self, step: ScheduledStep, budget: int) -> None:
        if self._retry_above is not None and self.cache.stats().num_free_blocks <= self._retry_above:
            return
        self._retry_above = None
        slot_blocked = False
        for request in self.policy.order(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            if request.adapter is not None and self.adapters is not None:
                # An adapter already in a slot takes more requests. One that needs a slot waits
                # when none is free, and once one waits, later requests needing a slot wait
                # behind it: freed slots go in arrival order, not to whoever asks next.
                in_slot = self.adapters.slot_of(request.adapter) is not None
                if not in_slot and (slot_blocked or not self.adapters.can_acquire(request.adapter)):
                    slot_blocked = True
                    continue
            if self.cache.enable_prefix_caching and not request.skip_prefix_cache:
                # Never the last token: the step must compute at least one to get logits.
                request.num_computed_tokens = self.cache.match_prefix(
                    request.request_id, request.all_token_ids[:-1], request.adapter_key
                )
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self.cache.allocate(request.request_id, request.num_computed_tokens + num_new):
                self.cache.free(request.request_id)
                request.num_computed_tokens = 0
                self._retry_above = self.cache.stats().num_free_blocks
                return  # head of line waits for blocks; order is kept
            if request.adapter is not None and self.adapters is not None:
                self.adapters.acquire(request.adapter)
            self.waiting.remove(request)
            self.running.append(request)
            request.transition(RequestStatus.RUNNING)
            step.add(request, num_new)
            budget -= num_new
            self._commit(request, num_new)

    def _commit(self, request: Request, num_new: int) -> None:
        if self.cache.enable_prefix_caching:
            end = request.num_computed_tokens + num_new
            self.cache.commit(request.request_id, request.token_slice(0, end), request.adapter_key)

    def preempt(self, request: Request) -> None:
        """Free a running request's blocks; it waits to be recomputed from scratch."""
        self.cache.free(request.request_id)
        self._release_slot(request)
        self.running.remove(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        request.transition(RequestStatus.PREEMPTED)
        self.waiting.append(request)

    def finish(self, request: Request, status: RequestStatus, error: str | None = None) -> None:
        """Retire ``request`` from whichever queue holds it and free its blocks: every exit path."""
        request.transition(status)
        request.error = error
        self.cache.free(request.request_id)
        if request in self.running:
            self._release_slot(request)
        for queue in (self.running, self.waiting):
            if request in queue:
                queue.remove(request)

    def _release_slot(self, request: Request) -> None:
        """A running request leaves the running queue: its adapter slot is held by one fewer."""
        if request.adapter is not None and self.adapters is not None:
            self.adapters.release(request.adapter)
