"""The client SDK's NATS sinks (:class:`NatsSink`, :class:`AsyncNatsSink`) and
``torchstream sink json --nats`` against a real server: a real worker's results in order with
their trace ids, fencing and deduplication counted, filters, start points, errors."""

from __future__ import annotations

import asyncio
import datetime
import threading

import msgspec
import pytest
from click.testing import CliRunner
from tests.nats._helpers import frame_message, h264_packets

from torchstream import Frame
from torchstream.cli import main
from torchstream.client import AsyncNatsSink, NatsSink, Result
from torchstream.nats import (
    Layout,
    LayoutError,
    NatsUnavailableError,
    Publisher,
    connect,
    encode,
    init_layout,
)
from torchstream.nats._connection import close_quietly
from torchstream.nats._tickets import with_claim
from torchstream.nats._wire import WIRE_HEADER, WIRE_VERSION, Encoded
from torchstream.nats._worker import Worker
from torchstream.testing import NatsServer
from torchstream.testing._rtsp import free_port
from torchstream.transport import EndOfStream, FrameMessage, ImagePayload, ResultMessage

LAYOUT = Layout(partitions=2, pin_timeout_seconds=0.5, ack_wait_seconds=2.0)


def _init(url: str) -> None:
    async def run() -> None:
        connection = await connect(url)
        await init_layout(connection, LAYOUT)
        await close_quietly(connection)

    asyncio.run(run())


def _result(source_id: str, seq: int, worker: str, epoch: int, partition: int = 1) -> Encoded:
    """A result as a worker publishes it, with its claim headers."""
    message = ResultMessage(frame=Frame(source_id=source_id, seq=seq, width=2, height=2))
    encoded = encode(LAYOUT.result_subject(source_id), message)
    return with_claim(encoded, worker, partition, epoch)


def _eos(source_id: str, last_seq: int) -> Encoded:
    return encode(LAYOUT.result_subject(source_id), EndOfStream(source_id=source_id,
                                                                last_seq=last_seq))


def _publish(url: str, messages: list[Encoded], *, stored: bool = False) -> None:
    """Publish ``messages`` in order (``stored``: wait for each to be in the results stream)."""

    async def run() -> None:
        connection = await connect(url)
        js = connection.jetstream()
        for m in messages:
            if stored:
                await js.publish(m.subject, m.body, headers=m.headers)
            else:
                await connection.publish(m.subject, m.body, headers=m.headers)
        await connection.flush()
        await close_quietly(connection)

    asyncio.run(run())


def _seqs(results: list[Result]) -> list[object]:
    return ["eos" if r.end_of_stream else r.seq for r in results]


class _Mark:
    name = "mark"

    def process(self, frames: object) -> None:
        for frame in frames:  # type: ignore[attr-defined]
            frame.attributes["test.marked"] = True


def _traceparent(source_id: str, seq: int) -> str:
    return f"00-{source_id.encode().hex():0>32}-{seq + 1:016x}-01"


