"""The tracing hooks of the runtime. The core calls them; ``torchstream.telemetry`` implements
them with OpenTelemetry, so the core never imports it. Without a tracer nothing is called."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from torchstream.frame import Frame

__all__ = ["FrameTracer"]


@runtime_checkable
class FrameTracer(Protocol):
    """Follows frames through a pipeline.

    ``start_frame`` runs on the source's thread as a frame enters (decide sampling, open the
    frame's root span); ``stage`` wraps one stage's work on a batch, on the stage's thread;
    ``end_frame`` runs once per frame, when it is handed to the sinks (``outcome="out"``) or
    dropped (the drop reason). Keep them cheap for frames that are not sampled.
    """

    def start_frame(self, frame: Frame) -> None: ...

    def stage(self, name: str, frames: Sequence[Frame]) -> AbstractContextManager[None]: ...

    def end_frame(self, frame: Frame, outcome: str) -> None: ...
