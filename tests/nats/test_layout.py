"""The layout on a real server: what init creates, idempotence, refusals, the mapping."""

from __future__ import annotations

import asyncio
import json

import pytest

from torchstream.nats import (
    JetStreamApi,
    Layout,
    LayoutError,
    NatsUnavailableError,
    check_source_id,
    connect,
    init_layout,
)
from torchstream.testing import NatsServer


def test_init_creates_everything_once(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=4, pin_timeout_seconds=0.75, max_ack_pending=32)
        connection = await connect(server.url)
        report = await init_layout(connection, layout)
        assert set(report.created) == {
            "TS_IN", "TS_OUT", "consumer ts-p0", "consumer ts-p1", "consumer ts-p2",
            "consumer ts-p3", "kv ts_keyframes", "kv ts_workers", "objects ts_images",
        }
        again = await init_layout(connection, layout)
        assert not again.changed and len(again.unchanged) == len(report.created)

        api = JetStreamApi(connection)
        stream = await api.stream_info("TS_IN")
        assert stream is not None
        assert stream["config"]["subject_transform"] == {
            "src": "ts.in.*", "dest": "ts.p.{{partition(4,1)}}.{{wildcard(1)}}"
        }
        assert stream["config"]["discard"] == "old" and stream["config"]["storage"] == "file"
        consumer = await api.consumer_info("TS_IN", "ts-p2")
        assert consumer is not None
        config = consumer["config"]
        assert config["filter_subject"] == "ts.p.2.*"
        assert config["ack_policy"] == "explicit" and config["max_ack_pending"] == 32
        assert config["priority_policy"] == "pinned_client"
        assert config["priority_groups"] == ["ts"]
        assert config["priority_timeout"] == 750_000_000

        # Settings other than the partition count are updated in place.
        changed = Layout(partitions=4, pin_timeout_seconds=2.0, max_ack_pending=32)
        updated = await init_layout(connection, changed)
        assert set(updated.updated) == {f"consumer ts-p{i}" for i in range(4)}
        consumer = await api.consumer_info("TS_IN", "ts-p2")
        assert consumer is not None and consumer["config"]["priority_timeout"] == 2 * 10**9
        await connection.close()

    asyncio.run(main())


def test_an_earlier_results_stream_takes_the_drop_records_too(server: NatsServer) -> None:
    # Before drop records were stored, the results stream captured ts.out.* only.
    async def main() -> None:
        connection = await connect(server.url)
        api = JetStreamApi(connection)
        layout = Layout(prefix="old", input_stream="OLD_IN", results_stream="OLD_OUT",
                        partitions=2)
        config = layout.results_stream_config()
        assert config is not None and config["subjects"] == ["old.out.*", "old.drop.*"]
        await api.create_stream({**config, "subjects": ["old.out.*"]})
        report = await init_layout(connection, layout)
        assert "OLD_OUT" in report.updated
        stream = await api.stream_info("OLD_OUT")
        assert stream is not None
        assert stream["config"]["subjects"] == ["old.out.*", "old.drop.*"]
        ack = await connection.jetstream().publish("old.drop.cam", b"{}")
        assert ack.stream == "OLD_OUT"
        await connection.close()

    asyncio.run(main())


def test_another_partition_count_is_refused(server: NatsServer) -> None:
    async def main() -> None:
        connection = await connect(server.url)
        await init_layout(connection, Layout(partitions=4))
        with pytest.raises(LayoutError, match="4 partitions, the layout asks for 8"):
            await init_layout(connection, Layout(partitions=8))
        await connection.close()

    asyncio.run(main())


def test_a_foreign_stream_on_the_input_subjects_is_refused(server: NatsServer) -> None:
    async def main() -> None:
        connection = await connect(server.url)
        await JetStreamApi(connection).create_stream({"name": "OTHER", "subjects": ["ts.>"]})
        with pytest.raises(LayoutError, match="another stream already captures"):
            await init_layout(connection, Layout(partitions=2))
        await connection.close()

    asyncio.run(main())


def test_the_server_maps_sources_to_the_partition_computed_here(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=7, results_stream=None)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        js = connection.jetstream()
        ids = [f"cam-{i}" for i in range(40)] + ["A_b-9", "x" * 256]
        for source_id in ids:
            ack = await js.publish(layout.input_subject(source_id), b"x")
            stored = await js.get_msg(layout.input_stream, ack.seq)
            assert stored.subject == layout.partition_subject(
                layout.partition_of(source_id), source_id
            )
        assert len({layout.partition_of(i) for i in ids}) == 7
        await connection.close()

    asyncio.run(main())


def test_live_limits_discard_the_oldest(server: NatsServer) -> None:
    async def main() -> None:
        layout = Layout(partitions=1, max_bytes=1 << 20, results_stream=None)
        connection = await connect(server.url)
        await init_layout(connection, layout)
        js = connection.jetstream()
        for _ in range(80):
            await js.publish(layout.input_subject("cam"), b"\x00" * 20_000)
        info = await JetStreamApi(connection).stream_info(layout.input_stream)
        assert info is not None
        state = info["state"]
        assert state["bytes"] <= 1 << 20
        assert state["first_seq"] > 1 and state["last_seq"] == 80
        await connection.close()

    asyncio.run(main())


def test_unreachable_server_is_a_clear_error() -> None:
    from torchstream.testing._rtsp import free_port

    url = f"nats://127.0.0.1:{free_port()}"

    async def main() -> None:
        with pytest.raises(NatsUnavailableError, match=f"cannot reach NATS at {url}"):
            await connect(url, connect_timeout_seconds=1.0)

    asyncio.run(main())


def test_layout_checks_its_settings() -> None:
    with pytest.raises(ValueError, match=r"partitions must be in 1\.\.1024, got 0"):
        Layout(partitions=0)
    with pytest.raises(ValueError, match="ack_wait_seconds"):
        Layout(pin_timeout_seconds=5.0, ack_wait_seconds=2.0)
    with pytest.raises(ValueError, match="prefix"):
        Layout(prefix="ts.*")
    with pytest.raises(ValueError, match="replicas must be 1, 3 or 5"):
        Layout(replicas=2)
    with pytest.raises(ValueError, match=r"partition must be in 0\.\.3"):
        Layout(partitions=4).consumer_name(4)
    for bad in ("a.b", "", "cam 1", "*", ">", "x" * 257):
        with pytest.raises(ValueError, match="cannot travel over NATS"):
            check_source_id(bad)
    layout = Layout(partitions=4)
    assert layout.input_subject("cam-1") == "ts.in.cam-1"
    assert layout.result_subject("cam-1") == "ts.out.cam-1"
    assert Layout.source_id_of("ts.p.3.cam-1") == "cam-1"
    # The configs are JSON as the API takes them.
    json.dumps([layout.input_stream_config(), layout.consumer_config(3)])