def test_a_workers_results_arrive_in_order_with_their_trace_ids(server: NatsServer) -> None:
    _init(server.url)
    worker = Worker(server.url, [_Mark()], layout=LAYOUT, worker_id="w1")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    cameras, packets = ["cam-a", "cam-b"], h264_packets(12)
    try:
        assert worker.ready.wait(30)
        with NatsSink(server.url, idle_timeout_seconds=15) as sink:

            async def publish() -> None:
                connection = await connect(server.url)
                publisher = Publisher(connection, LAYOUT)
                for seq, packet in enumerate(packets):
                    for camera in cameras:
                        message = msgspec.structs.replace(
                            frame_message(camera, seq, packet),
                            traceparent=_traceparent(camera, seq),
                        )
                        await publisher.publish(message, packet.data)
                for camera in cameras:
                    assert await publisher.end(camera, last_seq=len(packets) - 1)
                await publisher.close()
                await close_quietly(connection)

            asyncio.run(publish())
            got: dict[str, list[Result]] = {camera: [] for camera in cameras}
            for result in sink:
                got[result.source_id].append(result)
                if all(r and r[-1].end_of_stream for r in got.values()):
                    break
            stats = sink.statistics()
    finally:
        worker.stop()
        thread.join(20)
    for camera in cameras:
        assert _seqs(got[camera]) == [*range(len(packets)), "eos"]
        assert got[camera][-1].seq == len(packets) - 1  # the end of stream's last seq
        for result in got[camera][:-1]:
            assert result.trace_id == _traceparent(camera, result.seq or 0)[3:35]
            assert result.frame is not None and result.frame.attributes["test.marked"]
            assert result.stream_seq is None  # read live
    assert (stats.results, stats.end_of_streams, stats.fenced, stats.duplicates) == (
        2 * len(packets), 2, 0, 0,
    )
    assert stats.endpoint == server.url

    # The same results again from the results stream: one source, then resumed mid-way.
    async def read(start: object, count: int) -> list[Result]:
        out = []
        async with AsyncNatsSink(server.url, source_ids=["cam-b"], start=start,  # type: ignore[arg-type]
                                 layout=LAYOUT, idle_timeout_seconds=5) as sink:
            async for result in sink:
                out.append(result)
                if len(out) == count:
                    break
        return out

    stored = asyncio.run(read("first", len(packets) + 1))
    assert _seqs(stored) == [*range(len(packets)), "eos"]
    assert [r.trace_id for r in stored] == [r.trace_id for r in got["cam-b"]]
    stream_seqs = [r.stream_seq for r in stored]
    assert all(isinstance(s, int) for s in stream_seqs)
    assert stream_seqs == sorted(stream_seqs)
    resumed = asyncio.run(read((stored[4].stream_seq or 0) + 1, len(packets) - 4))
    assert _seqs(resumed) == [*range(5, len(packets)), "eos"]


def test_stale_epochs_and_copies_are_dropped_and_counted(server: NatsServer) -> None:
    stray = encode(LAYOUT.result_subject("cam-a"),
                   FrameMessage(source_id="cam-a", seq=9, payload=ImagePayload(format="jpeg")),
                   b"\xff\xd8\xff\xe0" + bytes(16))
    messages = [
        _result("cam-a", 0, "w1", 2),
        _result("cam-a", 1, "w1", 2),
        _result("cam-a", 2, "w2", 3),  # w2 took the partition over: claim epoch 3
        _result("cam-a", 3, "w1", 2),  # w1 does not know yet: fenced
        _result("cam-a", 2, "w2", 3),  # a copy: duplicate
        Encoded(LAYOUT.result_subject("cam-a"), {WIRE_HEADER: WIRE_VERSION}, b"\x00"),
        stray,  # a frame on a result subject: unexpected
        _result("cam-a", 3, "w2", 3),
        _eos("cam-a", 3),
        _eos("cam-a", 3),  # published again by a worker that took over: duplicate
        _result("cam-a", 0, "w2", 3),  # a new session of the same camera starts at 0
        _result("cam-a", 1, "w1", 2),  # still fenced
    ]
    with NatsSink(server.url, layout=LAYOUT, idle_timeout_seconds=2) as sink:
        _publish(server.url, messages)
        got = [sink.recv(10) for _ in range(6)]
        with pytest.raises(TimeoutError, match=server.url):
            sink.recv(0.3)
        stats = sink.statistics()
    assert _seqs(got) == [0, 1, 2, 3, "eos", 0]
    assert (stats.results, stats.end_of_streams) == (5, 1)
    assert (stats.fenced, stats.duplicates, stats.unexpected) == (2, 2, 1)
    assert stats.rejected == {"parts": 1}
    with pytest.raises(Exception, match="closed"):
        sink.recv(0)


async def _drain(sink: AsyncNatsSink) -> list[Result]:
    return [result async for result in sink]


