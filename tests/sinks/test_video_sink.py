from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from torchstream import (
    AnnotationStyle,
    BrokenResourceError,
    ClosedResourceError,
    Frame,
    Session,
    Sink,
)
from torchstream._draw import label_color
from torchstream.codecs import VideoEncoder
from torchstream.sinks._video import VideoSink, safe_filename_part

WIDTH, HEIGHT = 96, 64


@dataclass
class Decoded:
    width: int
    height: int
    times: list[float]
    pixels: list[np.ndarray]


def decode(path: Path) -> Decoded:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, pixels = [], []
        for frame in container.decode(stream):
            assert frame.time is not None
            times.append(frame.time)
            pixels.append(frame.to_ndarray(format="rgb24"))
        return Decoded(stream.codec_context.width, stream.codec_context.height, times, pixels)


def solid(
    source_id: str, seq: int, color: tuple[int, int, int], pts_seconds: float | None
) -> Frame:
    frame = Frame(source_id=source_id, seq=seq, pts_seconds=pts_seconds, width=WIDTH, height=HEIGHT)
    frame.surface = torch.tensor(color, dtype=torch.uint8).expand(HEIGHT, WIDTH, 3).clone()
    return frame


def two_sources(count: int = 30) -> Iterator[Frame]:
    """Interleaved frames of two sources: red at 25 fps from 0 s, blue at 10 fps from 100 s."""
    for seq in range(count):
        yield solid("cam-a", seq, (200, 40, 40), seq / 25)
        yield solid("cam/b", seq, (30, 60, 200), 100 + seq / 10)


def test_two_sources_give_two_playable_files(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mp4")
    assert isinstance(sink, Sink)
    for frame in two_sources():
        sink.write(frame)
    sink.end_session(Session("cam-a"))
    sink.end_session(Session("cam/b"))
    sink.close()

    assert sink.written_paths == [tmp_path / "out.mp4", tmp_path / "out-cam_b.mp4"]
    for path, color, fps in [
        (tmp_path / "out.mp4", (200, 40, 40), 25),
        (tmp_path / "out-cam_b.mp4", (30, 60, 200), 10),
    ]:
        video = decode(path)
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        assert len(video.times) == 30
        assert all(b > a for a, b in zip(video.times, video.times[1:], strict=False))
        # Real timing is kept, relative to the first frame.
        assert video.times == pytest.approx([seq / fps for seq in range(30)], abs=1e-3)
        for pixels in video.pixels:
            assert np.abs(pixels.reshape(-1, 3).mean(axis=0) - color).max() < 4


def test_annotations_are_in_the_video(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "boxes.mkv", style=AnnotationStyle(labels=False, line_width=6))
    for seq in range(5):
        frame = solid("cam", seq, (128, 128, 128), seq / 30)
        frame.add_object(label="car", confidence=0.9, box=[20, 10, 80, 60])
        sink.write(frame)
    sink.close()
    video = decode(tmp_path / "boxes.mkv")
    assert len(video.pixels) == 5
    edge = video.pixels[-1][30, 20:26].astype(float).mean(axis=0)
    assert np.abs(edge - label_color("car")).max() < 12
    assert np.abs(video.pixels[-1][35, 50].astype(float) - 128).max() < 6


def test_template_path(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "{source_id}.mkv", crf=30, preset="ultrafast")
    for frame in two_sources(count=3):
        sink.write(frame)
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam-a.mkv", "cam_b.mkv"]
    assert sorted(sink.written_paths) == [tmp_path / "cam-a.mkv", tmp_path / "cam_b.mkv"]
    assert len(decode(tmp_path / "cam_b.mkv").times) == 3


def test_template_directory_is_not_checked_until_the_first_frame(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "{source_id}" / "video.mp4")
    with pytest.raises(BrokenResourceError, match=r"cam-a[/\\]video\.mp4"):
        sink.write(solid("cam-a", 0, (1, 2, 3), 0.0))
    # The source's later frames fail the same way (not as "closed") until its session ends.
    with pytest.raises(BrokenResourceError, match="cam-a"):
        sink.write(solid("cam-a", 1, (1, 2, 3), 0.1))
    sink.end_session(Session("cam-a"))
    (tmp_path / "cam-a").mkdir()
    sink.write(solid("cam-a", 2, (1, 2, 3), 0.2))
    sink.close()
    assert sink.written_paths == [tmp_path / "cam-a" / "video-s1.mp4"]


def test_a_source_that_comes_back_gets_a_new_file(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mkv")
    sink.write(solid("cam", 0, (10, 20, 30), 0.0))
    sink.end_session(Session("cam"))
    sink.write(solid("cam", 1, (10, 20, 30), 50.0))
    sink.write(solid("cam", 2, (10, 20, 30), 50.5))
    sink.close()
    assert sink.written_paths == [tmp_path / "out.mkv", tmp_path / "out-s1.mkv"]
    assert decode(tmp_path / "out-s1.mkv").times == pytest.approx([0.0, 0.5], abs=1e-3)

    sessions = VideoSink(tmp_path / "{source_id}-{session}.mkv")
    for index in range(2):
        sessions.write(solid("cam", index, (10, 20, 30), None))
        sessions.end_session(Session("cam", index=index))
    sessions.close()
    assert sessions.written_paths == [tmp_path / "cam-0.mkv", tmp_path / "cam-1.mkv"]


def test_sources_whose_names_clash_get_separate_files(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "{source_id}.mkv")
    sink.write(solid("cam/1", 0, (1, 2, 3), 0.0))
    sink.write(solid("cam:1", 0, (1, 2, 3), 0.0))
    sink.close()
    assert sink.written_paths == [tmp_path / "cam_1.mkv", tmp_path / "cam_1-2.mkv"]


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mp4")
    sink.write(solid("cam", 0, (1, 2, 3), 0.0))
    sink.close()
    sink.close()
    sink.end_session(Session("cam"))  # nothing left to finish
    with pytest.raises(ClosedResourceError, match="'video' is closed"):
        sink.write(solid("cam", 1, (1, 2, 3), 0.1))
    assert len(decode(tmp_path / "out.mp4").times) == 1


def test_no_frames_no_files(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mp4")
    sink.close()
    assert sink.written_paths == [] and list(tmp_path.iterdir()) == []


def test_missing_or_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"directory '.*nowhere' does not exist"):
        VideoSink(tmp_path / "nowhere" / "out.mp4")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"directory '.*file' is not a directory"):
        VideoSink(tmp_path / "file" / "out.mp4")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="is not writable"):
            VideoSink(locked / "out.mp4")


