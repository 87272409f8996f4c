"""Matcher and AsyncMatcher (client/_matcher.py), without sockets: routing by trace id,
unknown results counted, timeouts, bounded pending requests, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError, Frame, OverloadedError
from torchstream.client import AsyncMatcher, Matcher, Result, SendResult

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def sent(seq: int | None, trace: str = TRACE, *, source_id: str = "cam",
         end_of_stream: bool = False) -> SendResult:
    return SendResult(source_id, seq, trace, f"00-{trace}-00f067aa0ba902b7-01", end_of_stream)


def result(seq: int | None, trace: str | None = TRACE, *, source_id: str = "cam",
           end_of_stream: bool = False) -> Result:
    frame = None if end_of_stream else Frame(source_id=source_id, seq=seq or 0, width=1, height=1)
    return Result(source_id, seq, frame, trace, end_of_stream=end_of_stream)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_results_go_to_their_requests() -> None:
    matcher = Matcher()
    # One trace (one caller's span) for several requests: the source and seq tell them apart.
    first, second = matcher.expect(sent(0)), matcher.expect(sent(1))
    end = matcher.expect(sent(1, end_of_stream=True))
    other = matcher.expect(sent(0, "a" * 32))
    assert matcher.deliver(result(1))
    assert matcher.deliver(result(1, end_of_stream=True))
    assert matcher.deliver(result(0, "a" * 32))
    assert matcher.deliver(result(0))
    assert first.result(0).seq == 0 and second.result(0).seq == 1
    assert end.result(0).end_of_stream
    assert other.result(0).trace_id == "a" * 32
    assert matcher.statistics().matched == 4


def test_results_without_a_request_are_counted_not_errors() -> None:
    matcher = Matcher()
    future = matcher.expect(sent(0))
    assert not matcher.deliver(result(0, "b" * 32))  # another trace
    assert not matcher.deliver(result(0, None))  # the pipeline dropped the trace
    assert not matcher.deliver(result(0, source_id="door"))
    assert not matcher.deliver(result(5))
    assert not future.done()
    stats = matcher.statistics()
    assert (stats.pending, stats.matched, stats.unmatched) == (1, 0, 4)


def test_requests_time_out() -> None:
    clock = FakeClock()
    matcher = Matcher(timeout_seconds=2.0, clock=clock)
    early, late = matcher.expect(sent(0)), None
    clock.now = 1.5
    late = matcher.expect(sent(1))
    clock.now = 2.0
    assert matcher.expire() == 1
    with pytest.raises(TimeoutError, match=re.escape("no result within 2.0 s")):
        early.result(0)
    assert not late.done()
    clock.now = 10.0
    assert not matcher.deliver(result(1))  # too late: expired first, then counted
    with pytest.raises(TimeoutError):
        late.result(0)
    stats = matcher.statistics()
    assert (stats.expired, stats.unmatched, stats.pending) == (2, 1, 0)


def test_pending_requests_are_bounded() -> None:
    clock = FakeClock()
    matcher = Matcher(max_pending=2, timeout_seconds=1.0, clock=clock)
    matcher.expect(sent(0))
    matcher.expect(sent(1))
    with pytest.raises(OverloadedError, match="max_pending=2"):
        matcher.expect(sent(2))
    clock.now = 5.0  # both expired: room again
    matcher.expect(sent(2))
    with pytest.raises(ValueError, match="already expected"):
        matcher.expect(sent(2))
    assert matcher.statistics().pending == 1


def test_cancelling_withdraws_and_closing_fails() -> None:
    matcher = Matcher()
    cancelled, waiting = matcher.expect(sent(0)), matcher.expect(sent(1))
    assert cancelled.cancel()
    assert matcher.statistics().pending == 1
    assert not matcher.deliver(result(0))
    matcher.close()
    with pytest.raises(ClosedResourceError):
        waiting.result(0)
    with pytest.raises(ValueError, match="max_pending"):
        Matcher(max_pending=0)
    with pytest.raises(ValueError, match="timeout_seconds"):
        Matcher(timeout_seconds=0)


def test_a_thread_delivers_while_another_waits() -> None:
    matcher = Matcher()
    futures = [matcher.expect(sent(seq)) for seq in range(100)]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test/deliver") as pool:
        pool.submit(lambda: [matcher.deliver(result(seq)) for seq in reversed(range(100))])
        assert [f.result(timeout=10).seq for f in futures] == list(range(100))


def test_async_matcher() -> None:
    async def main() -> None:
        matcher = AsyncMatcher(max_pending=3, timeout_seconds=0.05)
        answered, expires, cancelled = (matcher.expect(sent(seq)) for seq in range(3))
        with pytest.raises(OverloadedError):
            matcher.expect(sent(3))
        cancelled.cancel()
        await asyncio.sleep(0)
        assert matcher.statistics().pending == 2
        assert matcher.deliver(result(0))
        assert (await answered).seq == 0
        with pytest.raises(TimeoutError, match=re.escape("no result within 0.05 s")):
            await expires  # failed by the event loop's timer, without any other call
        assert not matcher.deliver(result(1))
        stats = matcher.statistics()
        assert (stats.pending, stats.matched, stats.unmatched, stats.expired) == (0, 1, 1, 1)
        closing = AsyncMatcher()
        waiting = closing.expect(sent(0))
        closing.close()
        with pytest.raises(ClosedResourceError):
            await waiting

    asyncio.run(main())
