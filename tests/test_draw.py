from __future__ import annotations

import dataclasses

import pytest
import torch

from torchstream import AnnotationStyle, Frame, Keypoint, Mask
from torchstream._draw import annotate, label_color
from torchstream._font import GLYPH_HEIGHT, render_text, text_size

PERSON_COLOR = (255, 100, 200)
BARE = AnnotationStyle(boxes=False, labels=False, masks=False, keypoints=False)


def make_frame(device: torch.device, *, height: int = 120, width: int = 160) -> Frame:
    frame = Frame(source_id="cam", seq=0, width=width, height=height)
    frame.surface = torch.full((height, width, 3), 40, dtype=torch.uint8, device=device)
    return frame


def noisy_frame(device: torch.device, seed: int = 0) -> Frame:
    generator = torch.Generator().manual_seed(seed)
    frame = make_frame(device)
    noise = torch.randint(0, 256, (120, 160, 3), dtype=torch.uint8, generator=generator)
    frame.surface = noise.to(device)
    return frame


def pixels(frame: Frame) -> torch.Tensor:
    assert frame.surface is not None
    return frame.surface


def changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: pixels whose colour differs."""
    return (before != after).any(dim=-1).cpu()


def test_box_edges_are_drawn_at_exact_pixels(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(label="car", confidence=0.9, box=[10, 20, 50, 60])
    canvas = annotate(frame, AnnotationStyle(labels=False, line_width=2))
    color = torch.tensor(label_color("car"), dtype=torch.uint8)
    drawn = changed(pixels(frame), canvas)

    expected = torch.zeros(120, 160, dtype=torch.bool)
    expected[20:60, 10:50] = True
    expected[22:58, 12:48] = False  # a 2-pixel outline inside the box
    assert torch.equal(drawn, expected)
    assert (canvas.cpu()[drawn] == color).all()


def test_box_coordinates_round_to_the_nearest_pixel_edge(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(label="car", confidence=0.9, box=[9.6, 20.4, 50.2, 59.5])
    drawn = changed(pixels(frame), annotate(frame, AnnotationStyle(labels=False)))
    rows, cols = torch.nonzero(drawn, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (20, 59, 10, 49)


def test_surface_is_not_modified(device: torch.device) -> None:
    frame = noisy_frame(device)
    mask = torch.ones(4, 4, dtype=torch.bool)
    frame.add_object(label="face", confidence=0.8, box=[5, 5, 60, 70], mask=Mask.from_tensor(mask))
    frame.add_object(
        label="person", confidence=0.7, box=[50, 10, 150, 110], keypoints=[Keypoint(80, 40)]
    )
    before = pixels(frame).clone()
    canvas = annotate(frame, AnnotationStyle(blur_labels=frozenset({"face"})))
    assert torch.equal(pixels(frame), before)
    assert canvas.data_ptr() != pixels(frame).data_ptr()
    assert canvas.device == pixels(frame).device
    assert canvas.shape == before.shape and canvas.dtype == torch.uint8


def test_no_objects_gives_an_identical_copy(device: torch.device) -> None:
    frame = noisy_frame(device)
    assert torch.equal(annotate(frame, AnnotationStyle()), pixels(frame))


def test_blur_changes_the_region_and_removes_detail(device: torch.device) -> None:
    frame = noisy_frame(device)
    frame.add_object(label="face", confidence=0.9, box=[30, 20, 110, 100])
    frame.add_object(label="person", confidence=0.9, box=[115, 10, 155, 50])
    canvas = annotate(frame, dataclasses.replace(BARE, blur_labels=frozenset({"face"})))

    before, after = pixels(frame)[20:100, 30:110].float(), canvas[20:100, 30:110].float()
    assert (before != after).float().mean() > 0.9
    # Uniform noise has a variance of ~5400 per channel; what is left is a smooth gradient.
    assert after.var(dim=(0, 1)).max() < 0.02 * before.var(dim=(0, 1)).min()
    # Neighbouring pixels are nearly equal: no edges (eyes, mouth) survive.
    assert (after[1:] - after[:-1]).abs().max() <= 8
    # Only the face box changed; the unlisted label is left alone.
    outside = torch.ones(120, 160, dtype=torch.bool)
    outside[20:100, 30:110] = False
    assert not changed(pixels(frame), canvas)[outside].any()


def test_blur_of_a_box_partly_outside_the_frame(device: torch.device) -> None:
    frame = noisy_frame(device)
    frame.add_object(label="face", confidence=0.9, box=[-40, -30, 40, 50])
    canvas = annotate(
        frame, AnnotationStyle(boxes=False, labels=False, blur_labels=frozenset({"face"}))
    )
    region = canvas[0:50, 0:40].float()
    assert region.var(dim=(0, 1)).max() < 0.05 * pixels(frame)[0:50, 0:40].float().var()
    assert torch.equal(canvas[50:], pixels(frame)[50:])
    assert torch.equal(canvas[:, 40:], pixels(frame)[:, 40:])


def test_label_text_is_drawn_above_the_box(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(label="dog", confidence=0.75, box=[20, 50, 100, 100])
    canvas = annotate(frame, AnnotationStyle(boxes=False, font_scale=1))
    text_h, text_w = text_size("dog 0.75")
    background = torch.tensor(label_color("dog"), dtype=torch.uint8)

    # Background: text plus one pixel of padding, ending on the box's top edge.
    top = 50 - (text_h + 2)
    label = canvas[top:50, 20 : 20 + text_w + 2].cpu()
    assert not changed(pixels(frame), canvas)[:top].any()
    ink = (label != background).any(dim=-1)
    # The ink is exactly the rendered text, at one pixel of padding.
    assert torch.equal(ink[1:-1, 1:-1], render_text("dog 0.75"))
    assert not ink[0].any() and not ink[-1].any()


def test_label_moves_inside_when_the_box_touches_the_top(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(label="dog", confidence=0.75, box=[20, 2, 100, 100])
    canvas = annotate(frame, AnnotationStyle(boxes=False, font_scale=2))
    drawn = changed(pixels(frame), canvas)
    rows = torch.nonzero(drawn.any(dim=1)).flatten()
    assert int(rows.min()) == 2
    assert int(rows.max()) == 2 + 2 * GLYPH_HEIGHT + 2 * 2 - 1


def test_mask_blends_only_inside_the_mask(device: torch.device) -> None:
    frame = make_frame(device)
    bits = torch.zeros(4, 4, dtype=torch.bool)
    bits[1:3, 2:4] = True  # the right half of the two middle rows
    frame.add_object(label="cat", confidence=0.9, box=[40, 40, 80, 80], mask=Mask.from_tensor(bits))
    canvas = annotate(frame, AnnotationStyle(boxes=False, labels=False))
    drawn = changed(pixels(frame), canvas)

    expected = torch.zeros(120, 160, dtype=torch.bool)
    expected[50:70, 60:80] = True  # each mask cell stretched over 10x10 pixels
    assert torch.equal(drawn, expected)
    color = torch.tensor(label_color("cat"), dtype=torch.float32)
    blended = canvas.cpu()[50:70, 60:80].float()
    assert torch.allclose(blended, (40 + color) / 2, atol=1)


def test_mask_only_labels_get_their_mask_and_no_box_or_label(device: torch.device) -> None:
    frame = make_frame(device)
    road = torch.zeros(12, 16, dtype=torch.bool)
    road[6:] = True  # the bottom half of the frame
    frame.add_object(
        label="road", confidence=0.9, box=[0, 0, 160, 120], mask=Mask.from_tensor(road)
    )
    frame.add_object(label="car", confidence=0.9, box=[10, 10, 50, 40])
    canvas = annotate(frame, AnnotationStyle(mask_only_labels={"road"}))  # type: ignore[arg-type]
    drawn = changed(pixels(frame), canvas)
    assert drawn[60:, :].all() and not drawn[:60, 60:].any()  # the road: its mask, no outline
    assert drawn[10, 10:50].any() and not drawn[25, 20:40].any()  # the car: outline (+ label)
    everything = changed(pixels(frame), annotate(frame, AnnotationStyle()))
    assert everything[0, 60:].any()  # without the option, the road's box is outlined too


def test_mask_of_a_box_partly_outside_is_clipped(device: torch.device) -> None:
    frame = make_frame(device)
    bits = torch.ones(10, 10, dtype=torch.bool)
    bits[:, :5] = False  # the left half of the box
    frame.add_object(
        label="cat", confidence=0.9, box=[100, 60, 200, 140], mask=Mask.from_tensor(bits)
    )
    canvas = annotate(frame, AnnotationStyle(boxes=False, labels=False))
    drawn = changed(pixels(frame), canvas)
    expected = torch.zeros(120, 160, dtype=torch.bool)
    expected[60:120, 150:160] = True
    assert torch.equal(drawn, expected)


def test_boxes_partly_or_fully_outside_and_degenerate_boxes(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(label="a", confidence=0.5, box=[-20, -20, 30, 40])
    frame.add_object(label="b", confidence=0.5, box=[140, 100, 400, 300])
    frame.add_object(label="c", confidence=0.5, box=[500, 500, 600, 600])  # fully outside
    frame.add_object(label="d", confidence=0.5, box=[50, 50, 50, 80])  # no width
    frame.add_object(label="e", confidence=0.5, box=[70, 70, 60, 90])  # inverted
    frame.add_object(label="f", confidence=0.5, box=[float("nan"), 0, 10, 10])
    canvas = annotate(frame, AnnotationStyle(labels=False, line_width=3))
    drawn = changed(pixels(frame), canvas)

    expected = torch.zeros(120, 160, dtype=torch.bool)
    expected[0:40, 27:30] = True  # box a: only its right and bottom edges are visible
    expected[37:40, 0:30] = True
    expected[100:103, 140:160] = True  # box b: only its top and left edges are visible
    expected[100:120, 140:143] = True
    assert torch.equal(drawn, expected)

    with_labels = annotate(frame, AnnotationStyle())
    assert with_labels.shape == pixels(frame).shape  # labels near the borders are clipped


def test_keypoints_are_discs_in_the_object_colour(device: torch.device) -> None:
    frame = make_frame(device)
    frame.add_object(
        label="person",
        confidence=0.9,
        box=[0, 0, 0, 0],  # keypoints are drawn even without a usable box
        keypoints=[Keypoint(50.5, 60.5), Keypoint(100, 100, score=0.0), Keypoint(159, 0)],
    )
    canvas = annotate(frame, AnnotationStyle(line_width=2))
    drawn = changed(pixels(frame), canvas)
    assert bool(drawn[60, 50]) and bool(drawn[58, 50]) and bool(drawn[60, 52])
    assert not drawn[58, 52]  # a disc, not a square
    assert not drawn[100, 100]  # zero score: not drawn
    assert bool(drawn[0, 159])  # clipped at the corner
    assert int(drawn.sum()) == 13 + 6


def test_colours_are_stable_per_label() -> None:
    assert len({label_color(name) for name in ("person", "car", "dog", "face", "bus")}) >= 4
    # CRC-32 based, not hash(): the same in every process whatever PYTHONHASHSEED is.
    assert label_color("person") == PERSON_COLOR


def test_frame_without_surface_is_an_error() -> None:
    frame = Frame(source_id="cam-7", seq=3, width=10, height=10)
    with pytest.raises(ValueError, match="cam-7#3 has no surface"):
        annotate(frame, AnnotationStyle())


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"line_width": 0}, "line_width"),
        ({"line_width": 2.5}, "line_width"),
        ({"font_scale": 0}, "font_scale"),
        ({"font_scale": True}, "font_scale"),
        ({"blur_labels": "face"}, "blur_labels"),
        ({"blur_labels": {1, 2}}, "blur_labels"),
        ({"mask_only_labels": "road"}, "mask_only_labels"),
        ({"boxes": 1}, "boxes"),
    ],
)
def test_style_is_checked(options: dict[str, object], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        AnnotationStyle(**options)  # type: ignore[arg-type]


def test_style_accepts_any_collection_of_labels() -> None:
    style = AnnotationStyle(blur_labels=["face", "plate"])  # type: ignore[arg-type]
    assert style.blur_labels == frozenset({"face", "plate"})
    assert hash(style) == hash(AnnotationStyle(blur_labels=frozenset({"plate", "face"})))


def test_font_renders_every_printable_character_distinctly() -> None:
    glyphs = {}
    for code in range(33, 127):
        mask = render_text(chr(code))
        assert mask.shape == (7, 5) and mask.any(), chr(code)
        glyphs[chr(code)] = mask
    assert len({tuple(m.flatten().tolist()) for m in glyphs.values()}) == len(glyphs)
    assert not render_text(" ").any()
    assert torch.equal(render_text("é"), render_text("?"))
    scaled = render_text("Ab", scale=3)
    assert scaled.shape == (21, 33) == text_size("Ab", scale=3)
    assert torch.equal(scaled[::3, ::3], render_text("Ab"))
    with pytest.raises(ValueError, match="scale"):
        render_text("x", scale=0)
