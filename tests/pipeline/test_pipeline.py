from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from torchstream import BatchPolicy, Frame, Pipeline, PipelineError, Session
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import RectangleDetector, SyntheticSource, SyntheticVideo


class Recorder:
    """A stage that records what it saw: batches, session hooks, per-source order."""

    def __init__(self, name: str = "recorder", batch_policy: BatchPolicy | None = None) -> None:
        self.name = name
        self.batch_policy = batch_policy or BatchPolicy()
        self.events: list[tuple[str, str, int]] = []
        self.batches: list[list[tuple[str, int]]] = []
        self.closed = False

    def on_session_start(self, session: Session) -> None:
        session.state[self.name] = 0
        self.events.append(("start", session.source_id, session.index))

    def process(self, frames: Sequence[Frame]) -> None:
        self.batches.append([(f.source_id, f.seq) for f in frames])
        for frame in frames:
            assert frame.session is not None
            frame.session.state[self.name] += 1
            self.events.append(("frame", frame.source_id, frame.seq))

    def on_session_end(self, session: Session) -> None:
        self.events.append(("end", session.source_id, session.state[self.name]))

    def close(self) -> None:
        self.closed = True


def run(
    stages: Sequence[object], sources: Sequence[object], **kwargs: object
) -> tuple[list[Frame], list[Session], Pipeline]:
    results: list[Frame] = []
    ended: list[Session] = []
    sink = CallbackSink(results.append, on_session_end=ended.append)
    with Pipeline(stages, [sink], **kwargs) as pipeline:  # type: ignore[arg-type]
        for source in sources:
            pipeline.add_source(source)  # type: ignore[arg-type]
        assert pipeline.wait(timeout_seconds=60)
    return results, ended, pipeline


def by_source(frames: list[Frame]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for frame in frames:
        seqs[frame.source_id].append(frame.seq)
    return seqs


def test_exact_boxes_in_order_with_batches_mixing_sources(video: SyntheticVideo) -> None:
    recorder = Recorder(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.05))
    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.05))
    sources = [SyntheticSource(f"cam{i}", frames=40) for i in range(4)]
    results, ended, pipeline = run([recorder, detector], sources)

    assert {sid: seqs for sid, seqs in by_source(results).items()} == {
        f"cam{i}": list(range(40)) for i in range(4)
    }
    for frame in results:
        assert {o.label: o.box for o in frame.objects} == video.boxes(frame.seq)
    assert max(len({sid for sid, _ in batch}) for batch in recorder.batches) >= 3
    assert max(detector.batch_sizes) == 8
    assert sorted(s.source_id for s in ended) == [f"cam{i}" for i in range(4)]
    assert all(s.end_reason == "end_of_stream" for s in ended)
    stats = pipeline.statistics()
    assert (stats.frames_in, stats.frames_out, stats.dropped_total) == (160, 160, 0)
    assert stats.stages[1].batcher.size_histogram.get(8, 0) > 0
    assert recorder.closed


def test_session_hooks_wrap_each_sessions_frames() -> None:
    recorder = Recorder(batch_policy=BatchPolicy(max_size=4, max_wait_seconds=0.01))
    run([recorder], [SyntheticSource("a", frames=10), SyntheticSource("b", frames=7)])
    for sid, count in (("a", 10), ("b", 7)):
        mine = [e for e in recorder.events if e[1] == sid]
        assert mine[0] == ("start", sid, 0)
        assert mine[1:-1] == [("frame", sid, i) for i in range(count)]
        assert mine[-1] == ("end", sid, count)


