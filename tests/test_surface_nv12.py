"""NV12 (NVDEC's native layout) to RGB, and letterboxing straight from NV12."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace

from torchstream.surface import letterbox, letterbox_nv12, nv12_to_rgb


def smooth_picture(height: int, width: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    red = 128 + 100 * torch.sin(x / 37.0)
    green = 128 + 100 * torch.cos(y / 23.0)
    blue = (x + y) * 255.0 / (height + width)
    return torch.stack([red, green, blue], dim=-1).round().to(torch.uint8)


def to_nv12(rgb: torch.Tensor, colorspace: Colorspace) -> torch.Tensor:
    frame = av.VideoFrame.from_ndarray(rgb.numpy(), format="rgb24")
    nv12 = frame.reformat(format="nv12", dst_colorspace=colorspace, dst_color_range=ColorRange.MPEG)
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in nv12.planes]
    height, width = rgb.shape[:2]
    data = np.concatenate([planes[0][:height, :width], planes[1][: height // 2, :width]])
    return torch.from_numpy(data.copy())


@pytest.mark.parametrize(
    ("name", "colorspace"), [("bt709", Colorspace.ITU709), ("bt601", Colorspace.ITU601)]
)
def test_nv12_to_rgb_matches_the_source_picture(
    device: str, name: str, colorspace: Colorspace
) -> None:
    rgb = smooth_picture(144, 256)
    nv12 = to_nv12(rgb, colorspace).to(device)
    out = nv12_to_rgb(nv12, colorspace=name)  # type: ignore[arg-type]
    assert out.shape == (144, 256, 3) and out.dtype == torch.uint8 and out.device.type == device
    error = (out.cpu().float() - rgb.float()).abs()
    assert error.mean() < 1.5 and error.max() < 12  # 4:2:0 chroma and 8-bit rounding


def test_letterbox_nv12_matches_letterbox_of_rgb(device: str) -> None:
    rgb = smooth_picture(360, 640)
    nv12 = to_nv12(rgb, Colorspace.ITU709).to(device)
    fused, box = letterbox_nv12(nv12, height=384, width=320)
    reference, ref_box = letterbox(rgb.to(device), height=384, width=320, antialias=False)
    assert box == ref_box and fused.shape == (3, 384, 320)
    rows, columns = box.content_slices()
    assert (fused[:, : rows.start] == 114).all() and (fused[:, rows.stop :] == 114).all()
    difference = (fused - reference).abs()[:, rows, columns]
    assert difference.mean() < 2.0, difference.mean()


def test_bad_nv12_input_is_named() -> None:
    with pytest.raises(ValueError, match="nv12 must be"):
        nv12_to_rgb(torch.zeros(100, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="colorspace"):
        nv12_to_rgb(torch.zeros(96, 64, dtype=torch.uint8), colorspace="srgb")  # type: ignore[arg-type]
