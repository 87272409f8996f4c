from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchstream.models import Letterbox, clip_boxes, input_size_for, scale_boxes


def test_fit_hd_into_640x384() -> None:
    box = Letterbox.fit(source_width=1920, source_height=1080, target_width=640, target_height=384)
    assert box.scale == pytest.approx(1 / 3, abs=1e-15)
    assert (box.pad_x, box.pad_y) == (0.0, 12.0)
    assert (box.content_width, box.content_height) == (640, 360)
    assert box.content_slices() == (slice(12, 372), slice(0, 640))


def test_fit_portrait_pads_left_and_right_with_extra_pixel_right() -> None:
    box = Letterbox.fit(source_width=100, source_height=200, target_width=101, target_height=100)
    assert box.scale == 0.5
    assert (box.content_width, box.content_height) == (50, 100)
    assert (box.pad_x, box.pad_y) == (25.0, 0.0)  # 51 columns of padding: 25 left, 26 right
    assert box.content_slices() == (slice(0, 100), slice(25, 75))


@settings(deadline=None, max_examples=300)
@given(
    source=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    target=st.tuples(st.integers(1, 1024), st.integers(1, 1024)),
)
def test_fit_content_is_the_ideal_floor_and_fits(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    (sw, sh), (tw, th) = source, target
    # One side fills the target; the other is the exact floor of the rational scale.
    ideal = (tw, sh * tw // sw) if tw * sh <= th * sw else (sw * th // sh, th)
    if min(ideal) < 1:  # extreme aspect ratios only
        with pytest.raises(ValueError, match="too elongated"):
            Letterbox.fit(source_width=sw, source_height=sh, target_width=tw, target_height=th)
        return
    box = Letterbox.fit(source_width=sw, source_height=sh, target_width=tw, target_height=th)
    assert (box.content_width, box.content_height) == ideal
    rows, columns = box.content_slices()
    assert 0 <= rows.start <= rows.stop <= th
    assert 0 <= columns.start <= columns.stop <= tw
    assert abs((th - rows.stop) - rows.start) <= 1
    assert abs((tw - columns.stop) - columns.start) <= 1


def test_boxes_round_trip_exactly_for_hd(device: str) -> None:
    box = Letterbox.fit(source_width=1920, source_height=1080, target_width=640, target_height=384)
    source = torch.tensor([[0.0, 0, 1920, 1080], [960, 540, 1200, 900], [3, 6, 9, 12]])
    target = box.boxes_to_target(source.to(device))
    expected = torch.tensor([[0.0, 12, 640, 372], [320, 192, 400, 312], [1, 14, 3, 16]])
    assert torch.equal(target.cpu(), expected)
    assert torch.equal(box.boxes_to_source(target).cpu(), source)


def test_boxes_to_source_clamps_to_frame_and_keeps_dtype_and_shape(device: str) -> None:
    box = Letterbox.fit(source_width=1920, source_height=1080, target_width=640, target_height=384)
    target = torch.tensor([[[-5.0, 0, 700, 384]]], dtype=torch.float64, device=device)
    source = box.boxes_to_source(target)
    assert source.dtype == torch.float64
    assert source.shape == (1, 1, 4)
    assert source.cpu().tolist() == [[[0.0, 0.0, 1920.0, 1080.0]]]


@settings(deadline=None, max_examples=100)
@given(
    source=st.tuples(st.integers(16, 4000), st.integers(16, 4000)),
    target=st.tuples(st.integers(16, 1024), st.integers(16, 1024)),
    fractions=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_boxes_round_trip_closely(
    source: tuple[int, int], target: tuple[int, int], fractions: list[float]
) -> None:
    (sw, sh), (tw, th) = source, target
    assume(min(sh * tw // sw, sw * th // sh) >= 1)  # else too elongated to fit at all
    box = Letterbox.fit(source_width=sw, source_height=sh, target_width=tw, target_height=th)
    boxes = torch.tensor(fractions, dtype=torch.float64) * torch.tensor([sw, sh, sw, sh])
    back = box.boxes_to_source(box.boxes_to_target(boxes))
    torch.testing.assert_close(back, boxes, rtol=0, atol=1e-9)


def test_scale_and_clip(device: str) -> None:
    boxes = torch.tensor([[10.0, 20, 30, 40], [-5, -5, 700, 500]], device=device)
    scaled = scale_boxes(boxes, from_size=(640, 480), to_size=(1280, 240))
    assert scaled.cpu().tolist() == [[20.0, 10, 60, 20], [-10, -2.5, 1400, 250]]
    clipped = clip_boxes(boxes, width=640, height=480)
    assert clipped.cpu().tolist() == [[10.0, 20, 30, 40], [0, 0, 640, 480]]
    assert boxes[1, 0].item() == -5  # inputs untouched


def test_integer_boxes_come_back_as_float() -> None:
    scaled = scale_boxes(torch.tensor([[1, 1, 3, 3]]), from_size=(2, 2), to_size=(3, 3))
    assert scaled.dtype == torch.float32
    assert scaled.tolist() == [[1.5, 1.5, 4.5, 4.5]]


def test_input_size_for() -> None:
    assert input_size_for(1920, 1080, max_side=640, stride=32) == (640, 384)
    assert input_size_for(1080, 1920, max_side=640, stride=32) == (384, 640)
    assert input_size_for(640, 640, max_side=320, stride=32) == (320, 320)
    assert input_size_for(1000, 10, max_side=600, stride=32) == (608, 32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: Letterbox.fit(source_width=0, source_height=1, target_width=1, target_height=1),
            "source_width must be >= 1, got 0",
        ),
        (
            lambda: Letterbox.fit(
                source_width=5000, source_height=1, target_width=64, target_height=64
            ),
            "too elongated",
        ),
        (
            lambda: scale_boxes(torch.zeros(1, 4), from_size=(0, 1), to_size=(1, 1)),
            "from_size must be",
        ),
        (lambda: clip_boxes(torch.zeros(1, 3), width=1, height=1), "boxes must have shape"),
        (lambda: input_size_for(10, 10, max_side=64, stride=0), "stride must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_rejected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