def test_source_filters_live_and_from_the_stream(server: NatsServer) -> None:
    _init(server.url)
    messages = [_result(s, seq, "w1", 1) for seq in range(3) for s in ("cam-a", "cam-b", "lobby")]

    async def run() -> tuple[list[Result], ...]:
        exact = AsyncNatsSink(server.url, source_ids=["cam-a", "lobby"], layout=LAYOUT)
        by_prefix = AsyncNatsSink(server.url, prefix="cam-", layout=LAYOUT)
        async with exact, by_prefix:
            await asyncio.to_thread(_publish, server.url, messages, stored=True)
            first = [await exact.recv(10) for _ in range(6)]
            second = [await by_prefix.recv(10) for _ in range(6)]
            stats = exact.statistics(), by_prefix.statistics()
        assert stats[0].filtered == 3 and stats[1].filtered == 3
        stored = AsyncNatsSink(server.url, source_ids=["cam-b"], start="first", layout=LAYOUT,
                               idle_timeout_seconds=1)
        async with stored:
            third = [result async for result in stored]
        assert stored.statistics().filtered == 0  # the consumer's filter: only cam-b comes
        since = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        async with AsyncNatsSink(server.url, source_ids=["lobby"], start=since, layout=LAYOUT,
                                 idle_timeout_seconds=1) as by_time:
            assert [r.seq async for r in by_time] == [0, 1, 2]
        # Closing from another task ends a waiting iteration.
        waiting = AsyncNatsSink(server.url, source_ids=["nobody"], layout=LAYOUT)
        await waiting.open()
        reader = asyncio.create_task(asyncio.wait_for(_drain(waiting), 10))
        await asyncio.sleep(0.1)
        await waiting.aclose()
        assert await reader == []
        return first, second, third

    first, second, third = asyncio.run(run())
    assert [(r.source_id, r.seq) for r in first] == [
        (s, seq) for seq in range(3) for s in ("cam-a", "lobby")
    ]
    assert [(r.source_id, r.seq) for r in second] == [
        (s, seq) for seq in range(3) for s in ("cam-a", "cam-b")
    ]
    assert [(r.source_id, r.seq) for r in third] == [("cam-b", seq) for seq in range(3)]


def test_unreachable_server_missing_stream_and_bad_options(server: NatsServer) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnavailableError, match=f"cannot reach NATS at {url}"):
        NatsSink(url, connect_timeout_seconds=1)

    async def unreachable() -> None:
        async with AsyncNatsSink(url, connect_timeout_seconds=1):
            pass

    with pytest.raises(NatsUnavailableError, match=f"cannot reach NATS at {url}"):
        asyncio.run(unreachable())
    # A server without `torchstream nats init`: no results stream to start from.
    with pytest.raises(LayoutError, match=f"{server.url}: no results stream TS_OUT"):
        NatsSink(server.url, start="first")
    with NatsSink(server.url) as live:  # live needs no stream
        # Closing from another thread ends a waiting iteration.
        threading.Timer(0.2, live.close).start()
        assert list(live) == []
    for bad, match in [
        ({"start": "oldest"}, "start must be"),
        ({"start": 0}, "stream sequence must be >= 1"),
        ({"start": True}, "start must be"),
        ({"start": datetime.datetime(2025, 1, 1)}, "timezone-aware"),
        ({"source_ids": ["cam.1"]}, "cannot travel over NATS"),
        ({"source_ids": ["a"], "prefix": "b"}, "not both"),
        ({"idle_timeout_seconds": -1}, "idle_timeout_seconds"),
        ({"connect_timeout_seconds": 0}, "connect_timeout_seconds"),
    ]:
        with pytest.raises(ValueError, match=match):
            AsyncNatsSink(server.url, **bad)  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_signal_handlers")
def test_cli_sink_reads_the_stream_fenced(server: NatsServer) -> None:
    _init(server.url)
    _publish(server.url, [
        _result("cam-a", 0, "w1", 1), _result("cam-a", 1, "w2", 2),
        _result("cam-a", 2, "w1", 1), _result("lobby", 0, "w2", 2), _eos("cam-a", 1),
    ], stored=True)
    done = CliRunner().invoke(main, [
        "sink", "json", "-", "--nats", server.url, "--start", "first", "--source", "cam-",
        "--exit-after", "1", "--idle-timeout", "5",
    ])
    assert done.exit_code == 0, done.output
    lines = [line for line in done.output.splitlines() if line.startswith("{")]
    assert [msgspec.json.decode(line)["seq"] for line in lines] == [0, 1]
    assert "2 results, 1 sources ended, 0 errors, 1 fenced, 0 duplicates" in done.output
    usage = CliRunner().invoke(main, ["sink", "json", "-", "--in", "sub+connect:tcp://"
                                      "127.0.0.1:1", "--start", "first"])
    assert usage.exit_code == 2 and "--start reads the NATS results stream" in usage.output
    bad = CliRunner().invoke(main, ["sink", "json", "-", "--nats", server.url, "--start", "x"])
    assert bad.exit_code == 2 and "--start" in bad.output
