"""Pipeline(shared_source_threads=N): pushed sources decoded on N shared threads instead of a
thread each, with the same guarantees (order per source, sessions, accounting, errors)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from torchstream import Frame, Pipeline, Session
from torchstream._types import PumpedSource
from torchstream.sinks import CallbackSink
from torchstream.sources import PushedSource

RAW = torch.zeros(8, 8, 3, dtype=torch.uint8)


class Collected:
    """A sink's view: frames and session ends, in the order the sink got them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | str]] = []
        self.lock = threading.Lock()

    def sink(self) -> CallbackSink:
        return CallbackSink(self._frame, on_session_end=self._end)

    def _frame(self, frame: Frame) -> None:
        with self.lock:
            self.events.append(("frame", frame.source_id, frame.seq))

    def _end(self, session: Session) -> None:
        with self.lock:
            self.events.append(("end", session.source_id, session.end_reason or ""))

    def of(self, source_id: str) -> list[tuple[str, int | str]]:
        with self.lock:
            return [(kind, value) for kind, sid, value in self.events if sid == source_id]


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def source_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ts/source")]


def test_many_pushed_sources_share_threads_and_keep_their_order() -> None:
    seen = Collected()
    cameras = [PushedSource(f"cam{i}", max_queued=8) for i in range(60)]
    with Pipeline([], [seen.sink()], shared_source_threads=2) as pipeline:
        for camera in cameras:
            pipeline.add_source(camera)

        def feed(mine: list[PushedSource], seed: int) -> None:
            rng = random.Random(seed)
            for seq in range(25):
                for camera in rng.sample(mine, len(mine)):
                    camera.push_raw(RAW, seq=seq, timeout=30)
            for camera in mine:
                camera.end()

        feeders = [
            threading.Thread(target=feed, args=(cameras[k::3], k)) for k in range(3)
        ]
        for feeder in feeders:
            feeder.start()
        names = source_threads()
        for feeder in feeders:
            feeder.join()
        assert pipeline.wait(timeout_seconds=60)
    assert not any(name.startswith("ts/source/") for name in names)  # no thread per camera
    assert 1 <= len([n for n in names if n.startswith("ts/sources/")]) <= 2
    for camera in cameras:
        assert seen.of(camera.source_id) == [("frame", s) for s in range(25)] + [
            ("end", "end_of_stream")
        ]
    stats = pipeline.statistics()
    assert stats.frames_in == stats.frames_out == 60 * 25 and stats.dropped_total == 0
    assert source_threads() == []  # joined at close


def test_a_failing_source_fails_alone_on_a_shared_thread() -> None:
    seen = Collected()
    broken, good = PushedSource("broken"), PushedSource("good")
    with Pipeline([], [seen.sink()], shared_source_threads=1) as pipeline:
        pipeline.add_source(broken)
        pipeline.add_source(good)
        broken.push_packet(b"\x00\x00\x00\x01" + bytes(range(256)) * 8, codec="nosuchcodec")
        for seq in range(5):
            good.push_raw(RAW, seq=seq)
        good.end()
        assert pipeline.wait(timeout_seconds=30)
    stats = pipeline.statistics()
    assert stats.sources["broken"].errors and "nosuchcodec" in stats.sources["broken"].errors[0]
    assert seen.of("broken") == [("end", "error")]
    assert seen.of("good") == [("frame", s) for s in range(5)] + [("end", "end_of_stream")]


def test_remove_and_close_end_pumped_sessions_as_closed() -> None:
    seen = Collected()
    with Pipeline([], [seen.sink()], shared_source_threads=2) as pipeline:
        removed, left_open = PushedSource("removed"), PushedSource("left-open")
        pipeline.add_source(removed)
        pipeline.add_source(left_open)
        removed.push_raw(RAW, seq=0)
        left_open.push_raw(RAW, seq=0)
        until(lambda: len(seen.of("removed")) == 1)
        assert pipeline.remove_source("removed", timeout_seconds=10)
        until(lambda: len(seen.of("removed")) == 2)  # the end passed the stages: sinks next
        assert seen.of("removed") == [("frame", 0), ("end", "closed")]
        # The id can be used again: a new session on a new source.
        again = PushedSource("removed")
        pipeline.add_source(again)
        again.push_raw(RAW, seq=1)
        again.end()
        assert pipeline.wait_source("removed", 10)
    # Closing with a source still open (nothing ended it) ends its session, no hang.
    assert seen.of("left-open") == [("frame", 0), ("end", "closed")]
    assert seen.of("removed")[2:] == [("frame", 1), ("end", "end_of_stream")]
    assert pipeline.statistics().sources["removed"].sessions == 2


