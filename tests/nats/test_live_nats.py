"""``torchstream source camera … --nats URL`` and live inputs published to NATS: the live
adapter (``send_live``, the camera's path) into a :class:`NatsOutlet`, tested through an RTSP
server as tests/transport/test_live_adapter.py tests the camera without a camera; and the
camera command's options and errors."""

from __future__ import annotations

import asyncio
import threading

import pytest
from click.testing import CliRunner
from tests.nats._helpers import wait_for

from torchstream.cli import main
from torchstream.codecs import decode_image
from torchstream.nats import Layout, connect, decode, init_layout
from torchstream.nats._connection import close_quietly
from torchstream.nats._outlet import NatsOutlet
from torchstream.sources._live import LiveDemuxer
from torchstream.testing import NatsServer, RtspTestServer
from torchstream.testing._rtsp import free_port
from torchstream.transport import EndOfStream, FrameMessage, ImagePayload, PacketPayload
from torchstream.transport._adapter_stats import SendMonitor
from torchstream.transport._live_adapter import send_live

LAYOUT = Layout(partitions=2)


def _init(url: str) -> None:
    async def run() -> None:
        connection = await connect(url)
        await init_layout(connection, LAYOUT)
        await close_quietly(connection)

    asyncio.run(run())


def _stored(url: str, source_id: str) -> list[tuple[object, bytes | None]]:
    """Every message of ``source_id`` in the input stream, decoded, with its payload."""

    async def run() -> list[tuple[object, bytes | None]]:
        connection = await connect(url)
        js = connection.jetstream()
        info = await js.stream_info(LAYOUT.input_stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await js.get_msg(LAYOUT.input_stream, seq)
            if LAYOUT.source_id_of(raw.subject or "") == source_id:
                decoded = decode(raw.subject or "", raw.headers, raw.data or b"")
                payload = None if decoded.payload is None else bytes(decoded.payload)
                out.append((decoded.message, payload))
        await close_quietly(connection)
        return out

    return asyncio.run(run())


def _send_a_few(url: str, outlet: NatsOutlet, source_id: str, **options: object) -> None:
    """Run send_live on ``url`` until it sent 3 frames, then stop it (its end of stream)."""
    stop, monitor = threading.Event(), SendMonitor()
    demuxer = LiveDemuxer(url, source_id=source_id, read_timeout_seconds=2.0, stop_event=stop)
    thread = threading.Thread(
        target=send_live, args=(demuxer, outlet),
        kwargs={"stop": stop, "monitor": monitor, **options}, name="ts/test/send-live",
    )
    thread.start()

    def sent() -> int:
        sender = monitor.statistics().senders.get(source_id)
        return 0 if sender is None else sender.sent

    try:
        assert wait_for(lambda: sent() >= 3, 30), "no frames sent within 30 s"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_live_pictures_and_packets_are_published(
    server: NatsServer, own_rtsp_server: RtspTestServer
) -> None:
    _init(server.url)
    with NatsOutlet(server.url, LAYOUT) as outlet:
        # A camera delivering raw pictures (UYVY here): JPEG images, which workers take.
        _send_a_few(own_rtsp_server.url("/raw"), outlet, "cam-raw", raw_pictures="jpeg")
        _send_a_few(own_rtsp_server.url("/h264"), outlet, "cam-h264")
    raw = _stored(server.url, "cam-raw")
    *frames, (eos, _) = raw
    assert len(frames) >= 3 and isinstance(eos, EndOfStream)
    assert [m.seq for m, _ in frames] == list(range(len(frames)))  # type: ignore[attr-defined]
    assert eos.last_seq == len(frames) - 1
    message, data = frames[0]
    assert isinstance(message, FrameMessage) and isinstance(message.payload, ImagePayload)
    assert message.payload.format == "jpeg" and data is not None
    rgb, codec = decode_image(data, source_id="cam-raw")
    assert codec == "mjpeg" and tuple(rgb.shape) == (240, 320, 3)
    assert message.metadata is not None
    assert "live.wallclock_seconds" in message.metadata.attributes
    *frames, (eos, _) = _stored(server.url, "cam-h264")
    assert isinstance(eos, EndOfStream) and frames
    first = frames[0][0]
    assert isinstance(first, FrameMessage) and isinstance(first.payload, PacketPayload)
    assert first.payload.codec == "h264" and first.keyframe


@pytest.mark.usefixtures("restore_signal_handlers")
def test_source_camera_takes_nats(server: NatsServer) -> None:
    runner = CliRunner()
    neither = runner.invoke(main, ["source", "camera", "/dev/video0"])
    assert neither.exit_code == 2 and "one of --out ENDPOINT" in neither.output
    both = runner.invoke(main, ["source", "camera", "/dev/video0", "--nats", server.url,
                                "--out", "push+connect:tcp://127.0.0.1:1"])
    assert both.exit_code == 2 and "one of --out ENDPOINT" in both.output
    size = runner.invoke(main, ["source", "camera", "/dev/video0", "--nats", server.url,
                                "--size", "large"])
    assert size.exit_code == 2 and "--size" in size.output
    url = f"nats://127.0.0.1:{free_port()}"
    unreachable = runner.invoke(main, ["source", "camera", "/dev/video99", "--nats", url])
    assert unreachable.exit_code == 1 and f"cannot reach NATS at {url}" in unreachable.output
    # A reachable server and no camera: the NATS outlet opens, the camera gives up, exit 1.
    _init(server.url)
    missing = runner.invoke(main, [
        "source", "camera", "/dev/video99", "--nats", server.url, "--source-id", "lobby.cam",
        "--input-format", "yuyv422", "--max-reconnects", "0", "--open-timeout", "2",
    ])
    assert missing.exit_code == 1, missing.output
    assert "lobby_cam" in missing.output and "gave up after 0 reconnect attempts" in missing.output
