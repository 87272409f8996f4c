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


@pytest.mark.parametrize("flavour", ["blocking", "async"])
def test_an_acknowledged_link_to_a_restarted_sdk_sink_loses_nothing(
    tmp_path: Path, png: bytes, flavour: str
) -> None:
    import socket
    import time

    from torchstream.client import AsyncSink, Sink, Source

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    module = Module([], inbound=f"router+bind:ipc://{tmp_path}/in",
                    outbound=f"dealer+connect:{url}")
    assert module._publish is not None
    module._publish._resend_after = 0.3
    thread = threading.Thread(target=module.run)
    thread.start()
    assert module.ready.wait(10)

    def open_sink() -> Sink:
        deadline = time.monotonic() + 10
        while True:  # the port of a closed socket is freed asynchronously
            try:
                return Sink(f"router+bind:{url}")
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    seen: list[int] = []
    try:
        first = open_sink()
        with Source(f"dealer+connect:ipc://{tmp_path}/in") as source:
            for _ in range(30):
                source.send_image("cam", png)
            seen.extend(first.recv(10).seq or 0 for _ in range(10))  # type: ignore[misc]
            first.close()  # killed: what it had buffered but not returned is lost here
            source.send_eos("cam")
            if flavour == "blocking":
                with open_sink() as second:
                    for result in second:
                        if result.end_of_stream:
                            break
                        seen.append(result.seq or 0)
            else:
                first_free = open_sink()  # wait for the port, then hand it to the async sink
                first_free.close()

                async def drain() -> None:
                    for _ in range(100):
                        try:
                            sink = AsyncSink(f"router+bind:{url}")
                            break
                        except OSError:
                            await asyncio.sleep(0.05)
                    async with sink:
                        async for result in sink:
                            if result.end_of_stream:
                                return
                            seen.append(result.seq or 0)

                asyncio.run(drain())
    finally:
        module.stop()
        thread.join(30)
    assert sorted(seen) == list(range(30))  # each result exactly once at the application
