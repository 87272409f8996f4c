from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from torchstream import AnnotationStyle, BrokenResourceError, ClosedResourceError, Frame, Sink
from torchstream._draw import annotate
from torchstream.pipeline._session import Session
from torchstream.sinks._images import ImageSink


def read_image(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def gradient_frame(source_id: str, seq: int, *, height: int = 48, width: int = 64) -> Frame:
    frame = Frame(source_id=source_id, seq=seq, width=width, height=height)
    x = torch.linspace(0, 255, width).round().to(torch.uint8)
    surface = torch.zeros(height, width, 3, dtype=torch.uint8)
    surface[..., 0] = x
    surface[..., 1] = 90
    surface[..., 2] = 255 - x
    frame.surface = surface
    return frame


def test_png_is_exactly_the_annotated_frame(tmp_path: Path) -> None:
    sink = ImageSink(tmp_path, format="png", style=AnnotationStyle(line_width=3))
    assert isinstance(sink, Sink)
    frame = gradient_frame("cam-1", 7)
    frame.add_object(label="car", confidence=0.5, box=[5, 20, 40, 45])
    sink.write(frame)
    sink.end_session(Session("cam-1"))
    sink.close()

    path = tmp_path / "cam-1" / "000007.png"
    assert sink.path_for(frame) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["000007.png"]  # no leftovers
    assert np.array_equal(read_image(path), annotate(frame, AnnotationStyle(line_width=3)).numpy())
    assert sink.images_written == 1


def test_jpeg_files_per_source_and_sequence(tmp_path: Path) -> None:
    sink = ImageSink(tmp_path / "new" / "dir")
    for seq in range(3):
        sink.write(gradient_frame("rtsp://host/a", seq))
        sink.write(gradient_frame("b", seq + 100, height=31, width=45))
    sink.close()

    root = tmp_path / "new" / "dir"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "b",
        "b/000100.jpg",
        "b/000101.jpg",
        "b/000102.jpg",
        "rtsp_host_a",
        "rtsp_host_a/000000.jpg",
        "rtsp_host_a/000001.jpg",
        "rtsp_host_a/000002.jpg",
    ]
    original = gradient_frame("rtsp://host/a", 0).surface
    assert original is not None
    decoded = read_image(root / "rtsp_host_a" / "000000.jpg")
    assert decoded.shape == (48, 64, 3)
    assert np.abs(decoded.astype(float) - original.numpy()).mean() < 3
    assert read_image(root / "b" / "000101.jpg").shape == (31, 45, 3)  # odd sizes are kept


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    sink = ImageSink(tmp_path, name="snapshots")
    sink.close()
    sink.close()
    with pytest.raises(ClosedResourceError, match="'snapshots' is closed"):
        sink.write(gradient_frame("cam", 0))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    sink = ImageSink(tmp_path / "file")
    with pytest.raises(BrokenResourceError, match=r"file[/\\]cam[/\\]000003\.jpg"):
        sink.write(gradient_frame("cam", 3))
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(BrokenResourceError, match=r"000003\.jpg"):
            ImageSink(locked).write(gradient_frame("cam", 3))


def test_frame_without_surface_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'lobby' has no surface"):
        ImageSink(tmp_path).write(Frame(source_id="lobby", seq=0, width=4, height=4))


def test_format_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"format must be one of \['jpg', 'png'\], got 'gif'"):
        ImageSink(tmp_path, format="gif")  # type: ignore[arg-type]