def test_latest_policy_drops_counted_and_accounting_holds() -> None:
    slow = RectangleDetector(
        batch_policy=BatchPolicy(max_size=1, max_wait_seconds=0), delay_seconds=0.03
    )
    live = SyntheticSource("live", frames=60, policy="latest", interval_seconds=0.002)
    results, _, pipeline = run([slow], [live], source_queue_capacity=2)
    stats = pipeline.statistics()
    assert stats.dropped["queue_full"] > 0
    assert stats.frames_in == 60
    assert stats.frames_in == stats.frames_out + stats.dropped_total
    assert stats.frames_in_flight == 0
    seqs = by_source(results)["live"]
    assert seqs == sorted(seqs) and len(seqs) == stats.frames_out
    assert seqs[-1] == 59  # the newest frame always survives
    source = stats.sources["live"]
    assert source.frames_in == source.frames_out + source.dropped_total


def test_block_policy_loses_nothing_behind_a_slow_stage() -> None:
    slow = RectangleDetector(delay_seconds=0.005)
    results, _, pipeline = run([slow], [SyntheticSource("file", frames=40)], queue_capacity=1)
    assert by_source(results)["file"] == list(range(40))
    assert pipeline.statistics().dropped_total == 0


class FailOn:
    """Fails on chosen (source, seq) pairs, even inside a batch."""

    name = "failing"
    batch_policy = BatchPolicy(max_size=4, max_wait_seconds=0.01)

    def __init__(self, bad: set[tuple[str, int]]) -> None:
        self.bad = bad

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            frame.attributes["seen"] = frame.attributes.get("seen", 0) + 1
            if (frame.source_id, frame.seq) in self.bad:
                raise ValueError(f"bad frame {frame.seq}")


def test_a_failing_frame_is_dropped_alone_and_recorded() -> None:
    stage = FailOn({("a", 3), ("b", 5)})
    results, ended, pipeline = run(
        [stage], [SyntheticSource("a", frames=8), SyntheticSource("b", frames=8)]
    )
    seqs = by_source(results)
    assert seqs["a"] == [0, 1, 2, 4, 5, 6, 7]
    assert seqs["b"] == [0, 1, 2, 3, 4, 6, 7]
    # Retried frames were restored before the retry: the stage's effect applies once.
    assert all(f.attributes["seen"] == 1 for f in results)
    stats = pipeline.statistics()
    assert stats.dropped == {"stage_error": 2}
    assert stats.stages[0].errors_total == 2
    errors = {s.source_id: s.errors for s in ended}
    assert any("bad frame 3" in e for e in errors["a"])


def test_a_source_failing_mid_stream_fails_only_its_session() -> None:
    results, ended, pipeline = run(
        [RectangleDetector()],
        [SyntheticSource("good", frames=20), SyntheticSource("bad", frames=20, fail_at=5)],
    )
    seqs = by_source(results)
    assert seqs["good"] == list(range(20)) and seqs["bad"] == list(range(5))
    reasons = {s.source_id: s.end_reason for s in ended}
    assert reasons == {"good": "end_of_stream", "bad": "error"}
    errors = pipeline.statistics().sources["bad"].errors
    assert any("synthetic failure at frame 5" in e for e in errors)


