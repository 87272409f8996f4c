"""The kept-scaler RGB conversion of PyAV pictures: the same pixels as PyAV's own
``to_ndarray(format="rgb24")``, a new tensor each time, it follows size changes, and small
pictures convert without a scaler thread pool."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from torchstream.codecs._pyav import ImageDecoder, RgbConverter, sws_threads
from torchstream.sinks._images import encode_picture


def _picture(width: int, height: int, seed: int) -> av.VideoFrame:
    """A yuv420p picture of noise, as a decoder hands them out."""
    generator = np.random.default_rng(seed)
    rgb = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def test_it_converts_like_pyav_and_each_picture_keeps_its_own_pixels() -> None:
    convert = RgbConverter()
    pictures = [_picture(64, 48, 0), _picture(64, 48, 1), _picture(32, 16, 2)]
    tensors = [convert(p) for p in pictures]  # the last one changes the size
    for picture, tensor in zip(pictures, tensors, strict=True):
        assert tensor.dtype == torch.uint8
        assert tensor.shape == (picture.height, picture.width, 3)
        assert np.array_equal(tensor.numpy(), picture.to_ndarray(format="rgb24"))
    # Converting more pictures does not change the ones handed out before.
    first = tensors[0].clone()
    convert(_picture(64, 48, 3))
    assert torch.equal(tensors[0], first)
    assert tensors[0].data_ptr() != tensors[1].data_ptr()


def test_the_image_decoder_returns_distinct_pictures() -> None:
    decoder = ImageDecoder(source_id="cam")
    red = torch.zeros(16, 16, 3, dtype=torch.uint8)
    red[..., 0] = 255
    blue = torch.zeros(16, 16, 3, dtype=torch.uint8)
    blue[..., 2] = 255
    a, codec = decoder.decode(encode_picture(red, "jpg"))
    b, _ = decoder.decode(encode_picture(blue, "jpg"))
    assert codec == "mjpeg"
    assert a[..., 0].float().mean() > 200 and a[..., 2].float().mean() < 50
    assert b[..., 2].float().mean() > 200 and b[..., 0].float().mean() < 50


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_small_pictures_convert_without_starting_scaler_threads() -> None:
    # A camera's decoder keeps one converter; PyAV >= 17 would give each kept scaler a
    # thread per core (a worker with hundreds of small cameras: hundreds of threads).
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    picture = _picture(36, 36, 0)  # made by a scaler of its own: before counting
    before = threads()
    converters = [RgbConverter() for _ in range(8)]
    for converter in converters:
        converter(picture)
    assert threads() - before < len(converters)
    assert sws_threads(36, 36) in ({"threads": 1}, {})  # {} where PyAV has no pool
    assert sws_threads(1920, 1080) == {}  # large pictures keep FFmpeg's choice
