"""Module mode over real sockets: sources multiplexed into one module, results out, sources
that restart, idle eviction, shutdown, and a module that survives garbage."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchstream.codecs import EncodedPacket, demux_packets
from torchstream.testing import RectangleDetector, SyntheticVideo, write_video
from torchstream.transport import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    Module,
    PacketPayload,
    RawPayload,
    Receiver,
    ResultMessage,
    Sender,
    Shutdown,
    encode,
)

VIDEO = SyntheticVideo(width=160, height=96)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[list[EncodedPacket]]:
    folder = tmp_path_factory.mktemp("module")
    return [
        list(demux_packets(str(write_video(folder / f"c{i}.mp4", VIDEO, 24 + 6 * i,
                                           codec="libx264")), source_id=f"c{i}"))
        for i in range(3)
    ]


def packet_message(source_id: str, seq: int, packet: EncodedPacket) -> FrameMessage:
    time_base = packet.time_base or Fraction(1, 30)
    return FrameMessage(
        source_id=source_id,
        seq=seq,
        keyframe=packet.keyframe,
        payload=PacketPayload(
            codec=packet.codec, width=packet.width, height=packet.height,
            time_base=(time_base.numerator, time_base.denominator), pts=packet.pts,
        ),
    )


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = pixels.shape[1], pixels.shape[0], "rgb24"  # type: ignore[union-attr]
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):  # type: ignore[union-attr]
            container.mux(packet)
        for packet in stream.encode():  # type: ignore[union-attr]
            container.mux(packet)
    return buffer.getvalue()


@contextmanager
def running(module: Module) -> Iterator[Module]:
    thread = threading.Thread(target=module.run, name="module")
    thread.start()
    assert module.ready.wait(10)
    try:
        yield module
    finally:
        module.stop()
        thread.join(30)
        assert not thread.is_alive()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rebind(endpoint: str) -> Receiver:
    """Bind again where a closed socket was (the port is freed asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return Receiver(endpoint)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def endpoints(tmp_path: Path) -> tuple[str, str]:
    return f"router+bind:ipc://{tmp_path}/in", f"push+bind:ipc://{tmp_path}/out"


def collect(url: str, until_eos: set[str], timeout: float = 20.0) -> list[ResultMessage]:
    """Results from the module until every source in ``until_eos`` has ended."""
    results: list[ResultMessage] = []
    waiting = set(until_eos)
    with Receiver(f"pull+connect:{url}") as inbox:
        while waiting:
            message, _ = inbox.recv(timeout)
            if isinstance(message, EndOfStream):
                waiting.discard(message.source_id)
            elif isinstance(message, ResultMessage):
                results.append(message)
    return results


def test_three_sources_multiplexed_every_frame_out_in_order(
    tmp_path: Path, clips: list[list[EncodedPacket]]
) -> None:
    inbound, outbound = endpoints(tmp_path)
    module = Module([RectangleDetector()], inbound=inbound, outbound=outbound)
    with running(module):
        out = threading.Thread(target=lambda: results.extend(collect(
            outbound.split(":", 1)[1], {"cam0", "cam1", "cam2"})))
        results: list[ResultMessage] = []
        out.start()
        with Sender(f"dealer+connect:{inbound.split(':', 1)[1]}") as sender:
            streams = [iter(enumerate(packets)) for packets in clips]
            live = {0, 1, 2}
            while live:  # interleave the three sources on one connection
                for index in sorted(live):
                    item = next(streams[index], None)
                    if item is None:
                        live.discard(index)
                        assert sender.send_eos(f"cam{index}", last_seq=len(clips[index]) - 1)
                        continue
                    seq, packet = item
                    sender.send(packet_message(f"cam{index}", seq, packet), packet.data)
        out.join(30)
        stats = module.statistics()
    for index in range(3):
        frames = [r.frame for r in results if r.source_id == f"cam{index}"]
        assert len(frames) == len(clips[index])
        assert [f.pts_seconds for f in frames] == sorted(f.pts_seconds or 0 for f in frames)
        assert all(f.objects for f in frames)  # the detector ran
    assert stats.inbound.rejected_total == 0 and not stats.messages_refused


def test_images_raw_pixels_and_original_content(tmp_path: Path) -> None:
    inbound, outbound = endpoints(tmp_path)
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (10, 200, 30)
    module = Module([], inbound=inbound, outbound=outbound, content="original")
    with running(module):
        results: list[ResultMessage] = []
        out = threading.Thread(
            target=lambda: results.extend(collect(outbound.split(":", 1)[1], {"uploads"}))
        )
        out.start()
        with Sender(f"dealer+connect:{inbound.split(':', 1)[1]}") as sender:
            data = png(pixels)
            traceparent = f"00-{'ab' * 16}-{'cd' * 8}-01"
            sender.send(
                FrameMessage(source_id="uploads", seq=7, payload=ImagePayload(format="png"),
                             traceparent=traceparent),
                data,
            )
            bgr = np.ascontiguousarray(pixels[:, :, ::-1])
            sender.send(
                FrameMessage(source_id="uploads", seq=8,
                             payload=RawPayload(width=60, height=40, format="bgr24")),
                bgr,
            )
            sender.send_eos("uploads", last_seq=8)
        out.join(30)
    assert [r.seq for r in results] == [7, 8]
    first, second = results
    assert first.traceparent == traceparent and first.content == "original"
    assert first.payload == ImagePayload(format="png")
    assert (first.frame.width, first.frame.height) == (60, 40)
    assert second.content == "original" and second.payload == RawPayload(
        width=60, height=40, format="bgr24"
    )


def test_a_restarted_sender_resumes_its_source(
    tmp_path: Path, clips: list[list[EncodedPacket]]
) -> None:
    inbound, outbound = endpoints(tmp_path)
    packets = clips[0]
    module = Module([], inbound=inbound, outbound=outbound)
    with running(module):
        results: list[ResultMessage] = []
        out = threading.Thread(
            target=lambda: results.extend(collect(outbound.split(":", 1)[1], {"cam"}))
        )
        out.start()
        url = inbound.split(":", 1)[1]
        first = Sender(f"dealer+connect:{url}")
        for seq, packet in enumerate(packets[:10]):
            first.send(packet_message("cam", seq, packet), packet.data)
        first.close()  # the adapter dies: no end of stream
        # (a restart takes far longer than the module needs for what was in flight)
        deadline = time.monotonic() + 10
        while module.statistics().inbound.received < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        with Sender(f"dealer+connect:{url}") as second:  # a new connection, the same source id
            for seq, packet in enumerate(packets):
                second.send(packet_message("cam", 100 + seq, packet), packet.data)
            assert second.send_eos("cam", last_seq=100 + len(packets) - 1)
        out.join(30)
    # What the first connection's packets gave (up to 10 frames), then every frame of the
    # second's from a fresh decoder (the keyframe whose pts went back marks the restart).
    # A frame's seq is its packet's, so B-frames make seqs out of display order.
    seqs = [r.seq for r in results]
    restart = next(i for i, seq in enumerate(seqs) if seq >= 100)
    assert all(seq < 100 for seq in seqs[:restart]) and restart <= 10
    assert sorted(seqs[restart:]) == [100 + seq for seq in range(len(packets))]


def test_idle_sources_end_and_come_back_as_new_sessions(tmp_path: Path) -> None:
    inbound, outbound = endpoints(tmp_path)
    module = Module(
        [], inbound=inbound, outbound=outbound, idle_timeout_seconds=0.3, drain_timeout_seconds=1
    )
    raw = np.zeros((8, 8, 3), dtype=np.uint8)
    with running(module):
        url = outbound.split(":", 1)[1]
        with Receiver(f"pull+connect:{url}") as results, Sender(
            f"dealer+connect:{inbound.split(':', 1)[1]}"
        ) as sender:
            message = FrameMessage(source_id="cam", seq=0,
                                   payload=RawPayload(width=8, height=8, format="rgb24"))
            sender.send(message, raw)
            kinds = [type(results.recv(10)[0]).__name__ for _ in range(2)]
            assert kinds == ["ResultMessage", "EndOfStream"]  # idle: the session ended
            sender.send(message, raw)  # it comes back
            assert isinstance(results.recv(10)[0], ResultMessage)
        sessions = module.statistics().pipeline.sources["cam"].sessions
    assert sessions == 2


def test_shutdown_needs_the_secret_and_drains(tmp_path: Path) -> None:
    inbound, outbound = endpoints(tmp_path)
    module = Module([], inbound=inbound, outbound=outbound, shutdown_secret="s3cret")
    thread = threading.Thread(target=module.run)
    thread.start()
    assert module.ready.wait(10)
    with Sender(f"dealer+connect:{inbound.split(':', 1)[1]}") as sender:
        sender.send(Shutdown(secret="wrong"))
        sender.send(
            FrameMessage(source_id="cam", seq=0,
                         payload=RawPayload(width=8, height=8, format="gray8")),
            np.zeros((8, 8, 1), dtype=np.uint8),
        )
        with Receiver(f"pull+connect:{outbound.split(':', 1)[1]}") as results:
            assert isinstance(results.recv(10)[0], ResultMessage)
            assert thread.is_alive()
            sender.send(Shutdown(secret="s3cret", reason="test"))
            thread.join(20)
            assert not thread.is_alive()
            assert isinstance(results.recv(10)[0], EndOfStream)  # drained and ended


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_garbage_is_counted_and_good_traffic_still_served(
    tmp_path_factory: pytest.TempPathFactory, parts: list[bytes]
) -> None:
    _fuzz_once(tmp_path_factory.mktemp("fuzz"), parts)


_FUZZ: dict[str, object] = {}


def _fuzz_once(folder: Path, parts: list[bytes]) -> None:
    # One module for the whole fuzz run (starting one per example would dominate the time).
    if "module" not in _FUZZ:
        inbound, outbound = endpoints(folder)
        module = Module([], inbound=inbound, outbound=outbound)
        thread = threading.Thread(target=module.run, daemon=True)
        thread.start()
        assert module.ready.wait(10)
        context = zmq.Context.instance()
        raw = context.socket(zmq.DEALER)
        raw.connect(inbound.split(":", 1)[1])
        results = Receiver(f"pull+connect:{outbound.split(':', 1)[1]}")
        _FUZZ.update(module=module, raw=raw, results=results, seq=0)
    module, raw, results = _FUZZ["module"], _FUZZ["raw"], _FUZZ["results"]
    assert isinstance(module, Module) and isinstance(results, Receiver)
    if parts:
        raw.send_multipart(parts)  # type: ignore[attr-defined]
    seq = int(_FUZZ["seq"])  # type: ignore[call-overload]
    _FUZZ["seq"] = seq + 1
    good = FrameMessage(source_id="good", seq=seq,
                        payload=RawPayload(width=4, height=4, format="rgb24"))
    raw.send_multipart(encode(good, bytes(48)))  # type: ignore[attr-defined]
    message, _ = results.recv(10)
    assert isinstance(message, ResultMessage) and message.seq == seq


def test_fuzz_module_counted_rejects() -> None:
    module = _FUZZ.get("module")
    if module is None:
        pytest.skip("runs after the fuzz test")
    assert isinstance(module, Module)
    stats = module.statistics()
    assert stats.inbound.rejected_total > 0
    module.stop()
    results = _FUZZ["results"]
    assert isinstance(results, Receiver)
    results.close()
    _FUZZ["raw"].close(linger=0)  # type: ignore[attr-defined]
    _FUZZ.clear()


def test_health_is_ready_without_sources_and_not_while_stopping(tmp_path: Path) -> None:
    inbound, outbound = endpoints(tmp_path)
    module = Module([], inbound=inbound, outbound=outbound)
    assert not module.health().alive
    thread = threading.Thread(target=module.run)
    thread.start()
    assert module.ready.wait(10)
    health = module.health()
    assert health.alive and health.ready and "accepting frames" in health.reason
    assert module.pipeline is not None and not module.pipeline.health().ready  # no source yet
    module.stop()
    thread.join(30)
    assert not module.health().ready


def test_results_survive_a_killed_sink_on_acknowledged_links(tmp_path: Path) -> None:
    """Module --out dealer+connect, sink router+bind: a sink killed with results received but
    not handled gets them again when it restarts; nothing is lost."""
    from torchstream.transport import ResultAck

    # tcp: a closed ipc listener unlinks its path asynchronously, which can remove the path
    # a restarted listener just bound (a ZeroMQ race, not ours).
    inbound, results_url = f"router+bind:ipc://{tmp_path}/in", f"tcp://127.0.0.1:{free_port()}"
    frames = 60
    raw = np.zeros((8, 8, 3), dtype=np.uint8)
    first = Receiver(f"router+bind:{results_url}")
    module = Module([], inbound=inbound, outbound=f"dealer+connect:{results_url}")
    assert module._publish is not None
    module._publish._window = 8  # a small window: the module must wait for acks
    module._publish._resend_after = 0.3
    handled: set[int] = set()
    with running(module), Sender(f"dealer+connect:ipc://{tmp_path}/in") as sender:
        feeder = threading.Thread(target=lambda: [
            sender.send(FrameMessage(source_id="cam", seq=seq,
                                     payload=RawPayload(width=8, height=8, format="rgb24")), raw)
            for seq in range(frames)
        ])
        feeder.start()
        for _ in range(20):  # the first sink handles 20 results, acknowledging each ...
            message, _ = first.recv(10)
            assert isinstance(message, ResultMessage)
            handled.add(message.seq)
            first.reply(ResultAck(source_id="cam", seq=message.seq))
        for _ in range(3):  # ... then takes 3 more and dies before handling them
            first.recv(10)
        first.close()
        feeder.join(30)
        sender.send_eos("cam", last_seq=frames - 1)
        second = rebind(f"router+bind:{results_url}")  # restarted on the same address
        try:
            while True:
                message, _ = second.recv(10)
                if isinstance(message, ResultMessage):
                    handled.add(message.seq)
                    second.reply(ResultAck(source_id="cam", seq=message.seq))
                elif isinstance(message, EndOfStream):
                    assert len(handled) == frames  # the end comes after every result
                    break
        finally:
            module.stop()
        stats = module.statistics()
    second.close()
    assert handled == set(range(frames))
    assert module._publish.resent >= 3 and module._publish.unacknowledged == 0
    assert stats.pipeline.sinks[0].errors_total == 0


def test_the_sink_adapter_acknowledges_and_drops_resent_copies(tmp_path: Path) -> None:
    from torchstream.transport._adapters import ResultWriter, receive_results

    class Collect(ResultWriter):
        def __init__(self) -> None:
            self.seqs: list[int] = []

        def write(self, result: ResultMessage, content: memoryview | None) -> None:
            self.seqs.append(result.seq)

    results_url = f"ipc://{tmp_path}/results"
    module = Module([], inbound=f"router+bind:ipc://{tmp_path}/in",
                    outbound=f"dealer+connect:{results_url}")
    writer = Collect()
    assert module._publish is not None
    module._publish._resend_after = 0.0  # every write sends again what is unacknowledged
    receiving = threading.Thread(target=receive_results, args=(
        f"router+bind:{results_url}", [writer]), kwargs={"exit_after_sources": 1})
    receiving.start()
    raw = np.zeros((8, 8, 3), dtype=np.uint8)
    with running(module), Sender(f"dealer+connect:ipc://{tmp_path}/in") as sender:
        for seq in range(30):
            sender.send(FrameMessage(source_id="cam", seq=seq,
                                     payload=RawPayload(width=8, height=8, format="rgb24")), raw)
        sender.send_eos("cam", last_seq=29)
        receiving.join(30)
    # The module stopped after its sink saw every ack; the copies it sent were written once.
    assert module._publish.unacknowledged == 0
    assert module._publish.resent > 0
    assert writer.seqs == list(range(30))


def test_module_metrics_count_rejects_refusals_and_results(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client", reason="pip install 'torchstream[telemetry]'")
    from prometheus_client import CollectorRegistry, generate_latest

    from torchstream.telemetry import ModuleCollector

    inbound, outbound = endpoints(tmp_path)
    module = Module([], inbound=inbound, outbound=outbound)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModuleCollector(module))
    assert generate_latest(registry) == b""  # not running yet: nothing to report
    with running(module), Receiver(f"pull+connect:{outbound.split(':', 1)[1]}") as results, \
            Sender(f"dealer+connect:{inbound.split(':', 1)[1]}") as sender:
        context = zmq.Context.instance()
        raw = context.socket(zmq.DEALER)
        raw.connect(inbound.split(":", 1)[1])
        raw.send_multipart([b"cam", b"not msgpack"])
        raw.close(linger=1000)
        sender.send(FrameMessage(source_id="cam", seq=0))  # valid, but no pixels
        sender.send(FrameMessage(source_id="cam", seq=1,
                                 payload=RawPayload(width=2, height=2, format="rgb24")),
                    bytes(12))
        assert isinstance(results.recv(10)[0], ResultMessage)
        assert "torchstream_module_sources_open 1.0" in generate_latest(registry).decode()
        module.stop()  # while results are still read: the end of stream goes out
        assert isinstance(results.recv(10)[0], EndOfStream)
    text = generate_latest(registry).decode()  # the final counts
    assert 'torchstream_transport_messages_rejected_total{reason="bad_header"} 1.0' in text
    assert 'torchstream_module_messages_refused_total{reason="no_payload"} 1.0' in text
    assert "torchstream_transport_results_sent_total 2.0" in text  # the result and the end


@pytest.mark.gpu
def test_a_module_on_cuda_decodes_received_packets_with_nvdec(
    tmp_path: Path, clips: list[list[EncodedPacket]]
) -> None:
    inbound, outbound = endpoints(tmp_path)
    module = Module([RectangleDetector()], inbound=inbound, outbound=outbound, device="cuda")
    decoders: list[str | None] = []
    with running(module):
        results: list[ResultMessage] = []
        out = threading.Thread(
            target=lambda: results.extend(collect(outbound.split(":", 1)[1], {"cam"}))
        )
        out.start()
        with Sender(f"dealer+connect:{inbound.split(':', 1)[1]}") as sender:
            for seq, packet in enumerate(clips[1]):
                sender.send(packet_message("cam", seq, packet), packet.data)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the decoder starts with the first packet
                source = module.statistics().pipeline.sources.get("cam")
                if source is not None and source.decoder is not None:
                    decoders.append(source.decoder)
                    break
                time.sleep(0.01)
            assert sender.send_eos("cam", last_seq=len(clips[1]) - 1)
        out.join(30)
    assert decoders == ["nvdec"]
    assert len(results) == len(clips[1])
    assert all(r.frame.objects for r in results)  # the detector ran on the GPU surfaces
