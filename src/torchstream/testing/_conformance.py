"""Conformance checks for third-party sources and sinks: run them in your own tests."""

from __future__ import annotations

import itertools

import torch

from torchstream._types import Sink, Source
from torchstream.frame import Frame
from torchstream.pipeline._session import Session

__all__ = ["ConformanceError", "check_sink", "check_source"]


class ConformanceError(AssertionError):
    """A source or sink breaks the contract; the message says which rule and where."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def check_source(source: Source, *, max_frames: int = 100) -> list[Frame]:
    """Open ``source``, read up to ``max_frames`` frames and check the Source contract:
    a non-empty ``source_id`` and a ``policy`` of ``block``/``latest``; frames of that source
    id with strictly increasing ``seq``; surfaces ``uint8 (height, width, 3)`` matching
    ``width``/``height``; non-decreasing ``pts_seconds`` where given; an idempotent
    ``close``. Returns the frames read."""
    _require(isinstance(source.source_id, str) and bool(source.source_id),
             f"source_id must be a non-empty str, got {source.source_id!r}")
    _require(source.policy in ("block", "latest"),
             f"policy must be 'block' or 'latest', got {source.policy!r}")
    prepare = getattr(source, "prepare", None)
    if prepare is not None:
        prepare(torch.device("cpu"))
    source.open()
    frames: list[Frame] = []
    try:
        for frame in itertools.islice(source.frames(), max_frames):
            where = f"{source.source_id}#{frame.seq}"
            _require(isinstance(frame, Frame), f"frames() must yield Frame, got {type(frame)}")
            _require(frame.source_id == source.source_id,
                     f"{where}: frame.source_id {frame.source_id!r} is not the source's id")
            if frames:
                _require(frame.seq > frames[-1].seq, f"{where}: seq must increase")
                previous = frames[-1].pts_seconds
                if previous is not None and frame.pts_seconds is not None:
                    _require(frame.pts_seconds >= previous, f"{where}: pts went backwards")
            surface = frame.surface
            _require(surface is not None, f"{where}: a source's frames need a surface")
            assert surface is not None
            _require(surface.dtype == torch.uint8 and tuple(surface.shape) == (
                frame.height, frame.width, 3
            ), f"{where}: surface {surface.dtype} {tuple(surface.shape)} does not match "
               f"{frame.width}x{frame.height} RGB uint8")
            frames.append(frame)
    finally:
        source.close()
        source.close()
    return frames


def check_sink(sink: Sink, frames: list[Frame] | None = None) -> None:
    """Drive ``sink`` as the pipeline does and check it copes: frames of two sources
    interleaved, each source's session ended, ``close`` called twice. ``frames`` defaults
    to 6 synthetic frames of sources ``a`` and ``b``."""
    _require(isinstance(sink.name, str) and bool(sink.name),
             f"name must be a non-empty str, got {sink.name!r}")
    if frames is None:
        from torchstream.testing import SyntheticSource

        a = list(SyntheticSource("a", frames=3).frames())
        b = list(SyntheticSource("b", frames=3).frames())
        frames = [f for pair in zip(a, b, strict=True) for f in pair]
    sessions: dict[str, Session] = {}
    for frame in frames:
        session = sessions.setdefault(frame.source_id, Session(source_id=frame.source_id))
        frame.__dict__["_session"] = session
        sink.write(frame)
    for session in sessions.values():
        session.end_reason = "end_of_stream"
        sink.end_session(session)
    sink.close()
    sink.close()
