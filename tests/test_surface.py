from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from torchstream import surface as surface_module
from torchstream.surface import crop_resize, letterbox, resize, to_chw_float


def random_surface(height: int, width: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).to(
        device
    )


def chw(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.permute(2, 0, 1).float().cpu()


def test_crop_on_whole_pixels_at_scale_1_is_exact(device: str) -> None:
    surface = random_surface(32, 64, device)  # power-of-two sides: exact in float32
    boxes = torch.tensor([[0.0, 0, 64, 32], [3, 5, 13, 9], [60, 28, 64, 32]], device=device)
    crops = [
        crop_resize(surface, boxes[i : i + 1], height=int(b[3] - b[1]), width=int(b[2] - b[0]))
        for i, b in enumerate(boxes.tolist())
    ]
    assert torch.equal(crops[0][0].cpu(), chw(surface))
    assert torch.equal(crops[1][0].cpu(), chw(surface[5:9, 3:13]))
    assert torch.equal(crops[2][0].cpu(), chw(surface[28:32, 60:64]))


def test_crop_on_whole_pixels_of_any_frame_size_is_close(device: str) -> None:
    surface = random_surface(1080, 1920, device)
    crop = crop_resize(surface, torch.tensor([[1001.0, 517, 1113, 629]]), height=112, width=112)
    torch.testing.assert_close(crop[0].cpu(), chw(surface[517:629, 1001:1113]), rtol=0, atol=0.05)


def test_crop_halving_averages_2x2_blocks(device: str) -> None:
    surface = random_surface(16, 16, device)
    crop = crop_resize(surface, torch.tensor([[4.0, 2, 12, 10]], device=device), height=4, width=4)
    expected = F.avg_pool2d(chw(surface[2:10, 4:12])[None], 2)[0]
    torch.testing.assert_close(crop[0].cpu(), expected, rtol=0, atol=1e-4)


def test_many_boxes_in_one_grid_sample_on_the_one_frame(device: str) -> None:
    surface = random_surface(48, 64, device)
    boxes = torch.tensor([[0.0, 0, 32, 16], [10.5, 3.25, 40, 47], [-5, -5, 70, 50]])
    calls: list[tuple[torch.Size, torch.Size]] = []
    grid_sample = F.grid_sample

    def spy(image: torch.Tensor, grid: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append((image.shape, grid.shape))
        return grid_sample(image, grid, **kwargs)  # type: ignore[arg-type]

    with mock.patch.object(surface_module.F, "grid_sample", spy):
        together = crop_resize(surface, boxes.to(device), height=24, width=20)
    assert calls == [(torch.Size([1, 3, 48, 64]), torch.Size([1, 3 * 24, 20, 2]))]
    assert together.shape == (3, 3, 24, 20)
    assert together.is_contiguous()
    for i in range(3):
        alone = crop_resize(surface, boxes[i : i + 1].to(device), height=24, width=20)
        assert torch.equal(alone[0], together[i])


def test_outside_samples_are_zero_and_edges_are_held(device: str) -> None:
    surface = torch.full((4, 4, 3), 200, dtype=torch.uint8, device=device)
    outside = crop_resize(surface, torch.tensor([[10.0, 10, 20, 20]]), height=5, width=5)
    assert bool((outside == 0).all())
    # Half the box is left of the frame: those columns are 0, the rest are the pixels, even in
    # the frame's outer half pixel (no fade to black at the edge).
    half = crop_resize(surface, torch.tensor([[-2.0, 0, 2, 4]]), height=4, width=8)[0]
    assert bool((half[:, :, :4] == 0).all())
    assert bool((half[:, :, 4:] == 200).all())


def test_flipped_box_gives_mirrored_crop(device: str) -> None:
    surface = random_surface(32, 32, device)
    crop = crop_resize(surface, torch.tensor([[4.0, 8, 20, 16]]), height=8, width=16)
    flipped = crop_resize(surface, torch.tensor([[20.0, 8, 4, 16]]), height=8, width=16)
    assert torch.equal(flipped, crop.flip(-1))
    both = crop_resize(surface, torch.tensor([[20.0, 16, 4, 8]]), height=8, width=16)
    assert torch.equal(both, crop.flip(-1).flip(-2))


def test_empty_boxes_give_empty_batch(device: str) -> None:
    crops = crop_resize(
        random_surface(8, 8, device), torch.empty(0, 4), height=5, width=7, dtype=torch.float64
    )
    assert crops.shape == (0, 3, 5, 7)
    assert crops.dtype == torch.float64
    assert crops.device.type == device


def test_surface_is_never_modified(device: str) -> None:
    surface = random_surface(30, 40, device)
    before = surface.clone()
    crop_resize(surface, torch.tensor([[-3.0, 2, 50, 20], [5, 5, 6, 6]]), height=9, width=9)
    resize(surface, height=15, width=20)
    letterbox(surface, height=32, width=32)
    to_chw_float(surface).fill_(0)
    assert torch.equal(surface, before)


def test_to_chw_float_and_identity_resize(device: str) -> None:
    surface = random_surface(9, 7, device)
    image = to_chw_float(surface, dtype=torch.float16)
    assert image.shape == (3, 9, 7)
    assert image.dtype == torch.float16
    assert image.is_contiguous()
    assert torch.equal(image.float().cpu(), chw(surface))
    same = resize(surface, height=9, width=7)
    assert torch.equal(same.cpu(), chw(surface))


def test_resize_downscale_uses_antialiasing(device: str) -> None:
    stripes = torch.zeros(9, 9, 3, dtype=torch.uint8, device=device)
    stripes[:, ::2] = 255  # one-pixel vertical stripes
    # Shrinking 3x, plain bilinear lands on single pixels; antialiasing averages neighbours.
    aliased = resize(stripes, height=3, width=3, antialias=False)
    assert aliased[0].cpu().tolist() == [[0.0, 255.0, 0.0]] * 3
    smooth = resize(stripes, height=3, width=3)
    assert bool(((smooth > 100) & (smooth < 155)).all())


def test_letterbox_of_a_known_image(device: str) -> None:
    surface = torch.zeros(2, 4, 3, dtype=torch.uint8, device=device)
    surface[:, :, 0] = 10
    surface[:, :, 1] = 20
    surface[:, :, 2] = 30
    image, box = letterbox(surface, height=8, width=8, fill=114.0)
    assert image.shape == (3, 8, 8)
    assert (box.scale, box.pad_x, box.pad_y) == (2.0, 0.0, 2.0)
    expected = torch.full((3, 8, 8), 114.0)
    expected[:, 2:6, :] = torch.tensor([10.0, 20.0, 30.0])[:, None, None]
    torch.testing.assert_close(image.cpu(), expected)


def test_letterbox_hd_content_matches_resize(device: str) -> None:
    surface = random_surface(1080, 1920, device)
    image, box = letterbox(surface, height=384, width=640)
    assert (box.pad_x, box.pad_y) == (0.0, 12.0)
    assert bool((image[:, :12] == 114).all())
    assert bool((image[:, 372:] == 114).all())
    rows, columns = box.content_slices()
    torch.testing.assert_close(image[:, rows, columns], resize(surface, height=360, width=640))


def test_letterbox_odd_sizes_fit(device: str) -> None:
    for height, width, target in [(49, 49, 1), (7, 13, 5), (1000, 3, 641), (30, 1000, 97)]:
        surface = random_surface(height, width, device)
        image, box = letterbox(surface, height=target, width=target)
        rows, columns = box.content_slices()
        assert image.shape == (3, target, target)
        assert image[:, rows, columns].shape == (3, box.content_height, box.content_width)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: to_chw_float(torch.zeros(4, 4, 3)), "surface must be a uint8"),
        (lambda: to_chw_float(torch.zeros(4, 4, 4, dtype=torch.uint8)), "height, width, 3"),
        (
            lambda: to_chw_float(torch.zeros(4, 4, 3, dtype=torch.uint8), dtype=torch.int32),
            "dtype must be a floating point dtype",
        ),
        (
            lambda: resize(torch.zeros(4, 4, 3, dtype=torch.uint8), height=0, width=3),
            "height and width must be >= 1, got height=0",
        ),
        (
            lambda: crop_resize(
                torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(4), height=2, width=2
            ),
            "boxes must have shape",
        ),
    ],
)
def test_bad_arguments_are_rejected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
