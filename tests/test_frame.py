from __future__ import annotations

import math

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream import (
    SCHEMA_VERSION,
    Frame,
    Keypoint,
    Mask,
    ObjectMeta,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
attributes = st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=4)


@st.composite
def masks(draw: st.DrawFn) -> Mask:
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    return Mask.from_tensor(torch.tensor(bits).reshape(h, w))


objects = st.builds(
    ObjectMeta,
    id=st.integers(0, 10_000),
    label=st.text(min_size=1, max_size=10),
    confidence=finite,
    box=st.lists(finite, min_size=4, max_size=4),
    mask=st.none() | masks(),
    keypoints=st.none()
    | st.lists(st.builds(Keypoint, x=finite, y=finite, score=finite), max_size=5),
    track_id=st.none() | st.integers(0, 2**31),
    parent_id=st.none() | st.integers(0, 2**31),
    attributes=attributes,
)
frames = st.builds(
    Frame,
    source_id=st.text(min_size=1, max_size=16),
    seq=st.integers(0, 2**40),
    pts_seconds=st.none() | finite,
    keyframe=st.booleans(),
    width=st.integers(1, 8192),
    height=st.integers(1, 8192),
    codec=st.sampled_from(["h264", "hevc", "mjpeg", ""]),
    objects=st.lists(objects, max_size=4),
    attributes=attributes,
)


@settings(max_examples=200, deadline=None)
@given(frames)
def test_json_round_trip_is_exact(frame: Frame) -> None:
    assert decode_json(encode_json(frame)) == frame


@settings(max_examples=200, deadline=None)
@given(frames)
def test_msgpack_round_trip_is_exact(frame: Frame) -> None:
    assert decode_msgpack(encode_msgpack(frame)) == frame


def test_surface_is_not_serialised_and_repr_shows_no_pixels() -> None:
    frame = Frame(source_id="cam", seq=3, width=4, height=2)
    frame.surface = torch.zeros(2, 4, 3, dtype=torch.uint8)
    data = msgspec.json.decode(encode_json(frame))
    assert "surface" not in data and "_surface" not in data
    assert data["schema_version"] == SCHEMA_VERSION
    assert "shape=(2, 4, 3)" in repr(frame) and "tensor(" not in repr(frame)


def test_surface_must_be_rgb_hwc() -> None:
    frame = Frame(source_id="cam", seq=0, width=4, height=2)
    with pytest.raises(ValueError, match="surface must be"):
        frame.surface = torch.zeros(3, 2, 4)


def test_decode_rejects_wrong_types_with_a_path() -> None:
    with pytest.raises(msgspec.ValidationError, match="seq"):
        decode_json(b'{"source_id": "a", "seq": "x", "width": 1, "height": 1}')


def test_add_object_assigns_fresh_ids() -> None:
    frame = Frame(source_id="cam", seq=0, width=10, height=10)
    a = frame.add_object(label="face", confidence=0.9, box=[1, 2, 3, 4])
    b = frame.add_object(label="face", confidence=0.8, box=[2, 2, 3, 4], parent_id=a.id)
    assert (a.id, b.id, b.parent_id) == (0, 1, 0)
    with pytest.raises(ValueError, match="box"):
        ObjectMeta(id=0, label="x", confidence=1.0, box=[1, 2, 3])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2)])
def test_mask_rle_round_trip(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    bits = torch.rand(shape, generator=gen) > 0.5
    mask = Mask.from_tensor(bits)
    assert sum(mask.counts) == math.prod(shape)
    assert torch.equal(mask.to_tensor(), bits)
    with pytest.raises(ValueError, match="counts sum"):
        Mask(height=2, width=2, counts=[1]).to_tensor()


def test_require_surface_names_the_user_and_the_frame() -> None:
    frame = Frame(source_id="cam", seq=7, width=2, height=1)
    with pytest.raises(ValueError, match=r"stage 'x': frame cam#7 of source 'cam' has no surface"):
        frame.require_surface("stage 'x'")
    frame.surface = torch.zeros(1, 2, 3, dtype=torch.uint8)
    assert frame.require_surface("stage 'x'") is frame.surface
