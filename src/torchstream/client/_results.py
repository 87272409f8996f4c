"""The receiving half of the client's sans-IO core, shared by :class:`~torchstream.client.Sink`
and :class:`~torchstream.client.AsyncSink`: what each received message means for the caller."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from torchstream.client._requests import check_source_id
from torchstream.client._trace import trace_id_of
from torchstream.frame import Frame
from torchstream.transport._protocol import EndOfStream, Message, Payload, ResultMessage

__all__ = ["ContentKind", "Result", "Results"]

ContentKind = Literal["none", "original", "image"]


@dataclass(frozen=True, slots=True, repr=False)
class Result:
    """One thing a pipeline sent back: a frame's result or a source's end-of-stream.

    A frame's result has its metadata in ``frame`` (objects, attributes, size; no surface),
    and ``content`` as the pipeline chose: ``"none"``, ``"original"`` (the bytes that were
    sent) or ``"image"`` (a picture the pipeline made, an annotated JPEG for example).
    ``content`` is a zero-copy view of the received message part (``bytes(result.content)``
    for a copy), ``content_description`` says what it holds. An end-of-stream has
    ``end_of_stream=True``, no ``frame``, and ``seq`` = the source's last seq (None: none).
    ``trace_id`` / ``traceparent`` are those of the request that caused it, when the
    pipeline passed them on: the request's trace id; the parent is the request's, or the
    module's ``frame`` span when the module traced the frame (so spans you open from it
    nest under the module's). ``stream_seq`` is the result's sequence in the NATS results
    stream when a :class:`~torchstream.client.NatsSink` read it from there (pass
    ``start=stream_seq + 1`` to resume after it), else None.
    """

    source_id: str
    seq: int | None
    frame: Frame | None
    trace_id: str | None
    traceparent: str | None = None
    content_kind: ContentKind = "none"
    content: memoryview | None = None
    content_description: Payload | None = None
    end_of_stream: bool = False
    stream_seq: int | None = None

    def __repr__(self) -> str:
        if self.end_of_stream:
            return (
                f"Result(source_id={self.source_id!r}, end_of_stream, last_seq={self.seq}, "
                f"trace_id={self.trace_id})"
            )
        content: str = self.content_kind
        if self.content is not None:
            content += f", {self.content.nbytes} bytes"
        return (
            f"Result(source_id={self.source_id!r}, seq={self.seq}, trace_id={self.trace_id}, "
            f"frame={self.frame!r}, content={content})"
        )



def _trace_id(traceparent: str | None) -> str | None:
    return None if traceparent is None else trace_id_of(traceparent)



class Results:
    """The receiving half: turns messages into :class:`Result` objects for the sources
    wanted (``source_ids``: exactly these; ``prefix``: ids starting with it; neither: all).

    Messages of other sources are counted in ``filtered``; messages that are not results
    (a frame or acknowledgement sent to a sink by mistake) in ``unexpected``.
    """

    def __init__(
        self, *, source_ids: Collection[str] | None = None, prefix: str | None = None
    ) -> None:
        if source_ids is not None and prefix is not None:
            raise ValueError("give source_ids or prefix, not both")
        if isinstance(source_ids, str):
            raise ValueError(f"source_ids must be a collection of ids, got {source_ids!r}")
        if source_ids is not None:
            for source_id in source_ids:
                check_source_id(source_id)
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string or None, got {prefix!r}")
        self._ids = None if source_ids is None else frozenset(source_ids)
        self._prefix = prefix
        self.results = 0
        self.end_of_streams = 0
        self.filtered = 0
        self.unexpected = 0

    @property
    def subscriptions(self) -> list[str]:
        """Topic prefixes a sub socket should subscribe to (it filters before decoding;
        :meth:`accept` still checks ids exactly)."""
        if self._ids is not None:
            return sorted(self._ids)
        return [self._prefix or ""]

    def wants(self, source_id: str) -> bool:
        if self._ids is not None:
            return source_id in self._ids
        return self._prefix is None or source_id.startswith(self._prefix)

    def accept(
        self, message: Message, payload: memoryview | None, *, stream_seq: int | None = None
    ) -> Result | None:
        """The :class:`Result` for a received message, or None when it is filtered out or not
        a result (counted). ``stream_seq``: its sequence in a NATS stream, if read from one."""
        if isinstance(message, ResultMessage):
            if not self.wants(message.source_id):
                self.filtered += 1
                return None
            self.results += 1
            return Result(
                source_id=message.source_id,
                seq=message.seq,
                frame=message.frame,
                trace_id=_trace_id(message.traceparent),
                traceparent=message.traceparent,
                content_kind=message.content,
                content=payload,
                content_description=message.payload,
                stream_seq=stream_seq,
            )
        if isinstance(message, EndOfStream):
            if not self.wants(message.source_id):
                self.filtered += 1
                return None
            self.end_of_streams += 1
            return Result(
                source_id=message.source_id,
                seq=message.last_seq,
                frame=None,
                trace_id=_trace_id(message.traceparent),
                traceparent=message.traceparent,
                end_of_stream=True,
                stream_seq=stream_seq,
            )
        self.unexpected += 1
        return None
