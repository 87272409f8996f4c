"""JPEG images: headers read without decoding; nvJPEG on the GPU against PyAV on the CPU."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from torchstream import SourceError
from torchstream.codecs._nvjpeg import JpegHeaderError, jpeg_size, nvjpeg_available
from torchstream.sources import ImageSource
from torchstream.testing import SyntheticVideo


def write_jpeg(path: Path, image: torch.Tensor) -> Path:
    frame = av.VideoFrame.from_ndarray(image.numpy(), format="rgb24")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("mjpeg")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuvj420p"  # type: ignore[union-attr]
        for packet in stream.encode(frame.reformat(format="yuvj420p")):  # type: ignore[union-attr]
            container.mux(packet)
        for packet in stream.encode():  # type: ignore[union-attr]
            container.mux(packet)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (w, h) in enumerate([(320, 240), (640, 360), (200, 160), (321, 241)]):
        write_jpeg(folder / f"{i:02d}.jpg", SyntheticVideo(width=w, height=h).render(i))
    return folder


def test_jpeg_size_reads_the_header(photos: Path) -> None:
    sizes = [jpeg_size(p.read_bytes()) for p in sorted(photos.iterdir())]
    assert sizes == [(320, 240), (640, 360), (200, 160), (321, 241)]
    for bad in (b"", b"\x89PNG\r\n", b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 8):
        with pytest.raises(JpegHeaderError):
            jpeg_size(bad)


def test_cpu_machine_refuses_forced_nvjpeg(photos: Path) -> None:
    if nvjpeg_available(torch.device("cuda")):
        pytest.skip("this machine can decode JPEG on the GPU")
    source = ImageSource(photos, decoder="nvjpeg")
    source.prepare(torch.device("cuda"))
    with pytest.raises(SourceError, match="nvjpeg"):
        source.open()


@pytest.mark.gpu
def test_nvjpeg_matches_pyav_and_isolates_bad_files(photos: Path) -> None:
    if not nvjpeg_available(torch.device("cuda")):
        pytest.skip("needs torchvision for nvJPEG")
    (photos / "02b.jpg").write_bytes((photos / "01.jpg").read_bytes()[:300])  # truncated
    huge = photos / "03b.jpg"
    huge.write_bytes(
        (photos / "00.jpg").read_bytes().replace(b"\x00\xf0\x01\x40", b"\xff\xf0\xff\xf0", 1)
    )
    gpu = ImageSource(photos, decoder="nvjpeg", max_pixels=4096 * 4096)
    gpu.prepare(torch.device("cuda"))
    frames = list(gpu.frames())
    cpu = {f.seq: f for f in ImageSource(photos, decoder="pyav").frames()}
    assert len(frames) == 4 and all(f.surface is not None and f.surface.is_cuda for f in frames)
    for frame in frames:
        frame.__dict__["_ready"].synchronize()
        reference = cpu[frame.seq].surface
        assert frame.surface.shape == reference.shape  # type: ignore[union-attr]
        mad = (frame.surface.cpu().float() - reference.float()).abs().mean().item()  # type: ignore[union-attr]
        assert mad < 3.0, (frame.seq, mad)
    assert any("02b.jpg" in e for e in gpu.errors)
    assert any("03b.jpg" in e and "max_pixels" in e for e in gpu.errors)
