"""PushedSource: packets, images and raw pictures pushed from another thread, decoded on the
source's thread; demux_packets gives what a source adapter sends."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from torchstream import ClosedResourceError, Frame, OverloadedError, Pipeline, SourceError
from torchstream.codecs import EncodedPacket, decode_image, demux_packets
from torchstream.sinks import CallbackSink
from torchstream.sources import PushedSource, VideoSource
from torchstream.testing import SyntheticVideo, write_video

VIDEO = SyntheticVideo(width=160, height=96)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("pushed") / "clip.mp4", VIDEO, 40, codec="libx264")


def packets(path: Path) -> list[EncodedPacket]:
    return list(demux_packets(str(path), source_id="clip"))


def encode_image(pixels: np.ndarray, codec: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = pixels.shape[1], pixels.shape[0]  # type: ignore[union-attr]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"  # type: ignore[union-attr]
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        for packet in stream.encode(frame):  # type: ignore[union-attr]
            container.mux(packet)
        for packet in stream.encode():  # type: ignore[union-attr]
            container.mux(packet)
    return buffer.getvalue()


@pytest.fixture(params=[None, 2], ids=["own-thread", "shared-threads"])
def shared(request: pytest.FixtureRequest) -> int | None:
    """Pipeline(shared_source_threads=): a thread per source, or shared threads."""
    return request.param  # type: ignore[no-any-return]


def run(
    source: PushedSource, feed: threading.Thread | None = None, shared: int | None = None
) -> list[Frame]:
    """All frames ``source`` produces in a CPU pipeline, fed by ``feed`` meanwhile."""
    frames: list[Frame] = []
    with Pipeline([], [CallbackSink(frames.append)], shared_source_threads=shared) as pipeline:
        pipeline.add_source(source)
        if feed is not None:
            feed.start()
        pipeline.wait()
        if feed is not None:
            feed.join()
    stats = pipeline.statistics()
    assert stats.dropped_total == 0
    return frames


def test_demux_packets_are_annex_b_with_keyframes_and_pts(clip: Path) -> None:
    demuxed = packets(clip)
    assert len(demuxed) == 40 and demuxed[0].keyframe
    assert {p.codec for p in demuxed} == {"h264"}
    assert demuxed[0].data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    assert (demuxed[0].width, demuxed[0].height) == (160, 96)


def test_pushed_packets_decode_like_the_file(clip: Path, shared: int | None) -> None:
    source = PushedSource("cam", max_queued=4)  # smaller than the clip: pushes must wait

    def feed() -> None:
        for packet in packets(clip):
            source.push_packet(
                packet.data, codec=packet.codec, pts=packet.pts, time_base=packet.time_base,
                keyframe=packet.keyframe,
            )
        source.end()

    frames = run(source, threading.Thread(target=feed), shared)
    reference = list(VideoSource(clip, decoder="pyav").frames())
    assert len(frames) == len(reference) == 40
    for ours, theirs in zip(frames, reference, strict=True):
        assert ours.pts_seconds == pytest.approx(theirs.pts_seconds)
        assert ours.keyframe == theirs.keyframe
        assert torch.equal(ours.surface, theirs.surface)  # type: ignore[arg-type]
    assert [f.seq for f in frames] == list(range(40))


def test_decoding_starts_at_a_keyframe(clip: Path, shared: int | None) -> None:
    demuxed = packets(clip)
    source = PushedSource("late-joiner")
    for packet in demuxed[5:]:  # joined mid-GOP: the first packets are not decodable alone
        source.push_packet(
            packet.data, codec=packet.codec, pts=packet.pts, time_base=packet.time_base,
            keyframe=packet.keyframe,
        )
    source.end()
    frames = run(source, shared=shared)
    keyframes = [i for i, p in enumerate(demuxed) if p.keyframe and i >= 5]
    expected = len(demuxed) - keyframes[0] if keyframes else 0
    assert len(frames) == expected
    assert all(not source.errors for _ in [0])


def test_attributes_and_trace_follow_their_packet(clip: Path, shared: int | None) -> None:
    source = PushedSource("traced")
    demuxed = packets(clip)
    for index, packet in enumerate(demuxed):
        source.push_packet(
            packet.data, codec=packet.codec, pts=packet.pts, time_base=packet.time_base,
            keyframe=packet.keyframe, attributes={"request": index},
            traceparent=f"00-{index:032x}-{index + 1:016x}-01",
        )
    source.end()
    frames = run(source, shared=shared)
    # Frames come out in display order, packets went in in decode order (B-frames): each
    # frame carries the attributes of the packet with its pts.
    by_pts = {p.pts: i for i, p in enumerate(demuxed)}
    time_base = demuxed[0].time_base
    assert time_base is not None and len(frames) == 40
    assert [f.attributes["request"] for f in frames] == [
        by_pts[round((f.pts_seconds or 0.0) / time_base)] for f in frames
    ]
    assert sorted(f.attributes["request"] for f in frames) == list(range(40))
    assert all(
        f.__dict__["_traceparent"] == f"00-{f.attributes['request']:032x}-"
        f"{f.attributes['request'] + 1:016x}-01"
        for f in frames
    )


def test_corrupt_packets_fail_this_source_with_its_name(clip: Path, shared: int | None) -> None:
    demuxed = packets(clip)
    source = PushedSource("broken")
    source.push_packet(
        demuxed[0].data, codec="h264", pts=0, time_base=demuxed[0].time_base, keyframe=True
    )
    source.push_packet(b"\x00\x00\x00\x01" + bytes(range(256)) * 8, codec="nosuchcodec")
    source.end()
    with Pipeline(
        [], [CallbackSink(lambda frame: None)], shared_source_threads=shared
    ) as pipeline:
        pipeline.add_source(source)
        pipeline.wait()
    errors = pipeline.statistics().sources["broken"].errors
    assert errors and "nosuchcodec" in errors[0] and "broken" in errors[0]


def test_images_and_raw_pictures_become_one_frame_each(shared: int | None) -> None:
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (200, 30, 30)
    source = PushedSource("uploads")
    source.push_image(encode_image(pixels, "png"), attributes={"name": "a.png"})
    source.push_image(b"definitely not an image", attributes={"name": "junk"})
    source.push_image(encode_image(pixels, "mjpeg"), attributes={"name": "b.jpg"})
    source.push_raw(torch.from_numpy(pixels), attributes={"name": "raw"})
    source.end()
    frames = run(source, shared=shared)
    assert [f.attributes["name"] for f in frames] == ["a.png", "b.jpg", "raw"]
    assert [f.seq for f in frames] == [0, 2, 3]  # the junk kept its place
    assert torch.equal(frames[0].surface, torch.from_numpy(pixels))  # type: ignore[arg-type]
    assert (frames[1].surface.float() - torch.from_numpy(pixels).float()).abs().mean() < 4  # type: ignore[union-attr]
    assert frames[2].codec == "" and torch.equal(frames[2].surface, torch.from_numpy(pixels))  # type: ignore[arg-type]
    assert len(source.errors) == 1 and "junk" in source.errors[0]


def test_oversized_image_is_refused_before_decoding() -> None:
    big = encode_image(np.zeros((64, 64, 3), dtype=np.uint8), "png")
    with pytest.raises(SourceError, match="exceeds max_pixels"):
        decode_image(big, source_id="s", max_pixels=1000)
    source = PushedSource("s", max_pixels=1000)
    with pytest.raises(ValueError, match="exceeds max_pixels"):
        source.push_raw(torch.zeros(64, 64, 3, dtype=torch.uint8))


def test_backpressure_times_out_and_pushes_after_end_are_refused(shared: int | None) -> None:
    source = PushedSource("slow", max_queued=2)
    raw = torch.zeros(8, 8, 3, dtype=torch.uint8)
    source.push_raw(raw)
    source.push_raw(raw)
    with pytest.raises(OverloadedError, match="2 items already queued"):
        source.push_raw(raw, timeout=0.05)
    source.end()
    with pytest.raises(ClosedResourceError, match="ended"):
        source.push_raw(raw)
    assert len(run(source, shared=shared)) == 2


def test_bad_raw_pictures_are_named() -> None:
    with pytest.raises(ValueError, match="uint8 \\(height, width, 3\\)"):
        PushedSource("s").push_raw(torch.zeros(8, 8, 4, dtype=torch.uint8))


@pytest.mark.gpu
def test_pushed_packets_on_nvdec_match_pyav(clip: Path) -> None:
    def decode(decoder: str) -> list[Frame]:
        source = PushedSource("cam", decoder=decoder)  # type: ignore[arg-type]
        for packet in packets(clip):
            source.push_packet(
                packet.data, codec=packet.codec, pts=packet.pts, time_base=packet.time_base,
                keyframe=packet.keyframe,
            )
        source.end()
        source.prepare(torch.device("cuda"))
        return list(source.frames())

    gpu, cpu = decode("nvdec"), decode("pyav")
    assert len(gpu) == len(cpu) == 40
    for a, b in zip(gpu, cpu, strict=True):
        assert a.surface is not None and a.surface.is_cuda
        assert a.pts_seconds == pytest.approx(b.pts_seconds) and a.keyframe == b.keyframe
        a.__dict__["_ready"].synchronize()
        assert (a.surface.cpu().float() - b.surface.cpu().float()).abs().mean() < 3  # type: ignore[union-attr]


def test_image_decoder_reuses_decoders_and_checks_sizes_first() -> None:
    from torchstream.codecs._pyav import ImageDecoder

    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[10:20] = (250, 250, 250)
    decoder = ImageDecoder(source_id="s", max_pixels=64 * 48)
    png = encode_image(pixels, "png")
    for _ in range(3):  # the same decoder, image after image
        rgb, codec = decoder.decode(png)
        assert codec == "png" and torch.equal(rgb, torch.from_numpy(pixels))
    jpeg = encode_image(pixels, "mjpeg")
    rgb, codec = decoder.decode(jpeg)
    assert codec == "mjpeg" and (rgb.float() - torch.from_numpy(pixels).float()).abs().mean() < 4
    with pytest.raises(SourceError, match="exceeds max_pixels"):
        ImageDecoder(source_id="s", max_pixels=100).decode(jpeg)
    with pytest.raises(SourceError, match=r"corrupt|no picture"):
        decoder.decode(jpeg[:40] + bytes(200))
    assert decoder.decode(png)[1] == "png"  # a bad image does not spoil the next one


@pytest.mark.gpu
def test_nvdec_sources_on_shared_threads_decode_what_own_threads_decode(clip: Path) -> None:
    demuxed = packets(clip)

    def decode(shared: int | None) -> dict[str, list[tuple[int, float]]]:
        seen: dict[str, list[tuple[int, float]]] = {}

        def keep(frame: Frame) -> None:
            assert frame.surface is not None and frame.surface.is_cuda
            frame.__dict__["_ready"].synchronize()
            seen.setdefault(frame.source_id, []).append(
                (frame.seq, float(frame.surface.float().mean()))
            )

        cameras = [PushedSource(f"cam{i}", decoder="nvdec") for i in range(4)]
        with Pipeline(
            [], [CallbackSink(keep)], device="cuda", shared_source_threads=shared
        ) as pipeline:
            for camera in cameras:
                pipeline.add_source(camera)
            for packet in demuxed:
                for camera in cameras:
                    camera.push_packet(
                        packet.data, codec=packet.codec, pts=packet.pts,
                        time_base=packet.time_base, keyframe=packet.keyframe, timeout=30,
                    )
            for camera in cameras:
                camera.end()
            assert pipeline.wait(timeout_seconds=60)
        return seen

    own, shared = decode(None), decode(2)
    assert sorted(shared) == [f"cam{i}" for i in range(4)]
    assert all(len(frames) == 40 for frames in shared.values())
    assert shared == own
