"""The pinned-client behaviour of a real nats-server, through the shim.

Timings seen on this 2-core machine (nats-server 2.15.1, pin timeout 0.5 s): a second client
takes a silent client's partition 0.5-0.6 s after its last pull; unpin hands over at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from torchstream.nats import (
    JetStreamApi,
    JetStreamError,
    Layout,
    PinnedPuller,
    connect,
    init_layout,
)
from torchstream.testing import NatsServer, TcpProxy


async def _setup(url: str, **settings: object) -> tuple[object, Layout]:
    layout = Layout(partitions=1, **settings)  # type: ignore[arg-type]
    connection = await connect(url)
    await init_layout(connection, layout)
    return connection, layout


async def _publish(connection: object, layout: Layout, names: list[str]) -> None:
    js = connection.jetstream()  # type: ignore[attr-defined]
    for name in names:
        await js.publish(layout.input_subject(name), name.encode())


def _puller(connection: object, layout: Layout, group: str | None = None) -> PinnedPuller:
    return PinnedPuller(
        connection, layout.input_stream, layout.consumer_name(0),  # type: ignore[arg-type]
        group=group or layout.priority_group,
    )


def test_one_client_is_pinned_and_the_other_waits(server: NatsServer) -> None:
    async def main() -> None:
        connection, layout = await _setup(server.url, pin_timeout_seconds=2.0)
        await _publish(connection, layout, [f"cam{i}" for i in range(6)])
        first, second = _puller(connection, layout), _puller(connection, layout)
        got = await first.pull(batch=3, expires_seconds=1.0)
        assert got.outcome == "complete"
        assert [m.data for m in got.messages] == [b"cam0", b"cam1", b"cam2"]
        assert got.pin_id is not None and first.pin_id == got.pin_id
        waited = await second.pull(batch=3, expires_seconds=0.3)
        assert waited.outcome == "expired" and waited.messages == []
        assert second.pin_id is None
        again = await first.pull(batch=3, expires_seconds=1.0)
        assert [m.data for m in again.messages] == [b"cam3", b"cam4", b"cam5"]
        assert again.pin_id == got.pin_id
        info = await JetStreamApi(connection).consumer_info(  # type: ignore[arg-type]
            layout.input_stream, layout.consumer_name(0)
        )
        assert info is not None
        assert info["priority_groups"][0]["pinned_client_id"] == got.pin_id
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_a_silent_client_loses_the_pin_and_its_unacked_messages_move(
    server: NatsServer,
) -> None:
    pin_timeout = 0.5

    async def main() -> None:
        connection, layout = await _setup(
            server.url, pin_timeout_seconds=pin_timeout, ack_wait_seconds=1.5
        )
        await _publish(connection, layout, [f"cam{i}" for i in range(6)])
        first, second = _puller(connection, layout), _puller(connection, layout)
        got = await first.pull(batch=3, expires_seconds=1.0)
        assert got.outcome == "complete"
        last_pull = time.monotonic()  # first now stops pulling, acks nothing
        received: dict[bytes, int] = {}
        took_over = None
        while len(received) < 6 and time.monotonic() - last_pull < 10:
            result = await second.pull(batch=6, expires_seconds=0.2)
            if result.messages and took_over is None:
                took_over = time.monotonic() - last_pull
                assert result.pin_id is not None and result.pin_id != got.pin_id
            for message in result.messages:
                received[message.data] = message.metadata.num_delivered
                await message.ack()
        assert took_over is not None, "the second client never got the partition"
        # Never before the pin timed out; and soon after (generous for a loaded machine).
        assert pin_timeout * 0.9 <= took_over < pin_timeout + 1.5, took_over
        # The new messages first; the silent client's three come again after their ack wait.
        assert received == {
            b"cam0": 2, b"cam1": 2, b"cam2": 2, b"cam3": 1, b"cam4": 1, b"cam5": 1
        }
        stale = await first.pull(batch=1, expires_seconds=0.3)
        assert stale.outcome == "wrong_pin" and stale.messages == []
        assert first.pin_id is None
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_unpin_hands_the_partition_over_at_once(server: NatsServer) -> None:
    async def main() -> None:
        # A long pin timeout: only the unpin can explain a quick handover.
        connection, layout = await _setup(
            server.url, pin_timeout_seconds=10.0, ack_wait_seconds=30.0
        )
        await _publish(connection, layout, ["a", "b", "c", "d"])
        first, second = _puller(connection, layout), _puller(connection, layout)
        got = await first.pull(batch=2, expires_seconds=1.0)
        for message in got.messages:
            await message.ack()
        started = time.monotonic()
        await first.unpin()
        taken = await second.pull(batch=2, expires_seconds=5.0)
        assert taken.outcome == "complete"
        assert [m.data for m in taken.messages] == [b"c", b"d"]
        assert time.monotonic() - started < 2.0
        assert taken.pin_id not in (None, got.pin_id)
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_no_wait_and_bad_group_outcomes(server: NatsServer) -> None:
    async def main() -> None:
        connection, layout = await _setup(server.url)
        empty = await _puller(connection, layout).pull(batch=1, expires_seconds=1.0, no_wait=True)
        assert empty.outcome == "no_messages"
        wrong = await _puller(connection, layout, group="nobody").pull(
            batch=1, expires_seconds=1.0
        )
        assert wrong.outcome == "bad_request" and "Priority Group" in wrong.description
        api = JetStreamApi(connection)  # type: ignore[arg-type]
        with pytest.raises(JetStreamError) as raised:
            await api.unpin(layout.input_stream, layout.consumer_name(0), group="nobody")
        assert raised.value.code == 400
        assert await api.consumer_info(layout.input_stream, "missing") is None
        assert await api.stream_info("MISSING") is None
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_heartbeats_reveal_a_blackholed_link(server: NatsServer) -> None:
    async def main(proxy: TcpProxy) -> None:
        connection, layout = await _setup(f"nats://{proxy.address}")
        puller = _puller(connection, layout)
        quiet = await puller.pull(batch=1, expires_seconds=0.6, heartbeat_seconds=0.2)
        assert quiet.outcome == "expired"  # heartbeats kept an idle request alive
        proxy.blackhole()
        started = time.monotonic()
        lost = await puller.pull(batch=1, expires_seconds=10.0, heartbeat_seconds=0.2)
        assert lost.outcome == "no_reply"
        assert time.monotonic() - started < 5.0  # not the 10 s expiry
        proxy.heal()
        await connection.close()  # type: ignore[attr-defined]

    with TcpProxy("127.0.0.1", server.port) as proxy:
        asyncio.run(main(proxy))


def test_messages_are_handed_over_as_they_arrive(server: NatsServer) -> None:
    # A slow partition never fills a batch: each message goes to `on_message` while the
    # request still waits. The handler publishes a third message; the same request gets it.
    async def main() -> None:
        connection, layout = await _setup(server.url, pin_timeout_seconds=2.0)
        await _publish(connection, layout, ["cam0", "cam1"])
        puller = _puller(connection, layout)
        handled: list[bytes] = []

        async def on_message(message: object) -> None:
            handled.append(message.data)  # type: ignore[attr-defined]
            if len(handled) == 1:
                await _publish(connection, layout, ["cam2"])

        got = await puller.pull(batch=5, expires_seconds=1.0, on_message=on_message)
        assert handled == [b"cam0", b"cam1", b"cam2"]
        assert [m.data for m in got.messages] == handled and got.outcome == "expired"
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(main())
