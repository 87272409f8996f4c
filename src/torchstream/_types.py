"""The contracts: what a source, a stage and a sink must provide. Nothing to inherit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torchstream.frame import Frame
    from torchstream.pipeline._channel import Policy
    from torchstream.pipeline._session import Session

__all__ = ["PumpedSource", "Sink", "Source", "Stage"]


@runtime_checkable
class Source(Protocol):
    """Produces the frames of one source id, in order, on the thread the pipeline gives it.

    ``open`` and iterating ``frames()`` raise :class:`~torchstream.SourceError` naming the
    input when it cannot be opened or read; the pipeline fails that source's session only.
    ``policy`` is the backpressure of this source: ``block`` (files) or ``latest`` (live).
    ``close`` is idempotent; the pipeline calls it on the source's thread when the source
    ends, fails or is stopped (it stops a source between two frames).

    Optional: ``prepare(device: torch.device)``, called before ``open`` with the pipeline's
    device, so a source can decode where the stages run (NVDEC, nvJPEG). ``stop()``, called
    from another thread when the pipeline removes the source or closes: ``frames()`` should
    end soon even if it is waiting for input (a camera reconnecting); it must be idempotent.
    A source that decodes on the GPU sets ``frame.__dict__["_ready"]`` to a CUDA event
    recorded after the picture is complete; stages and sinks wait on it on their own streams.
    A source may set ``frame.__dict__["_t_received"]`` (``time.monotonic()`` when its data
    arrived): the pipeline's per-source lag is measured from it (else from entering).
    """

    source_id: str
    policy: Policy

    def open(self) -> None: ...

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


@runtime_checkable
class PumpedSource(Source, Protocol):
    """A source whose data is pushed to it from elsewhere, which a pipeline made with
    ``shared_source_threads`` decodes on its shared threads instead of a thread of its own.

    ``attach(wake)`` is called once, before ``open``; the source calls ``wake()`` (from any
    thread, cheap) whenever it has something new: data, its end, its closing. The pipeline
    then gives it a turn: it iterates ``pump()``, which yields the frames of what is queued
    at that moment without waiting for more. ``finished`` becomes True once the stream is
    over and ``pump()`` has yielded its last frame. Turns of one source never overlap.
    """

    @property
    def finished(self) -> bool: ...

    def attach(self, wake: Callable[[], None]) -> None: ...

    def pump(self) -> Iterator[Frame]: ...


@runtime_checkable
class Stage(Protocol):
    """Processes batches of frames, adding metadata in place.

    Optional hooks, called on the stage's own thread when present:
    ``setup(device: torch.device)`` once before the first frame (load the model here),
    ``on_session_start(session)`` / ``on_session_end(session)`` around each session,
    ``close()`` once after the last frame. An optional ``batch_policy`` attribute
    (:class:`~torchstream.BatchPolicy`) sets how frames are grouped; without it every frame
    is processed alone.

    If ``process`` raises, the runtime retries the frames one by one and drops only the ones
    that fail again (counted as ``stage_error``, recorded on their sessions).
    """

    name: str

    def process(self, frames: Sequence[Frame]) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Consumes finished frames on its own thread, in order per source.

    ``write`` is called for every frame, ``end_session`` after a session's last frame,
    ``close`` once when the pipeline shuts down (flush and release files here).
    """

    name: str

    def write(self, frame: Frame) -> None: ...

    def end_session(self, session: Session) -> None: ...

    def close(self) -> None: ...
