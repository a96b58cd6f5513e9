"""``AsyncLLMEngine``: the step-level engine behind asyncio, for servers.

:class:`LLMEngine` is not thread-safe and its steps are long, so one worker thread owns it: the
thread runs the steps (torch releases the GIL in its kernels, so the event loop stays responsive)
and applies, between two steps, the adds and aborts the event loop queued. Each step's outputs go
back to the event loop with ``call_soon_threadsafe``, into one :class:`Mailbox` per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kernel_core.engine.llm_engine import LLMEngine, Prompt
from kernel_core.adapters.registry import AdapterInfo
from kernel_core.errors import InvalidRequestError, KernelCoreError
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

log = logging.getLogger(__name__)
#: Work for the worker thread: a function of the engine, run between two steps.
Command = Callable[[LLMEngine], Any]


class EngineNotRunningError(KernelCoreError, RuntimeError):
    """The engine was not started, is shutting down, or its worker thread failed."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot the worker publishes after every step, so readers never touch the engine."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int


class Mailbox:
    """A request's pending output for its consumer: the newest one only.

    Outputs are cumulative (each holds all tokens so far), so a consumer that reads slower than
    the engine produces (an HTTP client on a slow link) loses nothing by getting only the newest,
    and what is held per request stays one output instead of a queue of ever longer copies. A
    failure, once posted, is never replaced: the consumer must see it.
    """

    def __init__(self) -> None:
        self._item: RequestOutput | BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if not isinstance(self._item, BaseException):
            self._item = item
            self._ready.set()

    async def get(self) -> RequestOutput | BaseException:
        await self._ready.wait()
        item, self._item = self._item, None
        self._ready.clear()
        assert item is not None
        return item


