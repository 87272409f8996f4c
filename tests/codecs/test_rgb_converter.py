"""The kept-scaler RGB conversion of PyAV pictures: the same pixels as PyAV's own
``to_ndarray(format="rgb24")``, a new tensor each time, and it follows size changes."""

from __future__ import annotations

import av
import numpy as np
import torch

from torchstream.codecs._pyav import ImageDecoder, RgbConverter
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
