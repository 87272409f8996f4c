from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream.frame import Mask
from torchstream.models import (
    Letterbox,
    argmax_masks,
    crop_letterbox,
    mask_runs,
    resize_masks,
    threshold_masks,
)
from torchstream.pipeline import to_host


def test_threshold_is_strict(device: str) -> None:
    logits = torch.tensor([[-1.0, 0.0], [0.5, 2.0]], device=device)
    masks = threshold_masks(logits, threshold=0.0)
    assert masks.dtype == torch.bool
    assert masks.cpu().tolist() == [[False, False], [True, True]]


def test_threshold_rejects_nan() -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        threshold_masks(torch.zeros(2, 2), threshold=float("nan"))


def test_argmax_gives_int64_class_ids(device: str) -> None:
    logits = torch.zeros(2, 3, 4, 5, device=device)
    logits[0, 2, 1, 1] = 1.0
    logits[1, 1] = 5.0
    ids = argmax_masks(logits)
    assert ids.shape == (2, 4, 5)
    assert ids.dtype == torch.int64
    assert ids[0, 1, 1].item() == 2
    assert ids[0].sum().item() == 2  # everything else ties at 0: lowest id
    assert bool((ids[1] == 1).all())
    with pytest.raises(ValueError, match="logits must have shape"):
        argmax_masks(logits[0])


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
def test_resize_masks_nearest_keeps_dtype_and_values(device: str, dtype: torch.dtype) -> None:
    ids = torch.tensor([[0, 1], [2, 3]], device=device).to(dtype)
    up = resize_masks(ids[None], height=4, width=6)
    assert up.dtype == dtype
    expected = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2).to(dtype)
    assert torch.equal(up[0].cpu(), expected)


def test_resize_masks_matches_nearest_exact(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 200, (3, 37, 53), generator=generator, dtype=torch.uint8)
    for height, width in [(10, 90), (37, 53), (111, 7)]:
        expected = F.interpolate(masks[None].float(), size=(height, width), mode="nearest-exact")
        got = resize_masks(masks.to(device), height=height, width=width)
        assert torch.equal(got.cpu(), expected[0].to(torch.uint8))


def test_crop_letterbox_at_input_size(device: str) -> None:
    box = Letterbox.fit(source_width=1920, source_height=1080, target_width=640, target_height=384)
    masks = torch.zeros(2, 384, 640, dtype=torch.bool, device=device)
    masks[:, 12:372, :] = True
    cropped = crop_letterbox(masks, box)
    assert cropped.shape == (2, 360, 640)
    assert bool(cropped.all())
    assert cropped.data_ptr() == masks[:, 12:].data_ptr()  # a view: no copy


def test_crop_letterbox_at_quarter_resolution(device: str) -> None:
    box = Letterbox.fit(source_width=1920, source_height=1080, target_width=640, target_height=384)
    protos = torch.arange(96 * 160, device=device).reshape(1, 96, 160)
    cropped = crop_letterbox(protos, box)
    assert cropped.shape == (1, 90, 160)  # rows 3..93: 12 / 4 and 372 / 4
    assert torch.equal(cropped, protos[:, 3:93])


def test_crop_then_resize_gives_frame_sized_mask(device: str) -> None:
    box = Letterbox.fit(source_width=64, source_height=32, target_width=32, target_height=32)
    masks = torch.zeros(1, 32, 32, dtype=torch.bool, device=device)
    masks[0, 8:24, 0:16] = True  # the left half of the content
    frame_masks = resize_masks(crop_letterbox(masks, box), height=32, width=64)
    expected = torch.zeros(1, 32, 64, dtype=torch.bool)
    expected[0, :, :32] = True
    assert torch.equal(frame_masks.cpu(), expected)


@settings(max_examples=60, deadline=None)
@given(
    masks=st.integers(1, 4).flatmap(
        lambda count: st.integers(1, 9).flatmap(
            lambda height: st.integers(1, 9).flatmap(
                lambda width: st.lists(
                    st.booleans(), min_size=count * height * width, max_size=count * height * width
                ).map(lambda bits: torch.tensor(bits).view(count, height, width))
            )
        )
    )
)
def test_mask_runs_encode_like_mask_from_tensor(masks: torch.Tensor) -> None:
    runs = to_host(mask_runs(masks))
    for index in range(masks.shape[0]):
        mask = runs.mask(index)
        assert mask == Mask.from_tensor(masks[index])
        assert torch.equal(mask.to_tensor(), masks[index])


def test_mask_runs_on_the_device_match_and_check_their_input(device: str) -> None:
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(5, 36, 64, generator=generator) > 0.7
    masks[1] = True  # a mask with one run of ones (first pixel set)
    masks[2] = False  # and an empty one
    runs = mask_runs(masks.to(device))
    assert runs.position.device.type == torch.device(device).type
    host = to_host(runs)
    assert [host.mask(i) for i in range(5)] == [Mask.from_tensor(m) for m in masks]
    assert host.mask(1).counts == [0, 36 * 64] and host.mask(2).counts == [36 * 64]
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        mask_runs(masks[0])
