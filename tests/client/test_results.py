"""The receiving half of the client's core (client/_results.py): received messages turned
into results and filtered. No sockets here."""

from __future__ import annotations

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import Frame
from torchstream.client import Result
from torchstream.client._results import Results
from torchstream.transport import (
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    ImagePayload,
    ResultMessage,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _result(source_id: str, seq: int, **fields: object) -> ResultMessage:
    frame = Frame(source_id=source_id, seq=seq, width=4, height=2)
    return ResultMessage(frame=frame, **fields)  # type: ignore[arg-type]


def test_messages_become_results(jpeg: bytes) -> None:
    results = Results()
    view = memoryview(jpeg)
    got = results.accept(
        _result("cam", 3, content="image", payload=ImagePayload(format="jpeg"),
                traceparent=TRACEPARENT),
        view,
    )
    assert got is not None
    assert (got.source_id, got.seq, got.end_of_stream) == ("cam", 3, False)
    assert got.frame is not None and got.frame.width == 4
    assert got.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert got.content_kind == "image" and got.content is view
    assert got.content_description == ImagePayload(format="jpeg")
    eos = results.accept(EndOfStream(source_id="cam", last_seq=3), None)
    assert eos == Result(source_id="cam", seq=3, frame=None, trace_id=None, end_of_stream=True)
    frame = FrameMessage(source_id="cam", seq=0, payload=ImagePayload(format="jpeg"))
    assert results.accept(frame, view) is None
    assert results.accept(EndOfStreamAck(source_id="cam"), None) is None
    assert (results.results, results.end_of_streams, results.unexpected) == (1, 1, 2)


def test_filters_by_exact_source_id_or_prefix() -> None:
    ids = ["cam-1", "cam-10", "door-1"]
    exact = Results(source_ids=["cam-1"])
    prefix = Results(prefix="cam-")
    everything = Results()
    for results in (exact, prefix, everything):
        for source_id in ids:
            results.accept(_result(source_id, 0), None)
            results.accept(EndOfStream(source_id=source_id), None)
    assert (exact.results, exact.end_of_streams, exact.filtered) == (1, 1, 4)
    assert (prefix.results, prefix.filtered) == (2, 2)
    assert (everything.results, everything.filtered) == (3, 0)
    assert exact.subscriptions == ["cam-1"]
    assert prefix.subscriptions == ["cam-"]
    assert everything.subscriptions == [""]
    with pytest.raises(ValueError, match="not both"):
        Results(source_ids=["a"], prefix="a")
    with pytest.raises(ValueError, match="collection of ids"):
        Results(source_ids="cam-1")


def test_result_repr_shows_sizes_not_bytes(jpeg: bytes) -> None:
    result = Results().accept(
        _result("cam", 1, content="original", payload=ImagePayload(format="jpeg")),
        memoryview(jpeg),
    )
    text = repr(result)
    assert f"{len(jpeg)} bytes" in text and "\\xff" not in text
    assert "end_of_stream" in repr(Results().accept(EndOfStream(source_id="cam"), None))
