from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from torchstream import SourceError
from torchstream.sources import ImageSource
from torchstream.testing import SyntheticVideo


def write_png(path: Path, image: torch.Tensor) -> None:
    frame = av.VideoFrame.from_ndarray(image.numpy(), format="rgb24")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i, size in enumerate([(320, 240), (200, 160), (320, 240)]):
        write_png(folder / f"{i:02d}.png", SyntheticVideo(width=size[0], height=size[1]).render(i))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_directory_of_images_of_different_sizes(shots: Path) -> None:
    source = ImageSource(shots)
    assert source.source_id == "shots"
    frames = list(source.frames())
    assert [(f.seq, f.width, f.height) for f in frames] == [
        (0, 320, 240), (1, 200, 160), (2, 320, 240)
    ]
    assert frames[1].attributes["image.path"].endswith("01.png")
    assert torch.equal(frames[1].surface, SyntheticVideo(width=200, height=160).render(1))  # type: ignore[arg-type]


def test_glob_and_list(shots: Path) -> None:
    assert len(list(ImageSource(str(shots / "0[01].png")).frames())) == 2
    assert len(list(ImageSource([shots / "02.png"]).frames())) == 1
    assert ImageSource(shots / "02.png").source_id == "02.png"


def test_corrupt_image_is_skipped_and_recorded(shots: Path) -> None:
    (shots / "01b.png").write_bytes(b"\x89PNG broken")
    source = ImageSource(shots)
    frames = list(source.frames())
    assert [f.attributes["image.path"][-7:] for f in frames] == ["/00.png", "/01.png", "/02.png"]
    assert len(source.errors) == 1 and "01b.png" in source.errors[0]


def test_nothing_matches(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no image files"):
        ImageSource(str(tmp_path / "*.jpg")).open()


def test_oversized_image_is_refused_before_decoding(shots: Path) -> None:
    source = ImageSource(shots, max_pixels=1000)
    assert list(source.frames()) == []
    assert all("max_pixels" in e for e in source.errors) and len(source.errors) == 3
