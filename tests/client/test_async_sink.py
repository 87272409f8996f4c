"""AsyncSink (client/_async_sink.py): iteration, filters, idle timeout, closing; and the
pieces of a request/response service put together by hand (AsyncSource, AsyncSink,
AsyncMatcher). Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError
from torchstream.client import AsyncMatcher, AsyncSink, AsyncSource, Result

TIMEOUT = 10.0  # seconds; only reached when something is broken


def test_filters_and_end_of_stream(echo, jpeg: bytes) -> None:
    module = echo(subscriptions=2)

    async def main() -> None:
        async with AsyncSink(module.sink_endpoint, prefix="cam-") as cams, \
                AsyncSink(module.sink_endpoint, source_ids=["door"]) as door, \
                AsyncSource(module.source_endpoint) as source:
            for source_id in ("cam-1", "door", "cam-2"):
                await source.send_image(source_id, jpeg)
                await source.send_eos(source_id)
            got = [await cams.recv(TIMEOUT) for _ in range(4)]
            assert [(r.source_id, r.seq, r.end_of_stream) for r in got] == [
                ("cam-1", 0, False), ("cam-1", 0, True), ("cam-2", 0, False), ("cam-2", 0, True)
            ]
            got = [await door.recv(TIMEOUT) for _ in range(2)]
            assert [(r.source_id, r.end_of_stream) for r in got] == [("door", False),
                                                                      ("door", True)]
            assert cams.statistics().end_of_streams == 2

    asyncio.run(main())


def test_idle_timeout_ends_iteration(echo, jpeg: bytes) -> None:
    module = echo(output="push")

    async def main() -> None:
        async with AsyncSink(module.sink_endpoint, idle_timeout_seconds=0.1) as sink, \
                AsyncSource(module.source_endpoint) as source:
            assert [r async for r in sink] == []
            with pytest.raises(TimeoutError, match=re.escape("no result within 0.01 s")):
                await sink.recv(0.01)
            sent = [await source.send_image("cam", jpeg) for _ in range(3)]
            assert [r.trace_id async for r in sink] == [s.trace_id for s in sent]

    asyncio.run(main())


def test_closing_from_another_task_ends_iteration(urls) -> None:
    async def main() -> None:
        sink = AsyncSink(f"pull+bind:{urls()[0]}")

        async def read() -> list[Result]:
            return [result async for result in sink]

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        sink.close()
        assert await asyncio.wait_for(reader, TIMEOUT) == []
        with pytest.raises(ClosedResourceError):
            await sink.recv()

    asyncio.run(main())


def test_matching_by_hand(echo, jpeg: bytes) -> None:
    """What AsyncClient does, spelled out: a reader task delivers results to a matcher."""
    module = echo(input="pull", output="push")

    async def main() -> None:
        matcher = AsyncMatcher(timeout_seconds=TIMEOUT)
        async with AsyncSink(module.sink_endpoint) as sink, \
                AsyncSource(module.source_endpoint) as source:

            async def deliver() -> None:
                async for result in sink:
                    matcher.deliver(result)

            async def one(i: int) -> None:
                sent = await source.send_image("cam", jpeg, attributes={"i": i})
                result = await matcher.expect(sent)
                assert result.trace_id == sent.trace_id and result.seq == sent.seq
                assert result.frame is not None and result.frame.attributes["i"] == i

            reader = asyncio.create_task(deliver())
            await asyncio.gather(*(one(i) for i in range(200)))
            reader.cancel()
            await asyncio.wait({reader})
        assert matcher.statistics().matched == 200

    asyncio.run(main())


def test_an_async_sink_receives_on_sub_pull_or_router_only() -> None:
    with pytest.raises(ValueError, match="AsyncSink needs a sub or pull or router endpoint"):
        AsyncSink("dealer+connect:tcp://127.0.0.1:5")
