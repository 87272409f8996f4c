"""Reading results from NATS: a plain subscription to ``<prefix>.out.*`` (results as they are
published) or an ordered consumer of the results stream from a start point. What each
message means is decided by :class:`~torchstream.nats._gate.ResultGate`; the sinks built on
this are :class:`~torchstream.client.NatsSink` and :class:`~torchstream.client.AsyncNatsSink`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal

import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torchstream.nats._errors import LayoutError, NatsUnavailableError
from torchstream.nats._layout import Layout

__all__ = ["START_NAMES", "Start", "check_start", "stream_seq_of", "subscribe_results"]

Start = Literal["live", "new", "first"] | int | datetime.datetime
"""Where a sink starts reading: ``"live"`` (a plain subscription), ``"new"`` / ``"first"``
(the results stream, from now on / from its oldest result), a stream sequence, or a time."""

START_NAMES = ("live", "new", "first")

_ORDERED_HEARTBEAT_SECONDS = 2.0
"""Idle heartbeats of the ordered consumer: two missed ones recreate it where it left off
(after a reconnect, or when the server lost it)."""


def check_start(start: object) -> None:
    """ValueError unless ``start`` is a :data:`Start`."""
    if isinstance(start, str):
        if start not in START_NAMES:
            raise ValueError(
                f"start must be 'live', 'new', 'first', a stream sequence (int >= 1) or an "
                f"aware datetime, got {start!r}"
            )
    elif isinstance(start, bool) or not isinstance(start, (int, datetime.datetime)):
        raise ValueError(
            f"start must be 'live', 'new', 'first', a stream sequence (int >= 1) or an "
            f"aware datetime, got {start!r}"
        )
    elif isinstance(start, int) and start < 1:
        raise ValueError(f"start as a stream sequence must be >= 1, got {start}")
    elif isinstance(start, datetime.datetime) and start.utcoffset() is None:
        raise ValueError(f"start as a datetime must be timezone-aware, got {start!r}")


def stream_seq_of(message: Msg) -> int | None:
    """The stream sequence of a message delivered by a JetStream consumer (None for a plain
    subscription's)."""
    try:
        return int(message.metadata.sequence.stream)
    except (nats.errors.Error, ValueError, IndexError):
        return None


def _deliver(start: Start) -> dict[str, Any]:
    if start == "new":
        return {"deliver_policy": nats.js.api.DeliverPolicy.NEW}
    if start == "first":
        return {"deliver_policy": nats.js.api.DeliverPolicy.ALL}
    if isinstance(start, datetime.datetime):
        return {"deliver_policy": nats.js.api.DeliverPolicy.BY_START_TIME,
                "opt_start_time": start}
    assert isinstance(start, int)
    return {"deliver_policy": nats.js.api.DeliverPolicy.BY_START_SEQUENCE,
            "opt_start_seq": start}


async def subscribe_results(
    connection: NATS,
    layout: Layout,
    on_message: Callable[[Msg], Awaitable[None]],
    *,
    source_ids: Collection[str] | None = None,
    start: Start = "live",
    pending_messages_limit: int = 65536,
) -> Any:
    """Subscribe ``connection`` to the results of ``source_ids`` (None: of every source) and
    call ``on_message`` for each, one at a time, in the order of the stream. Returns the
    subscription (``await subscription.unsubscribe()``).

    ``start="live"``: a plain subscription (no stream needed; what is published while the
    link is down, or beyond ``pending_messages_limit`` unread messages, is lost). Else an
    ordered consumer of the layout's results stream (in memory on the server, removed when
    this connection goes away), which picks up where it left off after a reconnect.
    Raises :class:`~torchstream.nats.LayoutError` when the layout has no results stream or
    the server does not have it, :class:`~torchstream.nats.NatsUnavailableError` when
    JetStream does not answer.
    """
    check_start(start)
    ids = sorted(set(source_ids)) if source_ids is not None else None
    subjects = [layout.result_subject(sid) for sid in ids] if ids else [f"{layout.prefix}.out.*"]
    if start == "live":
        # One subscription, so that results come in the order they were published: the
        # fence compares epochs across the sources of a partition.
        subject = subjects[0] if len(subjects) == 1 else f"{layout.prefix}.out.*"
        return await connection.subscribe(
            subject, cb=on_message, pending_msgs_limit=pending_messages_limit
        )
    stream = layout.results_stream
    if stream is None:
        raise LayoutError(f"start={start!r} reads the results stream, and the layout has none "
                          "(results_stream=None): use start='live'")
    js = connection.jetstream()
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise LayoutError(
            f"no results stream {stream} on the server: create it with `torchstream nats "
            "init`, or read with start='live'"
        ) from None
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError,
            nats.js.errors.ServiceUnavailableError) as exc:
        raise NatsUnavailableError(f"JetStream does not answer: {exc!r}") from exc
    config = nats.js.api.ConsumerConfig(
        filter_subjects=subjects if len(subjects) > 1 else None,
        idle_heartbeat=_ORDERED_HEARTBEAT_SECONDS,
        **_deliver(start),
    )
    try:
        return await js.subscribe(
            subjects[0], stream=stream, cb=on_message, ordered_consumer=True, config=config,
            pending_msgs_limit=pending_messages_limit,
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError,
            nats.js.errors.ServiceUnavailableError) as exc:
        raise NatsUnavailableError(f"JetStream does not answer: {exc!r}") from exc
