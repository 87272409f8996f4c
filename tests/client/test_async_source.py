"""AsyncSource (client/_async_source.py) over real sockets: sends, acknowledged end-of-stream
from concurrent tasks, overload, closing, traces. Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError, OverloadedError
from torchstream.client import AsyncSink, AsyncSource
from torchstream.transport import FrameMessage, RawPayload, Receiver

TIMEOUT = 10.0  # seconds; only reached when something is broken


def test_concurrent_end_of_streams_each_get_their_acknowledgement(echo, jpeg: bytes) -> None:
    module = echo(output="push")

    async def stream(source: AsyncSource, source_id: str, frames: int) -> int | None:
        for _ in range(frames):
            await source.send_image(source_id, jpeg)
        return (await source.send_eos(source_id, ack_timeout_seconds=TIMEOUT)).seq

    async def main() -> None:
        async with AsyncSink(module.sink_endpoint) as sink, \
                AsyncSource(module.source_endpoint) as source:
            last = await asyncio.gather(*(stream(source, f"cam-{i}", 5 + i) for i in range(4)))
            assert last == [4, 5, 6, 7]
            assert module.frames == 5 + 6 + 7 + 8
            assert source.statistics().end_of_streams == 4
            assert source.unexpected == 0
            ends = []
            while len(ends) < 4:
                result = await sink.recv(TIMEOUT)
                if result.end_of_stream:
                    ends.append((result.source_id, result.seq))
            assert sorted(ends) == [("cam-0", 4), ("cam-1", 5), ("cam-2", 6), ("cam-3", 7)]

    asyncio.run(main())


def test_end_of_stream_without_acknowledgement_times_out(urls) -> None:
    async def main(url: str) -> None:
        async with AsyncSource(f"dealer+connect:{url}") as source:
            with pytest.raises(TimeoutError, match=re.escape("not acknowledged within 0.05 s")):
                await source.send_eos("cam", ack_timeout_seconds=0.05)

    with Receiver(f"router+bind:{urls()[0]}", ack_eos=False) as module:
        asyncio.run(main(module.endpoint.url))


def test_closing_fails_a_waiting_end_of_stream(urls) -> None:
    async def main(url: str) -> None:
        source = AsyncSource(f"dealer+connect:{url}")
        waiting = asyncio.create_task(source.send_eos("cam", ack_timeout_seconds=TIMEOUT))
        await asyncio.sleep(0.01)
        source.close()
        with pytest.raises(ClosedResourceError):
            await waiting
        with pytest.raises(ClosedResourceError):
            await source.send_eos("cam")

    with Receiver(f"router+bind:{urls()[0]}", ack_eos=False) as module:
        asyncio.run(main(module.endpoint.url))


def test_no_room_raises_overloaded_and_sends_nothing(jpeg: bytes) -> None:
    async def main() -> None:
        # Bound and nobody connected: there is no peer to queue for.
        async with AsyncSource("push+bind:tcp://127.0.0.1:*",
                               send_timeout_seconds=0.05) as source:
            with pytest.raises(OverloadedError, match="nothing was sent"):
                await source.send_image("cam", jpeg)
            assert source.statistics().sent == 0

    asyncio.run(main())


def test_input_is_checked_before_sending(urls, jpeg: bytes) -> None:
    async def main(module: Receiver) -> None:
        async with AsyncSource(f"push+connect:{module.endpoint.url}") as source:
            with pytest.raises(ValueError, match="neither JPEG nor PNG"):
                await source.send_image("cam", b"BM" + bytes(60))
            with pytest.raises(ValueError, match="shape"):
                await source.send_frame("cam", np.zeros((4, 4), np.uint8))
            sent = await source.send_frame("cam", np.zeros((4, 6, 3), np.uint8))
            packet = await source.send_packet("cam", b"\x00\x00\x01\x65", codec="h264",
                                              width=16, height=16, time_base=(1, 25), pts=1)
            assert (sent.seq, packet.seq) == (0, 1)

    with Receiver(f"pull+bind:{urls()[0]}") as module:
        asyncio.run(main(module))
        message, payload = module.recv(TIMEOUT)
        assert isinstance(message, FrameMessage) and message.seq == 0
        assert message.payload == RawPayload(width=6, height=4, format="rgb24")
        assert payload is not None and payload.nbytes == 72
        message, _ = module.recv(TIMEOUT)
        assert isinstance(message, FrameMessage) and message.pts_seconds == 0.04


def test_the_active_span_is_the_trace_of_the_request(echo, png: bytes) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider

    module = echo()
    tracer = TracerProvider().get_tracer("test")

    async def main() -> tuple[str, str]:
        async with AsyncSink(module.sink_endpoint) as sink, \
                AsyncSource(module.source_endpoint) as source:
            with tracer.start_as_current_span("upload") as span:
                sent = await source.send_image("cam", png)
            result = await sink.recv(TIMEOUT)
            assert result.trace_id == sent.trace_id
            return sent.trace_id, f"{span.get_span_context().trace_id:032x}"

    sent_trace, span_trace = asyncio.run(main())
    assert sent_trace == span_trace


def test_an_async_source_sends_on_dealer_or_push_only() -> None:
    with pytest.raises(ValueError, match="AsyncSource needs a dealer or push endpoint"):
        AsyncSource("sub+connect:tcp://127.0.0.1:5")
    with pytest.raises(ValueError, match="AsyncSource needs a dealer or push endpoint"):
        AsyncSource("req+connect:tcp://127.0.0.1:5")  # one message at a time: Source only
    with pytest.raises(ValueError, match="send_timeout_seconds"):
        AsyncSource("push+bind:tcp://127.0.0.1:*", send_timeout_seconds=-1)
