"""letterbox_batch: a batch of any-size surfaces into one normalised model input; on CUDA one
Triton launch, checked against the torch-ops path (itself checked against letterbox())."""

from __future__ import annotations

import pytest
import torch

from torchstream.models import Letterbox
from torchstream.surface import letterbox, letterbox_batch

SIZES = [(1080, 1920), (720, 1280), (37, 101), (1, 1), (2000, 300), (384, 640)]


def random_surface(height: int, width: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return pixels.to(device)


def surfaces(device: str) -> list[torch.Tensor]:
    batch = [random_surface(h, w, device, seed=i) for i, (h, w) in enumerate(SIZES)]
    parent = random_surface(400, 700, device, seed=99)
    batch.append(parent[13:211, 21:333])  # a crop view: rows keep the parent's stride
    return batch


def test_torch_path_is_letterbox_then_normalise(device: str) -> None:
    batch = surfaces(device)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    out, boxes = letterbox_batch(
        batch, height=384, width=640, mean=mean, std=std, fill=100.0, backend="torch"
    )
    assert out.shape == (len(batch), 3, 384, 640) and out.dtype == torch.float32
    for image, box, surface in zip(out, boxes, batch, strict=True):
        expected, expected_box = letterbox(
            surface, height=384, width=640, fill=100.0, antialias=False
        )
        assert box == expected_box
        normalised = (expected - torch.tensor(mean, device=device).view(3, 1, 1)) / torch.tensor(
            std, device=device
        ).view(3, 1, 1)
        torch.testing.assert_close(image, normalised, rtol=1e-5, atol=1e-4)


def test_bgr_swaps_channels_after_normalising_in_output_order(device: str) -> None:
    batch = surfaces(device)[:3]
    rgb, _ = letterbox_batch(batch, height=64, width=96, backend="torch")
    bgr, _ = letterbox_batch(batch, height=64, width=96, bgr=True, backend="torch")
    torch.testing.assert_close(bgr, rgb.flip(1))


def test_writes_into_a_preallocated_batch(device: str) -> None:
    batch = surfaces(device)[:3]
    out = torch.full((8, 3, 64, 96), -1.0, dtype=torch.float16, device=device)
    result, _ = letterbox_batch(batch, height=64, width=96, out=out, std=(255.0,) * 3)
    assert result.data_ptr() == out.data_ptr() and result.shape == (3, 3, 64, 96)
    assert float(out[:3].min()) >= 0.0 and float(out[:3].max()) <= 1.0
    assert bool((out[3:] == -1.0).all())  # the rest of the preallocated batch is untouched


def test_boxes_map_back(device: str) -> None:
    surface = random_surface(1080, 1920, device)
    _, (box,) = letterbox_batch([surface], height=384, width=640)
    assert box == Letterbox.fit(
        source_width=1920, source_height=1080, target_width=640, target_height=384
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"surfaces": []}, "at least one surface"),
        ({"std": (1.0, 0.0, 1.0)}, "std non-zero"),
        ({"mean": (1.0,)}, "3 values"),
        ({"dtype": torch.uint8}, "floating point"),
        ({"out": torch.empty(1, 3, 8, 9)}, "out must be"),
        ({"backend": "cupy"}, "backend must be"),
        ({"surfaces": [torch.zeros(8, 8, 4, dtype=torch.uint8)]}, "uint8 \\(height, width, 3\\)"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "surfaces": [random_surface(8, 8, "cpu")],
        "height": 8,
        "width": 8,
        **kwargs,
    }
    batch = arguments.pop("surfaces")
    with pytest.raises(ValueError, match=message):
        letterbox_batch(batch, **arguments)  # type: ignore[arg-type]


def test_triton_backend_on_the_cpu_says_why_it_cannot() -> None:
    with pytest.raises(ValueError, match="not CUDA"):
        letterbox_batch([random_surface(8, 8, "cpu")], height=8, width=8, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bgr", [False, True])
def test_triton_kernel_matches_torch_ops(dtype: torch.dtype, bgr: bool) -> None:
    batch = surfaces("cuda")
    kwargs = {
        "height": 384, "width": 640, "dtype": dtype, "bgr": bgr, "fill": 114.0,
        "mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375),
    }
    fused, boxes = letterbox_batch(batch, backend="triton", **kwargs)  # type: ignore[arg-type]
    reference, reference_boxes = letterbox_batch(batch, backend="torch", **kwargs)  # type: ignore[arg-type]
    assert boxes == reference_boxes and fused.dtype == dtype
    # Same bilinear weights, different float association: ~1e-4 of a level (x 1/std here).
    tolerance = 1e-3 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(fused.float(), reference.float(), rtol=0, atol=tolerance)


@pytest.mark.gpu
def test_triton_kernel_leaves_surfaces_alone_and_pads_exactly() -> None:
    batch = surfaces("cuda")
    before = [s.clone() for s in batch]
    out, boxes = letterbox_batch(batch, height=384, width=640, fill=7.0, backend="triton")
    for surface, copy in zip(batch, before, strict=True):
        assert torch.equal(surface, copy)
    rows, _ = boxes[0].content_slices()  # 1080x1920: padded above and below
    assert rows.start and bool((out[0, :, : rows.start] == 7.0).all())
    assert bool((out[0, :, rows.stop :] == 7.0).all())


@pytest.mark.gpu
def test_the_staging_ring_works_inside_and_outside_inference_mode() -> None:
    from torchstream._kernels import _PinnedRing

    ring = _PinnedRing(slots=1)
    with torch.inference_mode():  # the first upload allocates the buffer (a model stage)
        first = ring.upload([[1, 2], [3, 4]], torch.device("cuda"))
    second = ring.upload([[5, 6], [7, 8]], torch.device("cuda"))  # then a plain caller
    assert first.tolist() == [[1, 2], [3, 4]] and second.tolist() == [[5, 6], [7, 8]]