def test_an_idle_pumped_source_gets_a_new_session() -> None:
    seen = Collected()
    with Pipeline(
        [], [seen.sink()], shared_source_threads=1, session_idle_timeout_seconds=0.2
    ) as pipeline:
        camera = PushedSource("cam")
        pipeline.add_source(camera)
        camera.push_raw(RAW, seq=0)
        until(lambda: ("end", "idle") in seen.of("cam"))
        camera.push_raw(RAW, seq=1)
        camera.end()
        assert pipeline.wait(timeout_seconds=10)
    assert seen.of("cam") == [
        ("frame", 0), ("end", "idle"), ("frame", 1), ("end", "end_of_stream")
    ]


class Overlap:
    """A pumped source that records how many threads are in its ``pump`` at once."""

    policy = "block"

    def __init__(self, source_id: str, frames: int) -> None:
        self.source_id = source_id
        self.finished = False
        self.inside = 0
        self.most_inside = 0
        self.threads: set[str] = set()
        self._left = frames
        self._seq = 0
        self._wake: Callable[[], None] = lambda: None

    def attach(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def open(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        raise AssertionError("a pumped source is never iterated by frames()")

    def poke(self) -> None:
        self._wake()

    def pump(self) -> Iterator[Frame]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.001)  # long enough for other threads to try a second turn
            if self._left:
                self._left -= 1
                yield Frame(source_id=self.source_id, seq=self._seq, width=8, height=8)
                self._seq += 1
            self.finished = self._left == 0
        finally:
            self.inside -= 1

    def close(self) -> None:
        pass


def test_turns_of_one_source_never_overlap() -> None:
    sources = [Overlap(f"s{i}", frames=30) for i in range(4)]
    assert all(isinstance(s, PumpedSource) for s in sources)
    seen = Collected()
    with Pipeline([], [seen.sink()], shared_source_threads=4) as pipeline:
        for source in sources:
            pipeline.add_source(source)  # type: ignore[arg-type]

        def poke() -> None:  # wake-ups from everywhere, far more than turns
            while pipeline.sources():
                for source in sources:
                    source.poke()
                time.sleep(0.0001)  # (a lock is not fair: spinning would starve the pumps)

        pokers = [threading.Thread(target=poke) for _ in range(3)]
        for poker in pokers:
            poker.start()
        for poker in pokers:
            poker.join()
        assert pipeline.wait(timeout_seconds=30)
    for source in sources:
        assert source.most_inside == 1
        assert seen.of(source.source_id) == [("frame", s) for s in range(30)] + [
            ("end", "end_of_stream")
        ]
    assert len(set().union(*(s.threads for s in sources))) > 1  # the work was shared


def test_shared_source_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shared_source_threads must be >= 1"):
        Pipeline([], [], shared_source_threads=0)


def test_decode_threads_by_device() -> None:
    from torchstream.sources._pushed import decode_threads

    assert 2 <= decode_threads("cpu") <= 16
    assert decode_threads("cuda") == 32  # NVDEC calls wait on the hardware, not the CPU


def test_removing_a_source_from_a_shared_thread_does_not_wait_for_itself() -> None:
    """A source's callback runs on the shared thread; removing another source from it must
    not wait for a turn that only this thread could give (one shared thread here)."""
    seen = Collected()
    answers: list[tuple[bool, float]] = []
    with Pipeline([], [seen.sink()], shared_source_threads=1) as pipeline:

        def failed(seq: int, message: str) -> None:
            started = time.monotonic()
            answers.append((pipeline.remove_source("other"), time.monotonic() - started))

        uploads = PushedSource("uploads", on_error=failed)
        other = PushedSource("other")
        pipeline.add_source(uploads)
        pipeline.add_source(other)
        other.push_raw(RAW, seq=0)
        until(lambda: len(seen.of("other")) == 1)
        uploads.push_image(b"not an image")  # its error callback removes the other source
        until(lambda: ("end", "closed") in seen.of("other"))
        uploads.end()
        assert pipeline.wait(timeout_seconds=10)
    assert len(answers) == 1 and answers[0][1] < 1.0  # answered at once, not after a wait
    assert seen.of("other") == [("frame", 0), ("end", "closed")]
    assert seen.of("uploads") == [("end", "end_of_stream")]
