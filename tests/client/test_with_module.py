"""The SDK against the real module (not the echo stand-in): 1,000 concurrent requests through
a Module, every result matched to its request by trace id."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream.client import AsyncClient, Result, new_traceparent
from torchstream.testing import RectangleDetector
from torchstream.transport import Module

REQUESTS = 1000
CONCURRENCY = 64


def test_one_thousand_requests_through_a_module(tmp_path: Path, jpeg: bytes, png: bytes) -> None:
    module = Module(
        [RectangleDetector()],
        inbound=f"router+bind:ipc://{tmp_path}/in",
        outbound=f"push+bind:ipc://{tmp_path}/out",
    )
    thread = threading.Thread(target=module.run, name="module")
    thread.start()
    assert module.ready.wait(10)

    async def main() -> list[tuple[str, Result]]:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with AsyncClient(f"dealer+connect:ipc://{tmp_path}/in",
                               f"pull+connect:ipc://{tmp_path}/out", timeout_seconds=60) as client:

            async def one(i: int) -> tuple[str, Result]:
                traceparent = new_traceparent()
                async with limit:
                    result = await client.request(
                        f"web-{i % 4}", jpeg if i % 2 else png, attributes={"i": i},
                        traceparent=traceparent,
                    )
                return traceparent, result

            return await asyncio.gather(*(one(i) for i in range(REQUESTS)))

    try:
        answers = asyncio.run(main())
    finally:
        module.stop()
        thread.join(30)
    assert len({traceparent for traceparent, _ in answers}) == REQUESTS
    for i, (traceparent, result) in enumerate(answers):
        assert result.traceparent == traceparent and result.trace_id == traceparent[3:35]
        assert result.frame is not None and result.frame.attributes["i"] == i
        assert result.source_id == f"web-{i % 4}"
        assert (result.frame.width, result.frame.height) == (32, 24)
    stats = module.statistics().pipeline
    assert stats.frames_out == REQUESTS and stats.dropped_total == 0