def test_bad_files_among_good_inputs(tmp_path: Path, lossless_file: Path) -> None:
    h264 = lossless_file.read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(h264[: len(h264) // 2])
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 20)
    missing = tmp_path / "missing.mp4"
    sources = [VideoSource(p) for p in (lossless_file, truncated, not_video, missing)]
    _, _, pipeline = run([RectangleDetector()], sources)
    stats = pipeline.statistics()
    assert stats.sources["rects.mkv"].frames_out == 30
    assert stats.sources["rects.mkv"].errors == ()
    assert any("truncated" in e or "corrupt" in e for e in stats.sources["truncated.mkv"].errors)
    assert any("not a readable video" in e for e in stats.sources["notes.mp4"].errors)
    assert any("no such file" in e for e in stats.sources["missing.mp4"].errors)
    assert stats.frames_in == stats.frames_out


def test_idle_source_gets_a_new_session() -> None:
    class Pausing(SyntheticSource):
        def frames(self):  # type: ignore[no-untyped-def]
            for frame in super().frames():
                if frame.seq == 3:
                    time.sleep(1.5)  # far past the idle timeout, whatever the machine's load
                yield frame

    recorder = Recorder()
    _, ended, _ = run(
        [recorder], [Pausing("cam", frames=6)], session_idle_timeout_seconds=0.5
    )
    assert [(s.index, s.end_reason) for s in ended] == [(0, "idle"), (1, "end_of_stream")]
    assert [e for e in recorder.events if e[0] != "frame"] == [
        ("start", "cam", 0),
        ("end", "cam", 3),
        ("start", "cam", 1),
        ("end", "cam", 3),
    ]


def test_setup_failure_raises_at_enter() -> None:
    class Broken:
        name = "broken"

        def setup(self, device: object) -> None:
            raise OSError("weights not found")

        def process(self, frames: Sequence[Frame]) -> None:
            pass

    with pytest.raises(PipelineError, match="weights not found"), Pipeline([Broken()]):
        pass


def test_padding_gives_fixed_batch_shapes() -> None:
    detector = RectangleDetector(
        batch_policy=BatchPolicy(max_size=4, max_wait_seconds=0.001, pad_to_max_size=True)
    )
    results, _, _ = run([detector], [SyntheticSource("a", frames=9)])
    assert set(detector.batch_sizes) == {4}
    assert len(results) == 9 and all(len(f.objects) == 3 for f in results)


def test_threads_are_named_and_joined() -> None:
    names: set[str] = set()

    class Spy:
        name = "spy"

        def process(self, frames: Sequence[Frame]) -> None:
            names.update(t.name for t in threading.enumerate())

    before = threading.active_count()
    # Paced, so the source thread is still alive (waiting for its next frame) when the stage
    # sees the first one, however loaded the machine.
    run([Spy()], [SyntheticSource("cam-3", frames=3, interval_seconds=0.2)])
    assert {"ts/stage/spy", "ts/source/cam-3", "ts/sink/callback"} <= names
    assert threading.active_count() == before


def test_duplicate_source_id_and_unique_names() -> None:
    with Pipeline([Recorder()]) as pipeline:
        pipeline.add_source(SyntheticSource("a", frames=200, interval_seconds=0.001))
        with pytest.raises(ValueError, match="already running"):
            pipeline.add_source(SyntheticSource("a", frames=1))
    with pytest.raises(ValueError, match="unique"):
        Pipeline([Recorder(), Recorder()])


def test_closing_stops_running_sources_and_accounts_for_everything() -> None:
    results: list[Frame] = []
    ended: list[Session] = []
    sink = CallbackSink(results.append, on_session_end=ended.append)
    with Pipeline([RectangleDetector()], [sink]) as pipeline:
        pipeline.add_source(
            SyntheticSource("live", frames=10**6, policy="latest", interval_seconds=0.002)
        )
        assert not pipeline.wait(timeout_seconds=0.3)  # a live source does not end by itself
    stats = pipeline.statistics()
    assert [s.end_reason for s in ended] == ["closed"]
    assert 0 < stats.frames_in == stats.frames_out + stats.dropped_total
    assert not stats.sources["live"].running
    pipeline.close()  # idempotent


class Waiting:
    """A source blocked waiting for input (a camera reconnecting) until ``stop()``."""

    policy = "latest"

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.stopped = threading.Event()
        self.closed = False

    def open(self) -> None:
        pass

    def frames(self):  # type: ignore[no-untyped-def]
        self.stopped.wait()
        return iter(())

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.closed = True


def test_remove_source_ends_its_session_while_others_run() -> None:
    stage = Recorder()
    ended: list[Session] = []
    results: list[Frame] = []
    sink = CallbackSink(results.append, on_session_end=ended.append)
    waiting = Waiting("waiting")
    with Pipeline([stage], [sink]) as pipeline:
        pipeline.add_source(SyntheticSource("keep", frames=10**6, interval_seconds=0.005))
        pipeline.add_source(SyntheticSource("gone", frames=10**6, interval_seconds=0.005))
        pipeline.add_source(waiting)
        assert set(pipeline.sources()) == {"keep", "gone", "waiting"}
        time.sleep(0.1)
        assert pipeline.remove_source("gone", timeout_seconds=5)
        assert pipeline.remove_source("waiting", timeout_seconds=5)  # interrupted by stop()
        assert waiting.closed
        assert pipeline.sources() == ["keep"]
        assert pipeline.remove_source("gone")  # idempotent
        with pytest.raises(KeyError, match=r"no source 'nope'.*'keep'"):
            pipeline.remove_source("nope")
        gone_out = pipeline.statistics().sources["gone"].frames_out
        time.sleep(0.1)
        stats = pipeline.statistics()
        assert stats.sources["gone"].frames_out == gone_out  # nothing after its end
        assert stats.sources["keep"].running and stats.sources["keep"].frames_out > 20
        assert stats.sources["keep"].lag_seconds_p50 is not None
        assert stats.sources["keep"].lag_seconds_p99 >= stats.sources["keep"].lag_seconds_p50
        assert stats.sources["keep"].live is None
        # The removed ids' ends reached the stage and the sinks, after their last frames.
        assert sorted((s.source_id, s.end_reason) for s in ended) == [
            ("gone", "closed"), ("waiting", "closed")
        ]
        gone = [f.seq for f in results if f.source_id == "gone"]
        assert gone == list(range(len(gone)))
        assert stage.events.index(("end", "gone", len(gone))) > stage.events.index(
            ("frame", "gone", gone[-1])
        )
        # The id may come back: a new session.
        pipeline.add_source(SyntheticSource("gone", frames=3))
        assert pipeline.wait(timeout_seconds=0.01) is False


def test_a_pipeline_without_stages_hands_frames_to_the_sinks() -> None:
    results, ended, pipeline = run([], [SyntheticSource("a", frames=5)])
    assert [f.seq for f in results] == list(range(5)) and len(ended) == 1
    stats = pipeline.statistics()
    assert (stats.frames_out, stats.stages) == (5, ())


@pytest.mark.parametrize("with_stage", [False, True])
def test_many_sources_flow_without_deadlock(with_stage: bool) -> None:
    tiny = SyntheticVideo(width=64, height=48, rects=())
    sources = [SyntheticSource(f"s{i}", frames=100, video=tiny) for i in range(32)]
    stages = [RectangleDetector(batch_policy=BatchPolicy(max_size=16))] if with_stage else []
    results, ended, _ = run(stages, sources, queue_capacity=4)
    assert len(results) == 3200 and len(ended) == 32
    assert all(seqs == list(range(100)) for seqs in by_source(results).values())


class RunsOutOfMemory:
    """Like a model whose activations do not fit above two frames."""

    name = "oom"
    batch_policy = BatchPolicy(max_size=8, max_wait_seconds=0.05)

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def process(self, frames: Sequence[Frame]) -> None:
        self.sizes.append(len(frames))
        for frame in frames:
            frame.attributes["oom.seen"] = frame.attributes.get("oom.seen", 0) + 1
        if len(frames) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_splits_the_batch_and_loses_nothing() -> None:
    stage = RunsOutOfMemory()
    results, _, pipeline = run([stage], [SyntheticSource(f"s{i}", frames=8) for i in range(2)])
    assert sorted(by_source(results).items()) == [("s0", list(range(8))), ("s1", list(range(8)))]
    assert all(f.attributes["oom.seen"] == 1 for f in results)  # restored before each retry
    stats = pipeline.statistics()
    assert stats.dropped_total == 0 and stats.stages[0].oom_splits_total > 0
    assert max(stage.sizes) > 2 and 2 in stage.sizes


class Scribbler:
    """A buggy stage that draws into the frame's surface instead of a canvas."""

    name = "scribbler"

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            if frame.seq % 2 and frame.surface is not None:
                frame.surface[0, 0] = 255 - frame.surface[0, 0]


def test_debug_surfaces_names_the_stage_that_wrote_into_a_frame() -> None:
    results, ended, pipeline = run(
        [Scribbler()], [SyntheticSource("cam", frames=6)], debug_surfaces=True
    )
    assert [f.seq for f in results] == [0, 2, 4]
    assert pipeline.statistics().dropped == {"stage_error": 3}
    assert any("stage 'scribbler' modified the surface of cam#1" in e for e in ended[0].errors)


def test_without_debug_surfaces_the_check_costs_nothing() -> None:
    results, _, _ = run([Scribbler()], [SyntheticSource("cam", frames=4)])
    assert len(results) == 4


@pytest.mark.parametrize("policy", ["latest", "block"])
def test_a_slow_sink_drops_live_frames_but_never_file_frames(policy: str) -> None:
    got: list[Frame] = []
    ended: list[Session] = []

    def slow(frame: Frame) -> None:
        time.sleep(0.01)
        got.append(frame)

    sinks = [CallbackSink(slow, on_session_end=ended.append, name="slow")]
    with Pipeline([], sinks, queue_capacity=2) as pipeline:  # type: ignore[arg-type]
        pipeline.add_source(SyntheticSource("cam", frames=60, policy=policy))  # type: ignore[arg-type]
        pipeline.wait()
    stats = pipeline.statistics()
    sink = stats.sinks[0]
    assert len(ended) == 1  # the end of the session always arrives
    assert stats.frames_in == stats.frames_out + stats.dropped_total
    assert sink.frames_total + sink.dropped_total == stats.frames_out
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs)
    if policy == "latest":
        assert sink.dropped_total > 0 and seqs[-1] == 59
    else:
        assert sink.dropped_total == 0 and seqs == list(range(60))


