"""Frames and their metadata: the typed, versioned schema every stage reads and writes.

A :class:`Frame` is one decoded picture of one source. Its metadata (identity, timing, size,
objects and attributes) is a msgspec Struct that serialises to JSON for people and MessagePack
for the wire and round-trips exactly. Its pixels, the *surface*, are a ``torch.Tensor`` on the
device that decoded it and never serialise with the metadata: a sink that needs pixels asks
for them explicitly.

Surface layout: ``uint8`` tensor of shape ``(height, width, 3)``, RGB, on any device. Stages
read it and never modify it in place; anything drawn goes on an output canvas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import torch

    from torchstream.pipeline._session import Session

__all__ = [
    "SCHEMA_VERSION",
    "Frame",
    "Keypoint",
    "Mask",
    "ObjectMeta",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
]

SCHEMA_VERSION = 1
"""Version of the metadata schema; bumped on any incompatible change."""


class Keypoint(msgspec.Struct, array_like=True, frozen=True):
    """A landmark in frame pixels, serialised compactly as ``[x, y, score]``."""

    x: float
    y: float
    score: float = 1.0


class Mask(msgspec.Struct, frozen=True, kw_only=True):
    """A binary mask over an object's box, run-length encoded.

    ``height`` x ``width`` is the mask's own resolution (it may be lower than the box's size in
    pixels: the mask is stretched over the box). ``counts`` alternate runs of 0 and 1 over the
    row-major flattened mask, starting with a (possibly empty) run of 0.
    """

    height: int
    width: int
    counts: list[int]

    @classmethod
    def from_tensor(cls, mask: torch.Tensor) -> Mask:
        """Encode a 2-D boolean (or 0/1) tensor, on any device."""
        import torch

        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D (height, width), got shape {tuple(mask.shape)}")
        flat = mask.reshape(-1).to(device="cpu", dtype=torch.bool)
        height, width = int(mask.shape[0]), int(mask.shape[1])
        if flat.numel() == 0:
            return cls(height=height, width=width, counts=[])
        change = torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1
        edges = torch.cat(
            [torch.zeros(1, dtype=torch.long), change, torch.tensor([flat.numel()])]
        )
        runs = (edges[1:] - edges[:-1]).tolist()
        if bool(flat[0]):
            runs.insert(0, 0)
        return cls(height=height, width=width, counts=[int(r) for r in runs])

    def to_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Decode into a boolean tensor of shape ``(height, width)``."""
        import torch

        total = self.height * self.width
        if sum(self.counts) != total:
            raise ValueError(
                f"mask counts sum to {sum(self.counts)}, expected height*width = {total}"
            )
        values = torch.arange(len(self.counts)) % 2 == 1
        flat = torch.repeat_interleave(values, torch.tensor(self.counts, dtype=torch.long))
        return flat.reshape(self.height, self.width).to(device)


class ObjectMeta(msgspec.Struct, kw_only=True):
    """One object found in a frame.

    ``box`` is ``[x1, y1, x2, y2]`` in frame pixels (x2/y2 exclusive edges, floats).
    ``id`` is unique within the frame; ``parent_id`` names the object this one was found in
    (a face inside a person); ``track_id`` is stable across frames of a session when a tracker
    set it. ``attributes`` hold namespaced, JSON-compatible values (``"age.years": 31``).
    """

    id: int
    label: str
    confidence: float
    box: list[float]
    mask: Mask | None = None
    keypoints: list[Keypoint] | None = None
    track_id: int | None = None
    parent_id: int | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"box must be [x1, y1, x2, y2], got {self.box!r}")


class Frame(msgspec.Struct, kw_only=True, dict=True):
    """One decoded picture of one source, with its metadata.

    Serialised fields are the metadata. ``surface`` (the pixels) and ``session`` (the runtime
    session it belongs to) live beside them and are never serialised.

    ``attributes`` are frame-level, namespaced, JSON-compatible values: auxiliary data such as
    GPS readings (``"gps.lat"``), a model's frame classification, or a source's notes
    (``"image.path"``). Values must be ``None``, ``bool``, ``int``, finite ``float``, ``str``,
    or lists/dicts of those: exactly what JSON and MessagePack both round-trip.
    """

    source_id: str
    seq: int
    pts_seconds: float | None = None
    keyframe: bool = True
    width: int
    height: int
    codec: str = ""
    objects: list[ObjectMeta] = msgspec.field(default_factory=list)
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def surface(self) -> torch.Tensor | None:
        """The pixels: ``uint8 (height, width, 3)`` RGB on the decoder's device, or None."""
        value: torch.Tensor | None = self.__dict__.get("_surface")
        return value

    @surface.setter
    def surface(self, value: torch.Tensor | None) -> None:
        if value is not None and (value.dim() != 3 or value.shape[-1] != 3):
            raise ValueError(
                f"surface must be (height, width, 3) RGB, got shape {tuple(value.shape)}"
            )
        self.__dict__["_surface"] = value

    @property
    def session(self) -> Session | None:
        """The runtime session of this frame's source, while it is inside a pipeline."""
        value: Session | None = self.__dict__.get("_session")
        return value

    def require_surface(self, user: str) -> torch.Tensor:
        """The surface, or a ValueError naming ``user`` (a stage or sink) and this frame."""
        surface = self.surface
        if surface is None:
            raise ValueError(
                f"{user}: frame {self.source_id}#{self.seq} of source {self.source_id!r} has "
                "no surface (decoded pixels are needed here)"
            )
        return surface

    def add_object(
        self,
        *,
        label: str,
        confidence: float,
        box: list[float],
        mask: Mask | None = None,
        keypoints: list[Keypoint] | None = None,
        parent_id: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> ObjectMeta:
        """Append an object with the next free id and return it."""
        next_id = max((o.id for o in self.objects), default=-1) + 1
        obj = ObjectMeta(
            id=next_id,
            label=label,
            confidence=float(confidence),
            box=[float(v) for v in box],
            mask=mask,
            keypoints=keypoints,
            parent_id=parent_id,
            attributes=attributes or {},
        )
        self.objects.append(obj)
        return obj

    def __repr__(self) -> str:
        surface = self.surface
        pixels = (
            "None"
            if surface is None
            else f"Tensor(shape={tuple(surface.shape)}, dtype={surface.dtype}, "
            f"device={surface.device})"
        )
        return (
            f"Frame(source_id={self.source_id!r}, seq={self.seq}, "
            f"pts_seconds={self.pts_seconds}, {self.width}x{self.height}, codec={self.codec!r}, "
            f"objects={len(self.objects)}, surface={pixels})"
        )


_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Frame)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Frame)


def encode_json(frame: Frame) -> bytes:
    """The frame's metadata as one line of JSON (no trailing newline)."""
    return _json_encoder.encode(frame)


def decode_json(data: bytes | str) -> Frame:
    """Parse and validate JSON metadata into a :class:`Frame` (with no surface)."""
    return _json_decoder.decode(data)


def encode_msgpack(frame: Frame) -> bytes:
    """The frame's metadata as MessagePack, for the wire."""
    return _msgpack_encoder.encode(frame)


def decode_msgpack(data: bytes) -> Frame:
    """Parse and validate MessagePack metadata into a :class:`Frame` (with no surface)."""
    return _msgpack_decoder.decode(data)
