"""The blocking Sink (client/_sink.py): filters, idle timeout, end-of-stream, bad input."""

from __future__ import annotations

import pytest

zmq = pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError, Frame  # noqa: E402
from torchstream.client import Sink, Source  # noqa: E402
from torchstream.transport import (  # noqa: E402
    FrameMessage,
    ImagePayload,
    ResultMessage,
    encode,
)

TIMEOUT = 10.0  # seconds; only reached when something is broken
IDS = ["cam-1", "cam-10", "door-1"]


def _send_each(source: Source, jpeg: bytes) -> str:
    """Sends a frame and an end-of-stream of each source, then a last frame of "cam-1" that
    every sink here wants; returns its trace id. Results come in order, so a sink that got
    it has had everything before it."""
    for source_id in IDS:
        source.send_image(source_id, jpeg)
        source.send_eos(source_id)
    return source.send_image("cam-1", jpeg).trace_id


def _until(sink: Sink, trace_id: str) -> list[tuple[str, bool]]:
    got = []
    while True:
        result = sink.recv(TIMEOUT)
        if result.trace_id == trace_id:
            return got
        got.append((result.source_id, result.end_of_stream))


def test_filters_on_sub(echo, jpeg: bytes) -> None:
    # Subscriptions: one per id for source_ids, one prefix, and everything: 3.
    module = echo(subscriptions=3)
    with Sink(module.sink_endpoint, source_ids=["cam-1"]) as exact, \
            Sink(module.sink_endpoint, prefix="cam-") as prefix, \
            Sink(module.sink_endpoint) as everything, \
            Source(module.source_endpoint) as source:
        last = _send_each(source, jpeg)
        assert _until(exact, last) == [("cam-1", False), ("cam-1", True)]
        assert _until(prefix, last) == [("cam-1", False), ("cam-1", True), ("cam-10", False),
                                        ("cam-10", True)]
        assert len(_until(everything, last)) == 6
        # The publisher filters by prefix; the sink drops "cam-10" for exactly "cam-1".
        assert exact.statistics().filtered == 2
        assert prefix.statistics().filtered == 0


def test_filters_on_pull(echo, jpeg: bytes) -> None:
    module = echo(input="pull", output="push")
    with Sink(module.sink_endpoint, source_ids=["door-1", "cam-1"]) as sink, \
            Source(module.source_endpoint) as source:
        last = _send_each(source, jpeg)
        assert _until(sink, last) == [("cam-1", False), ("cam-1", True), ("door-1", False),
                                      ("door-1", True)]
        stats = sink.statistics()
        assert (stats.results, stats.end_of_streams, stats.filtered) == (3, 2, 2)  # + the last


def test_idle_timeout_ends_iteration_and_it_starts_again(echo, jpeg: bytes) -> None:
    module = echo(output="push")
    with Sink(module.sink_endpoint, idle_timeout_seconds=0.1) as sink, \
            Source(module.source_endpoint) as source:
        assert list(sink) == []
        with pytest.raises(TimeoutError, match="no result within"):
            sink.recv(timeout_seconds=0.01)
        sent = source.send_image("cam", jpeg)
        assert [r.trace_id for r in sink] == [sent.trace_id]


def test_end_of_stream_is_a_result(echo) -> None:
    module = echo(output="push")
    with Sink(module.sink_endpoint) as sink, Source(module.source_endpoint) as source:
        ended = source.send_eos("silent")
        result = sink.recv(TIMEOUT)
    assert result.end_of_stream and result.source_id == "silent"
    assert result.seq is None and result.frame is None
    assert result.trace_id == ended.trace_id


def test_malformed_and_unexpected_messages_are_counted_and_skipped(urls, jpeg: bytes) -> None:
    frame = FrameMessage(source_id="cam", seq=0, payload=ImagePayload(format="jpeg"))
    result = ResultMessage(frame=Frame(source_id="cam", seq=5, width=2, height=2))
    with Sink(f"pull+bind:{urls()[0]}") as sink:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(sink.endpoint.url)
        try:
            raw.send_multipart([b"cam", b"not msgpack"])
            raw.send_multipart([b"cam"])
            raw.send_multipart(encode(frame, jpeg))  # a frame is not a result
            raw.send_multipart(encode(result))
            got = sink.recv(TIMEOUT)
        finally:
            raw.close(linger=0)
        assert got.seq == 5
        stats = sink.statistics()
        assert stats.rejected == {"bad_header": 1, "parts": 1}
        assert stats.unexpected == 1 and stats.results == 1


@pytest.mark.parametrize("endpoint", ["push+bind:tcp://127.0.0.1:*",
                                      "dealer+connect:tcp://127.0.0.1:5"])
def test_a_sink_receives_on_sub_pull_or_router_only(endpoint: str) -> None:
    with pytest.raises(ValueError, match="needs a sub or pull or router endpoint"):
        Sink(endpoint)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="idle_timeout_seconds"):
        Sink("pull+bind:tcp://127.0.0.1:*", idle_timeout_seconds=-1)
    with pytest.raises(ValueError, match="not both"):
        Sink("pull+bind:tcp://127.0.0.1:*", source_ids=["a"], prefix="a")


def test_closed_sink(urls) -> None:
    sink = Sink(f"pull+bind:{urls()[0]}")
    sink.close()
    sink.close()
    assert list(sink) == []
    with pytest.raises(ClosedResourceError):
        sink.recv(0)
