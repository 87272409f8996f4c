"""The test servers of torchstream.testing: NatsServer, NatsCluster and TcpProxy."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from torchstream.nats import Layout, Publisher, connect, init_layout
from torchstream.nats._connection import close_quietly
from torchstream.testing import NatsCluster, NatsServer, TcpProxy
from torchstream.transport import FrameMessage, PacketPayload


def test_stop_kill_and_restart_by_pid(server: NatsServer) -> None:
    pid = server.pid
    assert pid is not None
    assert server.monitor("/varz")["server_name"] == "ts-test"
    server.stop()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.start()
    assert server.pid not in (None, pid)
    server.kill()
    assert not server.running
    server.restart()
    assert server.running


def _frame(seq: int) -> FrameMessage:
    return FrameMessage(
        source_id="cam", seq=seq, keyframe=True,
        payload=PacketPayload(codec="h264", width=64, height=48, time_base=(1, 90000)),
    )


@pytest.mark.slow
def test_a_cluster_elects_leaders_and_keeps_acknowledged_frames_when_one_dies(
    cluster: NatsCluster,
) -> None:
    layout = Layout(partitions=2, replicas=3)

    async def publish(seqs: range) -> None:
        connection = await connect(cluster.urls)
        await init_layout(connection, layout)
        async with Publisher(connection, layout) as publisher:
            for seq in seqs:
                await publisher.publish(_frame(seq), b"\x01")
            await publisher.flush()
            assert publisher.statistics().acknowledged == len(seqs)
        await close_quietly(connection)

    async def stored() -> int:
        connection = await connect(cluster.urls)
        info = await connection.jetstream().stream_info(layout.input_stream)
        await close_quietly(connection)
        return int(info.state.messages)

    assert cluster.meta_leader() in cluster.nodes
    asyncio.run(publish(range(20)))
    leader = cluster.stream_leader(layout.input_stream)
    assert leader is not None
    leader.kill()
    deadline = time.monotonic() + 30
    while (new := cluster.stream_leader(layout.input_stream)) in (None, leader):
        assert time.monotonic() < deadline, "no new stream leader"
        time.sleep(0.2)
    assert asyncio.run(stored()) == 20
    leader.start()  # rejoins with its store
    assert leader.running and new is not leader


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, name="ts/test/echo", daemon=True)
    thread.start()
    return listener, thread


def test_the_proxy_forwards_blackholes_and_heals() -> None:
    listener, thread = _echo_server()
    with TcpProxy("127.0.0.1", listener.getsockname()[1]) as proxy, socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=2
    ) as client:
        client.sendall(b"one")
        assert client.recv(16) == b"one"
        proxy.blackhole()
        assert proxy.blackholed
        client.sendall(b"two")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)  # nothing comes back, and the connection stays open
        proxy.heal()
        client.settimeout(2)
        assert client.recv(16) == b"two"  # held, not lost: TCP would retransmit it
        proxy.drop_connections()
        assert client.recv(16) == b""
        assert proxy.connections == 1
    listener.close()
    thread.join(2)
