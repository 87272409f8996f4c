"""The publisher against a real server: acks, order, keyframe positions, large images,
duplicates, and what it counts when the stream or the server is missing."""

from __future__ import annotations

import asyncio

import pytest

from torchstream._errors import ClosedResourceError
from torchstream.nats import Layout, Publisher, connect, decode, init_layout
from torchstream.nats._connection import close_quietly
from torchstream.nats._wire import check_object, decode_keyframe_position
from torchstream.testing import NatsServer
from torchstream.transport import FrameMessage, ImagePayload, PacketPayload

JPEG = b"\xff\xd8\xff\xe0"


def _frame(source_id: str, seq: int, *, keyframe: bool = False) -> FrameMessage:
    return FrameMessage(
        source_id=source_id, seq=seq, pts_seconds=seq / 30, keyframe=keyframe,
        payload=PacketPayload(codec="h264", width=64, height=48, time_base=(1, 90000),
                              pts=3000 * seq),
    )


async def _stored(connection: object, layout: Layout) -> list[tuple[str, object]]:
    """Every message of the input stream, decoded, in stream order."""
    js = connection.jetstream()  # type: ignore[attr-defined]
    info = await js.stream_info(layout.input_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await js.get_msg(layout.input_stream, seq)
        out.append((raw.subject, decode(raw.subject, raw.headers, raw.data)))
    return out


def test_frames_are_stored_in_order_and_keyframes_recorded(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=4)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        async with Publisher(connection, layout, max_in_flight=8) as publisher:
            for seq in range(40):
                for source_id in ("cam-a", "cam-b"):
                    await publisher.publish(
                        _frame(source_id, seq, keyframe=seq % 10 == 0), b"\x00\x00\x01" + bytes(
                            [seq]) * 100
                    )
            assert await publisher.end("cam-a", last_seq=39)
            assert await publisher.end("cam-b", last_seq=39)
            assert await publisher.flush()
            stats = publisher.statistics()
        assert stats.published == stats.acknowledged == 82
        assert stats.errors == {} and stats.in_flight == 0
        stored = await _stored(connection, layout)
        for source_id in ("cam-a", "cam-b"):
            mine = [d for s, d in stored if s.endswith(f".{source_id}")]
            assert {s for s, d in stored if s.endswith(f".{source_id}")} == {
                layout.partition_subject(layout.partition_of(source_id), source_id)
            }
            assert [d.message.seq for d in mine[:-1]] == list(range(40))
            assert mine[-1].message.last_seq == 39  # the end of stream comes last
            assert bytes(mine[5].payload) == b"\x00\x00\x01" + bytes([5]) * 100
        # The keyframe bucket points at each source's last keyframe (seq 30).
        kv = await connection.jetstream().key_value(layout.keyframes_bucket)
        for source_id in ("cam-a", "cam-b"):
            position = decode_keyframe_position((await kv.get(source_id)).value)
            assert position.seq == 30
            raw = await connection.jetstream().get_msg(layout.input_stream, position.stream_seq)
            keyframe = decode(raw.subject, raw.headers, raw.data).message
            assert (keyframe.source_id, keyframe.seq, keyframe.keyframe) == (source_id, 30, True)
        assert stats.keyframes_recorded == 8
        await connection.close()

    asyncio.run(main())


def test_a_re_sent_frame_is_stored_once(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=1)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        async with Publisher(connection, layout) as publisher:
            for seq in (0, 1, 1, 2):
                await publisher.publish(_frame("cam", seq), b"\x01")
            await publisher.flush()
            stats = publisher.statistics()
        assert stats.acknowledged == 4 and stats.duplicates == 1
        assert [d.message.seq for _, d in await _stored(connection, layout)] == [0, 1, 2]
        await connection.close()

    asyncio.run(main())


def test_a_large_image_goes_through_the_object_store(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=1)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        big = JPEG + bytes(range(256)) * 8192  # 2 MiB: over a message's 1 MiB limit
        image = FrameMessage(source_id="cam", seq=0, payload=ImagePayload(format="jpeg"))
        async with Publisher(connection, layout) as publisher:
            await publisher.publish(image, big)
            await publisher.publish(
                FrameMessage(source_id="cam", seq=1, payload=ImagePayload(format="jpeg")),
                JPEG + b"small",
            )
            await publisher.flush()
            assert publisher.statistics().objects_stored == 1
        (_, first), (_, second) = await _stored(connection, layout)
        assert first.object_name == "cam/0" and first.payload is None
        store = await connection.jetstream().object_store(layout.objects_bucket)
        fetched = await store.get(first.object_name)
        assert bytes(check_object(first, fetched.data)) == big
        assert bytes(second.payload) == JPEG + b"small"
        await connection.close()

    asyncio.run(main())


def test_without_a_stream_every_publish_is_counted_as_an_error(server: NatsServer) -> None:
    async def main() -> None:
        connection = await connect(server.url)
        async with Publisher(connection, Layout()) as publisher:
            for seq in range(3):
                await publisher.publish(_frame("cam", seq), b"\x01")
            assert await publisher.flush()
            stats = publisher.statistics()
        assert stats.errors == {"no_stream": 3} and stats.acknowledged == 0
        await connection.close()

    asyncio.run(main())


def test_a_dead_server_times_acks_out_and_frees_the_window(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=1)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        publisher = Publisher(connection, layout, max_in_flight=4, ack_timeout_seconds=0.5)
        await publisher.publish(_frame("cam", 0), b"\x01")
        await publisher.flush()
        server.kill()
        # Eight publishes through a window of four: the later ones wait for the timeouts.
        for seq in range(1, 9):
            await asyncio.wait_for(publisher.publish(_frame("cam", seq), b"\x01"), 5)
        await publisher.close()
        stats = publisher.statistics()
        assert stats.acknowledged == 1 and stats.errors == {"ack_timeout": 8}
        with pytest.raises(ClosedResourceError):
            await publisher.publish(_frame("cam", 9), b"\x01")
        await close_quietly(connection)

    asyncio.run(main())


def test_on_stored_tells_each_frame_whether_it_was_stored(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=1)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        outcomes: list[tuple[int, bool]] = []

        def record(seq: int, stored: bool) -> None:
            outcomes.append((seq, stored))
            if seq == 1:
                raise RuntimeError("a callback that fails")  # logged, nothing else breaks

        publisher = Publisher(connection, layout, ack_timeout_seconds=0.5)
        for seq in range(3):
            await publisher.publish(_frame("cam", seq), b"\x01",
                                    on_stored=lambda stored, seq=seq: record(seq, stored))
        assert await publisher.flush()
        assert sorted(outcomes) == [(0, True), (1, True), (2, True)]
        server.kill()  # no answer any more: the timeout, then False
        await publisher.publish(_frame("cam", 3), b"\x01",
                                on_stored=lambda stored: record(3, stored))
        await publisher.close()
        assert outcomes[-1] == (3, False)
        assert publisher.statistics().errors == {"ack_timeout": 1}
        await close_quietly(connection)

    asyncio.run(main())


def test_publish_checks_its_input(server: NatsServer) -> None:
    async def main() -> None:
        connection = await connect(server.url)
        async with Publisher(connection, Layout()) as publisher:
            with pytest.raises(ValueError, match="cannot travel over NATS"):
                await publisher.publish(_frame("cam.1", 0), b"\x01")
            with pytest.raises(ValueError, match="pass it"):
                await publisher.publish(_frame("cam", 0))
            assert publisher.statistics().published == 0
        with pytest.raises(ValueError, match="max_in_flight must be >= 1, got 0"):
            Publisher(connection, Layout(), max_in_flight=0)
        await connection.close()

    asyncio.run(main())


def test_a_restarted_server_keeps_what_was_acknowledged(server: NatsServer) -> None:
    async def main(phase: str) -> list[int]:
        layout = Layout(partitions=2)
        connection = await connect(server.url)
        if phase == "before":
            await init_layout(connection, layout)
            async with Publisher(connection, layout) as publisher:
                for seq in range(10):
                    await publisher.publish(_frame("cam", seq), b"\x01")
        seqs = [d.message.seq for _, d in await _stored(connection, layout)]
        await connection.close()
        return seqs

    assert asyncio.run(main("before")) == list(range(10))
    server.kill()  # a crash: the file store recovers what was acknowledged
    server.start()
    assert asyncio.run(main("after")) == list(range(10))
