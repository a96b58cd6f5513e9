"""``merge``: several requests' cumulative outputs into one stream, without piling up behind a
slow consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kernel_core.server.streaming import merge


async def _counting(prefix: str, count: int) -> AsyncIterator[str]:
    """Cumulative items ``prefix1 .. prefixN`` as fast as the event loop allows."""
    for i in range(1, count + 1):
        await asyncio.sleep(0)
        yield f"{prefix}{i}"


async def _consume(pause: float) -> list[tuple[int, str]]:
    items = []
    async for item in merge([_counting("a", 50), _counting("b", 30)]):
        items.append(item)
        await asyncio.sleep(pause)
    return items


def test_a_slow_consumer_gets_each_streams_newest_item_and_always_its_last():
    items = asyncio.run(_consume(0.01))
    for index, prefix, count in ((0, "a", 50), (1, "b", 30)):
        seen = [int(text[1:]) for i, text in items if i == index]
        assert seen == sorted(seen) and seen[-1] == count  # in order, ending with the last
        assert len(seen) < count  # intermediate items were skipped, not queued
    assert len(items) < 80


def test_a_failing_stream_raises_and_closes_the_others():
    closed = []

    async def failing() -> AsyncIterator[str]:
        yield "x1"
        raise ValueError("boom")

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0)
                yield "y"
        finally:
            closed.append(True)

    async def main() -> None:
        async for _ in merge([failing(), endless()]):
            pass

    try:
        asyncio.run(main())
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the failure was swallowed")
    assert closed == [True]
