"""AsyncClient (client/_async_client.py): many concurrent requests, each answered by its own
result; timeouts, overload and closing. Async tests run their own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError, OverloadedError
from torchstream.client import AsyncClient, Result, new_traceparent
from torchstream.transport import Receiver, Sender

REQUESTS = 1000
CONCURRENCY = 64


def test_one_thousand_images_each_matched_to_its_request_by_trace_id(
    echo, jpeg: bytes, png: bytes
) -> None:
    module = echo()

    async def main() -> list[tuple[str, Result]]:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with AsyncClient(module.source_endpoint, module.sink_endpoint,
                               timeout_seconds=30) as client:

            async def one(i: int) -> tuple[str, Result]:
                traceparent = new_traceparent()
                async with limit:
                    result = await client.request(
                        f"web-{i % 4}", jpeg if i % 2 else png, attributes={"i": i},
                        traceparent=traceparent,
                    )
                return traceparent, result

            answers = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
            stats = client.statistics()
            assert (stats.matched, stats.unmatched, stats.expired, stats.pending) == (
                REQUESTS, 0, 0, 0
            )
            return answers

    answers = asyncio.run(main())
    assert len({traceparent for traceparent, _ in answers}) == REQUESTS
    for i, (traceparent, result) in enumerate(answers):
        assert result.traceparent == traceparent
        assert result.trace_id == traceparent[3:35]
        assert result.frame is not None
        assert result.frame.attributes["i"] == i
        assert result.frame.attributes["bytes"] == len(jpeg if i % 2 else png)
        assert result.source_id == f"web-{i % 4}"
    assert module.frames == REQUESTS


def _silent_module(urls) -> tuple[Receiver, Sender]:
    """A module that takes frames and never answers."""
    inbound, outbound = urls()
    return Receiver(f"router+bind:{inbound}"), Sender(f"push+bind:{outbound}")


def test_a_request_without_result_times_out(urls, jpeg: bytes) -> None:
    rx, tx = _silent_module(urls)

    async def main() -> None:
        async with AsyncClient(f"dealer+connect:{rx.endpoint.url}",
                               f"pull+connect:{tx.endpoint.url}",
                               timeout_seconds=0.05) as client:
            with pytest.raises(TimeoutError, match=re.escape("no result within 0.05 s")):
                await client.request("web", jpeg)
            assert client.statistics().expired == 1
            assert client.statistics().pending == 0

    try:
        asyncio.run(main())
    finally:
        rx.close()
        tx.close()


def test_pending_requests_are_bounded_and_closing_fails_them(urls, jpeg: bytes) -> None:
    rx, tx = _silent_module(urls)

    async def main() -> None:
        client = AsyncClient(f"dealer+connect:{rx.endpoint.url}",
                             f"pull+connect:{tx.endpoint.url}", max_pending=2)
        async with client:
            waiting = [asyncio.create_task(client.request("web", jpeg)) for _ in range(2)]
            await asyncio.sleep(0)  # let both send and wait
            with pytest.raises(OverloadedError, match="max_pending=2"):
                await client.request("web", jpeg)
            with pytest.raises(ValueError, match="neither JPEG nor PNG"):
                await client.request("web", b"not an image")
        for task in waiting:
            with pytest.raises(ClosedResourceError):
                await task
        with pytest.raises(ClosedResourceError):
            await client.request("web", jpeg)

    try:
        asyncio.run(main())
    finally:
        rx.close()
        tx.close()


def test_requests_need_async_with(urls, jpeg: bytes) -> None:
    async def main() -> None:
        client = AsyncClient("push+bind:tcp://127.0.0.1:*", "pull+bind:tcp://127.0.0.1:*")
        try:
            with pytest.raises(RuntimeError, match="async with"):
                await client.request("web", jpeg)
        finally:
            await client.aclose()
            await client.aclose()

    asyncio.run(main())
