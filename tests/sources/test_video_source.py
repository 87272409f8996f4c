from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchstream import SourceError
from torchstream.sources import VideoSource, open_source
from torchstream.testing import SyntheticVideo


def test_lossless_file_decodes_to_the_rendered_pixels(
    lossless_file: Path, video: SyntheticVideo
) -> None:
    source = VideoSource(lossless_file)
    assert (source.source_id, source.policy) == ("rects.mkv", "block")
    source.open()
    frames = list(source.frames())
    source.close()
    source.close()
    assert [f.seq for f in frames] == list(range(30))
    assert frames[0].keyframe and frames[0].codec == "ffv1"
    assert [round(f.pts_seconds or 0, 3) for f in frames[:3]] == [0.0, 0.033, 0.067]
    for frame in frames:
        assert frame.surface is not None and frame.surface.dtype == torch.uint8
        assert torch.equal(frame.surface, video.render(frame.seq))


def test_h264_file_has_real_pts_and_close_pixels(h264_file: Path, video: SyntheticVideo) -> None:
    source = VideoSource(h264_file, source_id="cam")
    frames = list(source.frames())
    assert len(frames) == 30 and frames[0].codec == "h264"
    pts = [f.pts_seconds for f in frames]
    assert pts == sorted(pts) and pts[1] == pytest.approx(1 / 30, abs=1e-3)
    error = (frames[5].surface.float() - video.render(5).float()).abs().mean()  # type: ignore[union-attr]
    assert error < 4.0


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "no such file"), (b"definitely not a video" * 50, "not a readable video")],
)
def test_unreadable_inputs_name_the_input(
    tmp_path: Path, content: bytes | None, match: str
) -> None:
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=match) as info:
        VideoSource(path).open()
    assert info.value.source_id == "clip.mp4" and str(path) in str(info.value)


def test_truncated_file_raises_after_delivering_what_it_had(
    tmp_path: Path, lossless_file: Path
) -> None:
    data = lossless_file.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(SourceError, match=r"truncated|corrupt"):
        for frame in VideoSource(cut).frames():
            seen.append(frame.seq)
    assert 0 < len(seen) < 30


def test_oversized_pictures_are_refused(lossless_file: Path) -> None:
    with pytest.raises(SourceError, match="max_pixels"):
        VideoSource(lossless_file, max_pixels=100).open()


def test_live_schemes_default_to_latest() -> None:
    assert VideoSource("rtsp://127.0.0.1:8554/cam1").policy == "latest"
    assert VideoSource("rtsp://user:pw@127.0.0.1/cam1").source_id == "127.0.0.1_cam1"
    assert VideoSource("clip.mp4").policy == "block"
    with pytest.raises(ValueError, match="policy"):
        VideoSource("clip.mp4", policy="fast")  # type: ignore[arg-type]


def test_open_source_picks_the_kind(tmp_path: Path) -> None:
    assert type(open_source(tmp_path)).__name__ == "ImageSource"
    assert type(open_source(tmp_path / "*.jpg")).__name__ == "ImageSource"
    assert type(open_source(tmp_path / "a.png")).__name__ == "ImageSource"
    assert type(open_source(tmp_path / "a.mp4")).__name__ == "VideoSource"
    assert type(open_source("rtsp://127.0.0.1/x")).__name__ == "LiveSource"
    assert type(open_source("/dev/video0")).__name__ == "LiveSource"
    assert type(open_source("https://cdn.example/live/index.m3u8")).__name__ == "LiveSource"
    assert type(open_source("https://example.com/clip.mp4")).__name__ == "VideoSource"
    assert type(open_source("https://example.com/mjpeg", live=True)).__name__ == "LiveSource"


def test_frames_without_open_opens(lossless_file: Path) -> None:
    assert sum(1 for _ in VideoSource(lossless_file).frames()) == 30


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_forcing_nvdec_without_cuda_fails_the_source_clearly(lossless_file: Path) -> None:
    source = VideoSource(lossless_file, decoder="nvdec")
    with pytest.raises(SourceError, match="needs a CUDA device"):
        source.open()
    with pytest.raises(ValueError, match="decoder must be"):
        VideoSource(lossless_file, decoder="gpu")  # type: ignore[arg-type]