def test_encoder_errors_name_the_path(tmp_path: Path) -> None:
    encoder = VideoEncoder(tmp_path / "gone" / "out.mkv")
    with pytest.raises(BrokenResourceError, match=r"gone[/\\]out\.mkv: cannot create"):
        encoder.encode(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ClosedResourceError):
        encoder.encode(torch.zeros(8, 8, 3, dtype=torch.uint8))


def test_frame_without_surface_names_the_source(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="'door-cam' has no surface"):
        sink.write(Frame(source_id="door-cam", seq=0, width=4, height=4))
    sink.close()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"path": "out.avi"}, "path"),
        ({"path": "{camera}.mp4"}, "fields"),
        ({"path": "out-{session}.mp4"}, "source_id"),
        ({"crf": 60}, "crf"),
        ({"preset": "turbo"}, "preset"),
        ({"fps": 0}, "fps"),
    ],
)
def test_options_are_checked(tmp_path: Path, kwargs: dict[str, object], parameter: str) -> None:
    options: dict[str, object] = {"path": "out.mp4", **kwargs}
    path = tmp_path / str(options.pop("path"))
    with pytest.raises(ValueError, match=parameter):
        VideoSink(path, **options)  # type: ignore[arg-type]


def test_odd_sizes_are_padded_and_missing_pts_use_fps(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    frames = torch.zeros(4, 25, 33, 3, dtype=torch.uint8)
    frames[..., 1] = 200
    with VideoEncoder(path, fps=12.5) as encoder:
        for frame in frames:
            encoder.encode(frame)
        with pytest.raises(ValueError, match="size of the first one"):
            encoder.encode(torch.zeros(24, 32, 3, dtype=torch.uint8))
    video = decode(path)
    assert (video.width, video.height) == (34, 26)
    assert video.times == pytest.approx([0, 0.08, 0.16, 0.24], abs=1e-3)
    assert np.abs(video.pixels[0][-1, -1].astype(float) - (0, 200, 0)).max() < 6


def test_timestamps_that_go_backwards_are_moved_forward(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jumpy.mkv"
    with VideoEncoder(path) as encoder:
        for pts in [5.0, 5.1, 5.1, 5.05, 5.3]:
            encoder.encode(torch.zeros(16, 16, 3, dtype=torch.uint8), pts_seconds=pts)
    assert decode(path).times == pytest.approx([0, 0.1, 0.101, 0.102, 0.3], abs=1e-6)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "jumpy.mkv" in warnings[0].getMessage()


def test_safe_filename_part() -> None:
    assert safe_filename_part("rtsp://10.0.0.5/cam 1") == "rtsp_10.0.0.5_cam_1"
    assert safe_filename_part("../../etc") == "_.._etc"
    assert safe_filename_part("") == "source"
    assert safe_filename_part("...") == "source"
    assert len(safe_filename_part("x" * 500)) == 100


def test_each_file_encodes_on_its_own_thread_and_errors_surface(tmp_path: Path) -> None:
    import threading

    from torchstream import BrokenResourceError, Frame
    from torchstream.sinks import VideoSink

    sink = VideoSink(tmp_path / "out.mkv")

    def frame(source: str, seq: int, width: int = 64) -> Frame:
        f = Frame(source_id=source, seq=seq, pts_seconds=seq / 30, width=width, height=48)
        f.surface = torch.full((48, width, 3), 10 * seq % 255, dtype=torch.uint8)
        return f

    for seq in range(5):
        sink.write(frame("a", seq))
        sink.write(frame("b", seq))
    names = {t.name for t in threading.enumerate()}
    assert {"ts/encode/out.mkv", "ts/encode/out-b.mkv"} <= names
    sink.write(frame("a", 5, width=80))  # a size change fails in a.mkv's encoder thread
    with pytest.raises((BrokenResourceError, ValueError)):
        for seq in range(6, 40):  # surfaces at one of the next writes
            sink.write(frame("a", seq))
        sink.close()
    sink.close()
    assert not any(t.name.startswith("ts/encode/") for t in threading.enumerate())
    with av.open(str(tmp_path / "out-b.mkv")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_a_source_named_after_its_file_gets_no_double_extension(tmp_path: Path) -> None:
    from torchstream import Frame
    from torchstream.sinks import VideoSink

    sink = VideoSink(tmp_path / "out.mp4")
    for source in ("first.mkv", "clip.mp4"):
        frame = Frame(source_id=source, seq=0, width=32, height=32)
        frame.surface = torch.zeros(32, 32, 3, dtype=torch.uint8)
        sink.write(frame)
    sink.close()
    assert sorted(p.name for p in sink.written_paths) == ["out-clip.mp4", "out.mp4"]