def test_statistics_of_finished_sources_stay_bounded() -> None:
    tiny = SyntheticVideo(width=32, height=32, rects=())
    with Pipeline([Recorder()]) as pipeline:
        for i in range(300):
            pipeline.add_source(SyntheticSource(f"s{i}", frames=1, video=tiny))
            if i % 50 == 49:
                pipeline.wait()
        pipeline.wait()
        pipeline.add_source(SyntheticSource("last", frames=1, video=tiny))
        pipeline.wait()
    stats = pipeline.statistics()
    assert stats.frames_in == stats.frames_out == 301
    assert 256 <= len(stats.sources) <= 257 and "last" in stats.sources
    assert "s0" not in stats.sources and "s299" in stats.sources


@pytest.mark.parametrize("shared_threads", [None, 2], ids=["own-thread", "shared-threads"])
def test_frames_are_freed_without_the_garbage_collector(shared_threads: int | None) -> None:
    """A frame (its surface: GPU memory, on a GPU) is freed as soon as the last sink is done
    with it, by reference counting: no reference cycle on the way keeps it until the
    collector's next full pass (a recursive closure once did, for every batch)."""
    import gc
    import logging
    import weakref

    from torchstream.sources import PushedSource

    surfaces: list[weakref.ref[torch.Tensor]] = []

    def keep(frame: Frame) -> None:
        assert frame.surface is not None
        surfaces.append(weakref.ref(frame.surface))

    failing = FailOn({("cam", 3)})
    gc.collect()
    gc.disable()
    logging.disable(logging.WARNING)  # pytest's log capture keeps the failure's traceback
    try:
        source = PushedSource("cam")
        with Pipeline(
            [Recorder(), failing], [CallbackSink(keep)], shared_source_threads=shared_threads
        ) as pipeline:
            pipeline.add_source(source)
            for seq in range(20):
                source.push_raw(torch.zeros(8, 8, 3, dtype=torch.uint8), seq=seq)
            source.end()
            assert pipeline.wait(timeout_seconds=30)
        del source
        assert len(surfaces) == 19  # one failed in the stage, on purpose
        assert [ref for ref in surfaces if ref() is not None] == []
    finally:
        logging.disable(logging.NOTSET)
        gc.enable()
