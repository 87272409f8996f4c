"""A sink that hands every finished frame to a Python function."""

from __future__ import annotations

from collections.abc import Callable

from torchstream.frame import Frame
from torchstream.pipeline._session import Session

__all__ = ["CallbackSink"]


class CallbackSink:
    """Calls ``on_frame(frame)`` for every frame, in order per source, on the sink's thread;
    ``on_session_end(session)`` after each session's last frame when given.

    Keep the callback short: a slow callback slows the pipeline down through backpressure
    (files) or makes live sources drop frames. An exception in it is recorded on the frame's
    session and counted in the sink's statistics; later frames still arrive.
    """

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        *,
        on_session_end: Callable[[Session], None] | None = None,
        name: str = "callback",
    ) -> None:
        self.name = name
        self._on_frame = on_frame
        self._on_session_end = on_session_end

    def write(self, frame: Frame) -> None:
        self._on_frame(frame)

    def end_session(self, session: Session) -> None:
        if self._on_session_end is not None:
            self._on_session_end(session)

    def close(self) -> None:
        pass
