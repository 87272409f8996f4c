"""The video sink re-muxing original packets (transport/_remux.py through VideoResultWriter):
an H.264 clip with B-frames through source adapter -> module -> sink comes out bit-exact,
and results that start mid-GOP or miss a picture still make a playable file."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import Frame
from torchstream.codecs import EncodedPacket, demux_packets
from torchstream.transport import Module, PacketPayload, ResultMessage
from torchstream.transport._adapters import (
    VideoResultWriter,
    receive_results,
    send_video,
)

TIMEOUT = 30.0  # seconds; only reached when something is broken
FRAMES = 48


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real H.264 MP4 with B-frames (3 between references) and a keyframe every 12."""
    path = tmp_path_factory.mktemp("remux") / "bframes.mp4"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={
            "bf": "3", "g": "12", "keyint_min": "12", "sc_threshold": "0"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(FRAMES):
            pixels = rng.integers(0, 40, (64, 96, 3), dtype=np.uint8)
            pixels[8:40, (2 * i) % 70:(2 * i) % 70 + 24] += 200  # something that moves
            picture = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        assert container.streams.video[0].codec_context.has_b_frames
    pts = [p.pts for p in packets]
    assert pts != sorted(pts), "no B-frames: decode order is display order"
    assert sum(p.is_keyframe for p in packets) == FRAMES // 12
    return path


def decoded(path: Path) -> list[tuple[int, np.ndarray]]:
    """Every picture of ``path`` as (pts, YUV planes), decoded by FFmpeg."""
    with av.open(str(path)) as container:
        return [(frame.pts, frame.to_ndarray(format="yuv420p"))
                for frame in container.decode(video=0)]


def assert_same_pictures(
    got: list[tuple[int, np.ndarray]], expected: list[tuple[int, np.ndarray]]
) -> None:
    assert [pts for pts, _ in got] == [pts for pts, _ in expected]
    for (pts, pixels), (_, reference) in zip(got, expected, strict=True):
        assert np.array_equal(pixels, reference), f"picture at pts {pts} differs"


def test_source_module_sink_rewrites_the_packets_bit_exact(
    tmp_path: Path, clip: Path
) -> None:
    inbound, outbound = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    module = Module([], inbound=f"router+bind:{inbound}", outbound=f"push+bind:{outbound}",
                    content="original")
    writer = VideoResultWriter(str(tmp_path / "videos" / "{source_id}.mp4"))
    received: list[object] = []
    sink = threading.Thread(target=lambda: received.append(receive_results(
        f"pull+connect:{outbound}", [writer], exit_after_sources=1,
        idle_timeout_seconds=TIMEOUT)), name="ts/test/sink")
    thread = threading.Thread(target=module.run, name="ts/test/module")
    thread.start()
    try:
        assert module.ready.wait(TIMEOUT)
        sink.start()
        report = send_video(str(clip), f"dealer+connect:{inbound}", source_id="cam")
        sink.join(TIMEOUT)
    finally:
        module.stop()
        thread.join(TIMEOUT)
    assert (report.frames, report.acknowledged) == (FRAMES, True)
    assert writer.paths == [tmp_path / "videos" / "cam.mp4"] and writer.skipped == 0
    assert_same_pictures(decoded(writer.paths[0]), decoded(clip))
    with av.open(str(writer.paths[0])) as container:  # packets copied, not re-encoded
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert len(keyframes) == FRAMES and sum(keyframes) == FRAMES // 12


def results_in_display_order(packets: list[EncodedPacket]) -> list[tuple[ResultMessage, bytes]]:
    """What a module with ``--content original`` sends for ``packets``: one result per
    picture, in display order, each with its packet and the seq the adapter gave it."""
    results = []
    for seq, packet in sorted(enumerate(packets), key=lambda item: item[1].pts or 0):
        time_base = packet.time_base or Fraction(1, 90000)
        payload = PacketPayload(
            codec=packet.codec, width=packet.width, height=packet.height,
            time_base=(time_base.numerator, time_base.denominator), pts=packet.pts,
            dts=packet.dts,  # no duration: the sink falls back on the frame interval
        )
        frame = Frame(source_id="cam", seq=seq, keyframe=packet.keyframe,
                      width=packet.width, height=packet.height)
        results.append((ResultMessage(frame=frame, content="original", payload=payload),
                        packet.data))
    return results


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_results_that_start_mid_gop_start_the_file_at_the_next_keyframe(
    tmp_path: Path, clip: Path, suffix: str
) -> None:
    packets = list(demux_packets(str(clip), source_id="cam"))
    results = results_in_display_order(packets)
    writer = VideoResultWriter(str(tmp_path / f"{{source_id}}.{suffix}"))
    for result, data in results[5:]:  # joined after the first keyframe, mid-GOP
        writer.write(result, memoryview(data))
    writer.end("cam")
    assert writer.skipped == 12 - 5  # the pictures shown before the second keyframe
    expected = decoded(clip)[12:]
    got = decoded(writer.paths[0])
    if suffix == "mkv":  # Matroska counts in milliseconds: compare pixels only
        got = [(pts, pixels) for (pts, _), (_, pixels) in zip(expected, got, strict=True)]
    assert_same_pictures(got, expected)


def test_a_missing_result_is_skipped_once_the_window_moves_on(
    tmp_path: Path, clip: Path
) -> None:
    packets = list(demux_packets(str(clip), source_id="cam"))
    results = results_in_display_order(packets)
    lost = next(i for i, (r, _) in enumerate(results) if r.seq == 30)  # a reference frame
    writer = VideoResultWriter(str(tmp_path / "{source_id}.mp4"), reorder_window=4)
    for index, (result, data) in enumerate(results):
        if index != lost:
            writer.write(result, memoryview(data))
    writer.end("cam")
    assert writer.skipped == 0
    with av.open(str(writer.paths[0])) as container:
        dts = [p.dts for p in container.demux(video=0) if p.size]
    assert len(dts) == FRAMES - 1 and dts == sorted(dts)
    pictures = decoded(writer.paths[0])  # decodes on, up to the damage the loss does
    assert_same_pictures(pictures[:24], decoded(clip)[:24])
