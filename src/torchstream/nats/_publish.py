"""The source side: :class:`Publisher` publishes frames into the input stream, with acks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torchstream._errors import ClosedResourceError
from torchstream.nats._errors import NatsUnavailableError
from torchstream.nats._layout import Layout
from torchstream.nats._wire import (
    OBJECT_THRESHOLD_BYTES,
    KeyframePosition,
    NatsMessage,
    encode,
    encode_keyframe_position,
)
from torchstream.transport._protocol import EndOfStream, FrameMessage, PacketPayload

__all__ = ["Publisher", "PublisherStatistics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublisherStatistics:
    """Counts of a :class:`Publisher` since it was made.

    ``published``: messages sent; ``acknowledged``: of those, stored by JetStream (an ack
    came; ``duplicates`` of them were already stored, a re-send). ``errors`` by reason:
    ``ack_timeout`` (no ack within the timeout: the message may or may not be stored),
    ``no_stream`` (no stream captures the subject: run ``torchstream nats init``),
    ``rejected`` (JetStream answered with an error). ``in_flight``: sent, not yet answered.
    ``keyframes_recorded``: keyframe positions written to the keyframe bucket;
    ``objects_stored``: images put in the object store.
    """

    published: int
    acknowledged: int
    duplicates: int
    errors: dict[str, int]
    in_flight: int
    keyframes_recorded: int
    objects_stored: int


@dataclass
class _Pending:
    message: NatsMessage | None  # None: a keyframe-bucket write
    timer: asyncio.TimerHandle
    stored: asyncio.Future[bool] | None = None  # set to whether JetStream stored it
    on_stored: Callable[[bool], object] | None = None  # called with the same

    def answer(self, stored: bool) -> None:
        if self.stored is not None and not self.stored.done():
            self.stored.set_result(stored)
        if self.on_stored is not None:
            on_stored, self.on_stored = self.on_stored, None
            try:
                on_stored(stored)
            except Exception:
                log.exception("nats publish: on_stored callback failed")


class Publisher:
    """Publishes a source's frames to ``<prefix>.in.<source_id>`` of ``layout``.

    :meth:`publish` returns as soon as the message is handed to the connection, while up to
    ``max_in_flight`` messages wait for JetStream's acks; at the limit it waits for a
    slot (backpressure: a slow or absent server slows the source instead of growing a
    queue). Each ack is checked as it comes: failures are counted by reason in
    :meth:`statistics` (and logged), not raised, because a camera goes on after a lost
    frame; the worker sees the gap in ``seq`` and counts it. An ack that does not come
    within ``ack_timeout_seconds`` frees its slot and counts as ``ack_timeout``.

    For a video keyframe, once its ack gives the frame's stream sequence, the publisher
    records ``KeyframePosition`` under the source id in the keyframe bucket (a new owner
    of the camera starts decoding there). Images over ``object_threshold_bytes`` are put
    in the object store first, and the message carries a reference.

    Messages carry ``Nats-Msg-Id = <source_id>:<seq>``: re-sending a frame within the
    stream's duplicate window stores it once. Use it as an async context manager or call
    :meth:`close`, which waits for the acks in flight (at most ``ack_timeout_seconds``).
    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        connection: NATS,
        layout: Layout,
        *,
        max_in_flight: int = 1024,
        ack_timeout_seconds: float = 5.0,
        record_keyframes: bool = True,
        object_threshold_bytes: int = OBJECT_THRESHOLD_BYTES,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if ack_timeout_seconds <= 0:
            raise ValueError(f"ack_timeout_seconds must be > 0, got {ack_timeout_seconds}")
        if object_threshold_bytes < 1:
            raise ValueError(
                f"object_threshold_bytes must be >= 1, got {object_threshold_bytes}"
            )
        self.connection = connection
        self.layout = layout
        self.max_in_flight = max_in_flight
        self.ack_timeout_seconds = ack_timeout_seconds
        self.record_keyframes = record_keyframes
        self.object_threshold_bytes = object_threshold_bytes
        self._window = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._tokens = itertools.count()
        self._inbox = connection.new_inbox()
        self._subscription: Any = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._last_keyframe: dict[str, int] = {}
        self._objects: Any = None
        self._published = 0
        self._acknowledged = 0
        self._duplicates = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._keyframes = 0
        self._stored_objects = 0

    async def __aenter__(self) -> Publisher:
        await self._subscribed()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _subscribed(self) -> None:
        if self._subscription is None:
            self._subscription = await self.connection.subscribe(
                f"{self._inbox}.*", cb=self._on_reply
            )

    def statistics(self) -> PublisherStatistics:
        return PublisherStatistics(
            published=self._published,
            acknowledged=self._acknowledged,
            duplicates=self._duplicates,
            errors=dict(self._errors),
            in_flight=sum(1 for p in self._pending.values() if p.message is not None),
            keyframes_recorded=self._keyframes,
            objects_stored=self._stored_objects,
        )

    async def publish(
        self,
        message: FrameMessage | EndOfStream,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        wait: bool = False,
        on_stored: Callable[[bool], object] | None = None,
    ) -> bool | None:
        """Publish one frame (with its payload) or an end of stream. Waits only for a slot
        in the ack window (and, for a large image, for the object store). Raises
        ``ValueError`` for a message a receiver would reject (checked before sending),
        :class:`~torchstream.ClosedResourceError` after :meth:`close`,
        :class:`NatsUnavailableError` when the connection is closed for good.

        ``wait``: wait for this message's answer too, and return whether JetStream stored it
        (None without ``wait``). ``on_stored``: called once, on the event loop, with whether
        JetStream stored the message (False: an error, or no ack within the timeout), when
        its answer comes; not called when this raises. A source that must know what was
        stored, frame by frame, uses it instead of a task per frame awaiting ``wait``: on
        the 2-core VM that task cost more than the rest of the publish."""
        if self._closed:
            raise ClosedResourceError("the publisher is closed")
        encoded = encode(
            self.layout.input_subject(message.source_id), message, payload,
            object_threshold_bytes=self.object_threshold_bytes,
        )
        await self._subscribed()
        if encoded.object_payload is not None:
            await self._store_object(encoded.headers["Ts-Object"], encoded.object_payload)
        await self._window.acquire()
        stored = asyncio.get_running_loop().create_future() if wait else None
        try:
            await self._send(
                encoded.subject, encoded.body, encoded.headers, message, stored, on_stored
            )
        except BaseException:
            self._window.release()
            raise
        self._published += 1
        return None if stored is None else await stored

    async def end(self, source_id: str, *, last_seq: int | None) -> bool:
        """Publish the end of stream of ``source_id`` (``last_seq``: its last frame's seq,
        None if it sent none) and wait for its answer: whether JetStream stored it (and so,
        the subject being ordered, every frame of the source acknowledged before it)."""
        stored = await self.publish(
            EndOfStream(source_id=source_id, last_seq=last_seq), wait=True
        )
        return bool(stored)

    async def _send(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        message: NatsMessage | None,
        stored: asyncio.Future[bool] | None = None,
        on_stored: Callable[[bool], object] | None = None,
    ) -> None:
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.ack_timeout_seconds, self._expire, token)
        self._pending[token] = _Pending(message, timer, stored, on_stored)
        self._idle.clear()
        try:
            await self.connection.publish(
                subject, body, reply=f"{self._inbox}.{token}", headers=headers
            )
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            self._settle(token)
            raise NatsUnavailableError(
                f"cannot publish to {subject}: {type(exc).__name__}"
            ) from exc

    def _settle(self, token: str) -> _Pending | None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return None
        pending.timer.cancel()
        if pending.message is not None:
            self._window.release()
        if not self._pending:
            self._idle.set()
        return pending

    def _expire(self, token: str) -> None:
        pending = self._settle(token)
        if pending is not None:
            self._fail(pending, "ack_timeout", f"no ack within {self.ack_timeout_seconds} s")

    def _fail(self, pending: _Pending, reason: str, detail: str) -> None:
        pending.answer(False)
        what = "keyframe position" if pending.message is None else "message"
        if pending.message is not None:
            self._errors[reason] += 1
            what = f"{pending.message.source_id} message"
        else:
            self._errors[f"keyframe_{reason}"] += 1
        log.warning("nats publish: %s failed (%s): %s", what, reason, detail)

    async def _on_reply(self, reply: Msg) -> None:
        pending = self._settle(reply.subject.rsplit(".", 1)[-1])
        if pending is None:
            return  # answered after its timeout: already counted
        headers = reply.headers or {}
        if headers.get("Status") == "503":
            self._fail(pending, "no_stream", f"no stream captures {self.layout.prefix}.in.*")
            return
        try:
            answer = json.loads(reply.data)
        except ValueError:
            self._fail(pending, "rejected", f"unreadable ack {reply.data[:80]!r}")
            return
        error = answer.get("error")
        if error:
            self._fail(pending, "rejected", str(error.get("description", error)))
            return
        message = pending.message
        if message is None:
            self._keyframes += 1
            return
        self._acknowledged += 1
        pending.answer(True)
        if answer.get("duplicate"):
            self._duplicates += 1
            return
        if (
            self.record_keyframes
            and isinstance(message, FrameMessage)
            and message.keyframe
            and isinstance(message.payload, PacketPayload)
        ):
            await self._record_keyframe(message, int(answer["seq"]))

    async def _record_keyframe(self, message: FrameMessage, stream_seq: int) -> None:
        if stream_seq <= self._last_keyframe.get(message.source_id, 0):
            return  # acks came out of order: keep the newer position
        self._last_keyframe[message.source_id] = stream_seq
        value = encode_keyframe_position(KeyframePosition(
            stream_seq=stream_seq, seq=message.seq, pts_seconds=message.pts_seconds
        ))
        subject = f"$KV.{self.layout.keyframes_bucket}.{message.source_id}"
        try:
            await self._send(subject, value, {}, None)
        except NatsUnavailableError as exc:
            self._errors["keyframe_unavailable"] += 1
            log.warning("nats publish: keyframe position of %s not recorded: %s",
                        message.source_id, exc)

    async def _store_object(self, name: str, data: memoryview) -> None:
        if self._objects is None:
            self._objects = await self.connection.jetstream().object_store(
                self.layout.objects_bucket
            )
        try:
            await asyncio.wait_for(self._objects.put(name, bytes(data)),
                                   timeout=self.ack_timeout_seconds * 4)
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            raise NatsUnavailableError(f"cannot store image {name}: {exc!r}") from exc
        self._stored_objects += 1

    async def flush(self, timeout_seconds: float | None = None) -> bool:
        """Wait until every message sent has its answer (ack, error or timeout); whether
        that happened within ``timeout_seconds`` (None: at most the ack timeout)."""
        if timeout_seconds is None:
            timeout_seconds = self.ack_timeout_seconds + 1.0
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Wait for the acks in flight (see :meth:`flush`) and stop; idempotent. Does not
        close the connection, which the caller owns."""
        if self._closed:
            return
        self._closed = True
        if not self.connection.is_closed:
            await self.flush()
        for token in list(self._pending):
            self._expire(token)
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not self.connection.is_closed:
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await subscription.unsubscribe()
