"""The worker in this process against a real server: results flow in order with their
claim, graceful handovers between two workers lose nothing, drops are counted."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest
from tests.nats._helpers import Collector, Replayer, wait_for

from torchstream import BatchPolicy
from torchstream.nats import JetStreamApi, Layout, connect, init_layout
from torchstream.nats._accounting import Accounting
from torchstream.nats._connection import close_quietly
from torchstream.nats._worker import Worker
from torchstream.testing import NatsServer

LAYOUT = Layout(partitions=4, pin_timeout_seconds=0.5, ack_wait_seconds=2.0)


class Mark:
    name = "mark"

    def process(self, frames: object) -> None:
        for frame in frames:  # type: ignore[attr-defined]
            frame.attributes["test.marked"] = True


def _init(server: NatsServer, layout: Layout = LAYOUT) -> None:
    async def main() -> None:
        connection = await connect(server.url)
        await init_layout(connection, layout)
        await close_quietly(connection)

    asyncio.run(main())


def _start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(30)
    return thread


def test_results_flow_in_order_with_their_claim(server: NatsServer) -> None:
    _init(server)
    accounting = Accounting()
    collector = Collector(server.url, LAYOUT, accounting).start()
    worker = Worker(server.url, [Mark()], layout=Layout(), worker_id="w1")
    thread = _start(worker)
    cameras = ["cam-a", "cam-b", "cam-c"]
    replayer = Replayer(server.url, LAYOUT, cameras, accounting, fps=30).start()
    time.sleep(2.0)
    replayer.stop()
    assert wait_for(lambda: len(collector.results) >= 3 * replayer.sent, 10)
    worker.stop()
    thread.join(20)
    collector.stop()
    report = accounting.report()
    assert report.ok, str(report)
    for source in report.sources:
        assert source.processed == source.published > 30, str(report)
    assert {r.worker_id for _, r in collector.results} == {"w1"}
    stats = worker.statistics()
    assert stats.results == 3 * replayer.sent
    assert stats.partitions == ()  # it left
    (stage,) = stats.stages  # its pipeline's, for the CLI's last words
    assert stage.name == "mark" and stage.frames_total == stats.results
    assert 0 < stage.batches_total <= stage.frames_total


class Slow:
    """One frame a batch, 0.1 s each: 10 frames/s, whatever comes in."""

    name = "slow"
    batch_policy = BatchPolicy(max_size=1)

    def process(self, frames: object) -> None:
        time.sleep(0.1)


def test_frames_that_go_stale_inside_the_worker_are_dropped_as_late(server: NatsServer) -> None:
    """Pulled fresh (a large in-flight budget lets them in at once), then too old by the time
    the stage could run: dropped before the stage, counted `late` like a frame too old on
    arrival, instead of computed seconds after anyone wants it."""
    layout = replace(LAYOUT, max_ack_pending=256)
    _init(server, layout)
    accounting = Accounting()
    collector = Collector(server.url, layout, accounting).start()
    worker = Worker(server.url, [Slow()], layout=Layout(), worker_id="w1",
                    max_frame_age_seconds=0.5)
    thread = _start(worker)
    replayer = Replayer(server.url, layout, ["cam-a", "cam-b"], accounting, fps=30).start()
    time.sleep(2.0)
    replayer.stop()
    assert wait_for(lambda: accounting.report().ok, 20), str(accounting.report())
    worker.stop()
    thread.join(20)
    collector.stop()
    report = accounting.report()
    assert report.ok, str(report)
    processed = sum(source.processed for source in report.sources)
    late = sum(source.lost.get("late", 0) for source in report.sources)
    assert late > processed > 0, str(report)
    # Dropped inside the pipeline (its deadline), not only on arrival: the stage ran only on
    # frames still fresh, about 10 a second.
    pipeline = worker.pipeline_statistics()
    assert pipeline is not None and pipeline.dropped.get("deadline", 0) > 0, str(report)
    assert pipeline.stages[0].frames_total == processed


def test_a_results_stream_without_drop_subjects_gets_plain_drop_records(
    server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A results stream made by an earlier version keeps results only: the worker sends its
    # drop records as plain messages (no ack would ever come) and says how to upgrade.
    layout = Layout(prefix="early", input_stream="EARLY_IN", results_stream="EARLY_OUT",
                    partitions=2)

    async def main() -> tuple[bool, bool]:
        connection = await connect(server.url)
        await init_layout(connection, layout)
        api = JetStreamApi(connection)
        worker = Worker(server.url, [], layout=layout, worker_id="w1")
        worker.api = api
        await worker._discover_layout()
        current = worker._drops_stored
        config = layout.results_stream_config()
        assert config is not None
        await api.update_stream({**config, "subjects": ["early.out.*"]})
        await worker._discover_layout()
        earlier = worker._drops_stored
        await close_quietly(connection)
        return current, earlier

    assert asyncio.run(main()) == (True, False)
    assert "does not keep drop records" in caplog.text