class AsyncLLMEngine:
    """Streams each request's outputs to asyncio while one thread steps the engine for all of them.

    Use ``async with AsyncLLMEngine(engine):`` (or :meth:`start` / :meth:`shutdown`) inside the
    event loop that consumes the outputs.
    """

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._wakeup = threading.Condition()
        self._commands: list[tuple[Command, concurrent.futures.Future[Any]]] = []  # under _wakeup
        self._stopping = False  # under _wakeup
        self._closed = False  # under _wakeup: the worker is gone, commands are refused
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker_done: asyncio.Future[None] | None = None
        self._streams: dict[str, Mailbox] = {}
        self._idle = asyncio.Event()  # set while no stream is open
        self._idle.set()
        self._accepting = False
        self._stats = self._read_stats()
        #: Why the worker thread died, if it did.
        self.error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; call it from the event loop that will consume the outputs."""
        if self._thread is not None:
            raise EngineNotRunningError("the engine was already started; an engine starts once")
        self._loop = asyncio.get_running_loop()
        self._worker_done = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name="kcore-engine", daemon=True)
        self._accepting = True
        self._thread.start()

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting requests, let in-flight ones finish for up to ``timeout`` seconds, abort
        the rest (their streams end with ``finish_reason == "abort"``), then stop the worker."""
        if self._thread is None or self._worker_done is None:
            return
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            for request_id in list(self._streams):
                self._abort_nowait(request_id)
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        await asyncio.shield(self._worker_done)

    async def __aenter__(self) -> AsyncLLMEngine:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown(timeout=0.0 if exc_type is not None else 30.0)

    @property
    def is_running(self) -> bool:
        """True while requests are accepted and the worker is alive: what a health check reports."""
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> EngineStats:
        """Counters as of the latest step, safe to read from any thread."""
        return self._stats

    # -- requests ----------------------------------------------------------------------------

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        timeout: float | None = None,
        adapter: str | None = None,
        clip_max_tokens: bool = True,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative output after steps with news; the last is finished. A
        consumer slower than the engine skips intermediate outputs (see :class:`Mailbox`).

        ``adapter`` names a loaded adapter (None: the base model); ``clip_max_tokens`` is
        :meth:`LLMEngine.add_request`'s. Bad input, an unknown
        adapter included, raises :class:`InvalidRequestError` from the first ``__anext__``.
        Leaving the loop early or cancelling the consuming task aborts the request, freeing its
        KV blocks.
        """
        self._check_accepting()
        request_id = uuid.uuid4().hex if request_id is None else request_id
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        mailbox = Mailbox()
        self._streams[request_id] = mailbox
        self._idle.clear()
        finished = False
        try:
            add = self._submit(
                lambda engine: engine.add_request(
                    request_id, prompt, params, priority=priority, timeout=timeout, adapter=adapter,
                    clip_max_tokens=clip_max_tokens,
                )
            )
            await asyncio.wrap_future(add)
            while not finished:
                item = await mailbox.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            del self._streams[request_id]
            if not self._streams:
                self._idle.set()
            if not finished:
                self._abort_nowait(request_id)

    async def abort(self, request_id: str) -> bool:
        """Abort a request in any state; False if it is unknown, already done, or the engine stopped.

        Its stream, if still consumed, ends with ``finish_reason == "abort"``.
        """
        try:
            return await asyncio.wrap_future(self._submit(lambda engine: engine.abort_request(request_id)))
        except EngineNotRunningError:
            return False

    # -- adapters ----------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT-format adapter folder as ``name`` without pausing running requests: the read
        and conversion run in a thread of their own, and only the registration (a few dict
        updates) waits for the worker, between two steps. Raises
        :class:`~kernel_core.errors.AdapterLoadError` for a folder the serving path refuses."""
        registry = self.engine.adapters
        if registry is None:
            raise InvalidRequestError("adapter serving is not enabled: build the engine with enable_lora=True")
        adapter = await asyncio.to_thread(registry.prepare, name, path)
        await self._call(lambda engine: engine.register_adapter(adapter))

    async def unload_adapter(self, name: str) -> None:
        """Unload ``name``; :class:`~kernel_core.errors.AdapterInUseError` while queued or
        running requests use it."""
        await self._call(lambda engine: engine.unload_adapter(name))

    async def list_adapters(self) -> list[AdapterInfo]:
        return await self._call(lambda engine: engine.list_adapters())

    async def _call(self, command: Command) -> Any:
        """Run ``command`` on the worker between two steps; before :meth:`start`, right here
        (nothing steps the engine yet, e.g. while a server loads its adapters)."""
        if self._thread is None:
            return command(self.engine)
        return await asyncio.wrap_future(self._submit(command))

    def _abort_nowait(self, request_id: str) -> None:
        """Queue an abort without waiting for it: callable from ``finally`` while cancelled."""
        self._submit(lambda engine: engine.abort_request(request_id))

    def _check_accepting(self) -> None:
        if self.error is not None:
            raise EngineNotRunningError(f"the engine failed: {self.error}")
        if not self._accepting:
            raise EngineNotRunningError("the engine is not running: start it first, or it is shutting down")

    # -- the worker thread and its hand-offs ---------------------------------------------------

    def _submit(self, command: Command) -> concurrent.futures.Future[Any]:
        """Queue a command for the worker; its future holds the result or the exception."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._wakeup:
            if self._closed:
                future.set_exception(EngineNotRunningError("the engine is stopped"))
            else:
                self._commands.append((command, future))
                self._wakeup.notify()
        return future

    def _work(self) -> None:
        """Apply queued commands, step while there is work, sleep otherwise; exit once stopping
        and nothing is left. Runs in the worker thread, the only one that touches the engine."""
        try:
            while True:
                with self._wakeup:
                    while not (self._commands or self._stopping or self.engine.has_unfinished_requests()):
                        self._wakeup.wait()
                    commands, self._commands = self._commands, []
                    stopping = self._stopping
                for command, future in commands:
                    if future.set_running_or_notify_cancel():  # False: the caller gave up waiting
                        try:
                            future.set_result(command(self.engine))
                        except Exception as exc:  # noqa: BLE001 - e.g. InvalidRequestError, for the caller
                            future.set_exception(exc)
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._stats = self._read_stats()  # before the outputs: readers see it as fresh
                    if outputs:
                        self._post(self._deliver, outputs)
                elif stopping and not commands:
                    return
        except BaseException as exc:  # noqa: BLE001 - a bug in a step: fail every stream, not silently
            log.exception("the engine's worker thread failed")
            self._post(self._fail, exc)
        finally:
            with self._wakeup:
                self._closed = True
                for _, future in self._commands:
                    if future.set_running_or_notify_cancel():
                        future.set_exception(EngineNotRunningError("the engine stopped"))
                self._commands.clear()
            self._post(self._worker_done.set_result, None)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the event loop; a closed loop has no one left to tell."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            with self._wakeup:
                self._stopping = True

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            mailbox = self._streams.get(output.request_id)
            if mailbox is not None:  # None: its consumer left, and its abort is queued
                mailbox.put(output)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._accepting = False
        for mailbox in self._streams.values():
            mailbox.put(EngineNotRunningError(f"the engine failed: {exc}"))

    def _read_stats(self) -> EngineStats:
        scheduler = self.engine.scheduler
        cache = self.engine.components.cache.stats()
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_free_blocks=cache.num_free_blocks,
            num_blocks=cache.num_blocks,
            kv_cache_usage=cache.usage,
            prefix_cache_hit_rate=cache.hit_rate,
            num_preemptions=scheduler.num_preemptions,
        )
