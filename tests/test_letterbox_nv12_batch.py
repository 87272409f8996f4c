"""letterbox_nv12_batch: NV12 pictures of any sizes into one normalised model input; on CUDA
one Triton launch, checked against the torch-ops path (itself letterbox_nv12, checked against
PyAV in test_surface_nv12.py).

The kernel comparisons also run in Triton's interpreter on the CPU, on request:
``TRITON_INTERPRET=1 pytest tests/test_letterbox_nv12_batch.py`` with Triton installed (a minute or
two on two cores).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch

from torchstream import _kernels
from torchstream import _surface_batch as batching
from torchstream._surface_nv12 import _coefficients
from torchstream.surface import letterbox_nv12, letterbox_nv12_batch

# Luma sizes (NV12 needs them even): HD, odd chroma sizes (19x51), the smallest picture (one
# chroma sample), a tall one, and 4:3.
SIZES = [(1080, 1920), (720, 1280), (38, 102), (2, 2), (2000, 300), (480, 640)]
# Kernel vs torch ops, on the 0..255 scale. Both compute the same coordinates and weights in
# the same order, so on CUDA only fused multiply-adds differ (an H100 measured <= 1e-4 in
# float32); torch's CPU grid_sample unnormalises in another order (Triton's interpreter
# measured <= 0.015 against it). On random pixels a coordinate off by a float step (1e-4 px at
# 1920) moves a sample by up to ~0.03 levels, ~0.06 after colour conversion: float32 is held
# to 0.05, float16 to that plus one float16 step between 128 and 255 (0.125), where the two
# sides round either side of a midpoint.
TOLERANCE = {torch.float32: 0.05, torch.float16: 0.2}


def random_nv12(height: int, width: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (height * 3 // 2, width)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).to(device)


def pictures(device: str) -> list[torch.Tensor]:
    batch = [random_nv12(h, w, device, seed=i) for i, (h, w) in enumerate(SIZES)]
    # NVDEC's layout: rows padded to a pitch, the chroma rows right after the luma rows.
    pitched = random_nv12(200, 384, device, seed=99)[:, :350]
    assert pitched.stride(0) == 384
    batch.append(pitched)
    return batch


def test_torch_path_is_letterbox_nv12_then_normalise(device: str) -> None:
    batch = pictures(device)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    out, boxes = letterbox_nv12_batch(
        batch, height=61, width=95, mean=mean, std=std, fill=100.0, colorspace="bt601",
        full_range=True, backend="torch",
    )
    assert out.shape == (len(batch), 3, 61, 95) and out.dtype == torch.float32
    for image, box, picture in zip(out, boxes, batch, strict=True):
        expected, expected_box = letterbox_nv12(
            picture, height=61, width=95, fill=100.0, colorspace="bt601", full_range=True,
            backend="torch",
        )
        assert box == expected_box
        normalised = (expected - torch.tensor(mean, device=device).view(3, 1, 1)) / torch.tensor(
            std, device=device
        ).view(3, 1, 1)
        torch.testing.assert_close(image, normalised, rtol=1e-5, atol=1e-4)


def test_bgr_swaps_channels(device: str) -> None:
    batch = pictures(device)[:3]
    rgb, _ = letterbox_nv12_batch(batch, height=32, width=48, backend="torch")
    bgr, _ = letterbox_nv12_batch(batch, height=32, width=48, bgr=True, backend="torch")
    torch.testing.assert_close(bgr, rgb.flip(1))


def test_writes_into_a_preallocated_batch(device: str) -> None:
    batch = pictures(device)[:3]
    out = torch.full((8, 3, 32, 48), -1.0, dtype=torch.float16, device=device)
    result, _ = letterbox_nv12_batch(batch, height=32, width=48, out=out, std=(255.0,) * 3)
    assert result.data_ptr() == out.data_ptr() and result.shape == (3, 3, 32, 48)
    assert float(out[:3].min()) >= 0.0 and float(out[:3].max()) <= 1.0
    assert bool((out[3:] == -1.0).all())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pictures": []}, "at least one picture"),
        ({"pictures": [torch.zeros(10, 8, dtype=torch.uint8)]}, "nv12 must be"),
        ({"colorspace": "srgb"}, "colorspace must be"),
        ({"std": (1.0, 0.0, 1.0)}, "std non-zero"),
        ({"dtype": torch.uint8}, "floating point"),
        ({"out": torch.empty(1, 3, 8, 9)}, "out must be"),
        ({"backend": "cupy"}, "backend must be"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "pictures": [random_nv12(8, 8, "cpu")],
        "height": 8,
        "width": 8,
        **kwargs,
    }
    batch = arguments.pop("pictures")
    with pytest.raises(ValueError, match=message):
        letterbox_nv12_batch(batch, **arguments)  # type: ignore[arg-type]


def test_triton_backend_on_the_cpu_says_why_it_cannot() -> None:
    with pytest.raises(ValueError, match="not CUDA"):
        letterbox_nv12_batch([random_nv12(8, 8, "cpu")], height=8, width=8, backend="triton")
    with pytest.raises(ValueError, match="not CUDA"):
        letterbox_nv12(random_nv12(8, 8, "cpu"), height=8, width=8, backend="triton")


# The kernel against the torch ops: on CUDA through the public function; in Triton's
# interpreter (CPU tensors; the public function refuses the CPU) through the kernel's launcher
# with the same geometry.

Fused = Callable[..., tuple[torch.Tensor, list[Any]]]


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "interpreter"])
def fused(request: pytest.FixtureRequest) -> tuple[str, Fused]:
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if request.param == "cuda":
        if interpreting:  # its table holds raw CUDA addresses, which the interpreter cannot read
            pytest.skip("TRITON_INTERPRET=1 runs the kernel on the CPU only")
        return "cuda", lambda batch, **kw: letterbox_nv12_batch(batch, backend="triton", **kw)
    if not interpreting or importlib.util.find_spec("triton") is None:
        pytest.skip("set TRITON_INTERPRET=1 with Triton installed to run the kernel on the CPU")
    return "cpu", interpreted


def interpreted(
    batch: list[torch.Tensor],
    *,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    fill: float = 114.0,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    bgr: bool = False,
    colorspace: str = "bt709",
    full_range: bool = False,
) -> tuple[torch.Tensor, list[Any]]:
    boxes = [batching.fit(p.shape[1], p.shape[0] * 2 // 3, width, height) for p in batch]
    out = torch.empty((len(batch), 3, height, width), dtype=dtype)
    _kernels.letterbox_nv12_batch(
        batch, [batching.placement(box) for box in boxes], out,
        batching.normaliser(torch.device("cpu"), mean, std), _coefficients(colorspace, full_range),
        fill=fill, bgr=bgr,
    )
    return out, boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bgr", [False, True])
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("colorspace", ["bt709", "bt601"])
def test_kernel_matches_torch_ops(
    fused: tuple[str, Fused], colorspace: str, full_range: bool, bgr: bool, dtype: torch.dtype
) -> None:
    device, run = fused
    batch = pictures(device)
    # Odd output sizes: odd padding and content sizes on both axes (kept small for the
    # interpreter; test_kernel_on_a_detector_input covers 640x384 on CUDA).
    kwargs: dict[str, Any] = {
        "height": 29, "width": 47, "dtype": dtype, "bgr": bgr, "fill": 114.0,
        "colorspace": colorspace, "full_range": full_range,
    }
    out, boxes = run(batch, **kwargs)
    reference, reference_boxes = letterbox_nv12_batch(batch, backend="torch", **kwargs)
    assert boxes == reference_boxes and out.dtype == dtype and out.device == reference.device
    difference = (out.float() - reference.float()).abs().max().item()
    assert difference <= TOLERANCE[dtype], difference


def test_kernel_normalises_like_torch_ops(fused: tuple[str, Fused]) -> None:
    device, run = fused
    batch = pictures(device)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    kwargs: dict[str, Any] = {"height": 29, "width": 47, "mean": mean, "std": std, "fill": 7.0}
    out, _ = run(batch, **kwargs)
    reference, _ = letterbox_nv12_batch(batch, backend="torch", **kwargs)
    difference = (out - reference).abs().max().item()
    assert difference <= TOLERANCE[torch.float32] / min(std), difference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_on_a_detector_input(dtype: torch.dtype) -> None:
    batch = pictures("cuda")
    before = [picture.clone() for picture in batch]
    kwargs: dict[str, Any] = {"height": 384, "width": 640, "dtype": dtype, "fill": 7.0}
    out, boxes = letterbox_nv12_batch(batch, backend="triton", **kwargs)
    reference, _ = letterbox_nv12_batch(batch, backend="torch", **kwargs)
    difference = (out.float() - reference.float()).abs().max().item()
    assert difference <= TOLERANCE[dtype], difference
    for picture, copy in zip(batch, before, strict=True):
        assert torch.equal(picture, copy)
    rows, _ = boxes[0].content_slices()  # 1080x1920: padded above and below
    assert rows.start and bool((out[0, :, : rows.start] == 7.0).all())
    assert bool((out[0, :, rows.stop :] == 7.0).all())


@pytest.mark.gpu
def test_letterbox_nv12_uses_the_kernel_on_cuda() -> None:
    picture = random_nv12(720, 1280, "cuda")
    with mock.patch.object(
        _kernels, "letterbox_nv12_batch", wraps=_kernels.letterbox_nv12_batch
    ) as kernel:
        image, box = letterbox_nv12(picture, height=384, width=640, colorspace="bt601")
    assert kernel.call_count == 1
    reference, reference_box = letterbox_nv12(
        picture, height=384, width=640, colorspace="bt601", backend="torch"
    )
    assert box == reference_box and image.shape == (3, 384, 640)
    difference = (image - reference).abs().max().item()
    assert difference <= TOLERANCE[torch.float32], difference
