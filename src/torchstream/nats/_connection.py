"""Connecting to NATS with the settings torchstream's processes share."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS

import nats
from torchstream.nats._errors import NatsUnavailableError

__all__ = ["close_quietly", "connect"]

log = logging.getLogger(__name__)


async def connect(
    servers: str | list[str],
    *,
    name: str | None = None,
    connect_timeout_seconds: float = 5.0,
    ping_interval_seconds: float = 2.0,
    max_outstanding_pings: int = 2,
    reconnect_wait_seconds: float = 0.25,
    on_error: Callable[[Exception], None] | None = None,
) -> NATS:
    """Connect to NATS (``servers``: one URL, a comma-separated list, or a list: give every
    node of a cluster so the client can move). Raises :class:`NatsUnavailableError` naming
    the URLs when none answers within ``connect_timeout_seconds``.

    Once connected the client reconnects by itself forever, every ``reconnect_wait_seconds``;
    a link that answers no ``PING`` for ``ping_interval_seconds * max_outstanding_pings``
    counts as dead (a black-holed network shows in about that long, 4 s by default, where
    nats-py's own default is 4 minutes). Close it with ``await connection.close()``.

    ``on_error`` is called (on the event loop) with each asynchronous error the client
    reports: failed reconnect attempts, and ``nats.errors.SlowConsumerError`` for each
    message a subscription dropped because it had too many unread ones.
    """
    if isinstance(servers, str):
        servers = [url.strip() for url in servers.split(",") if url.strip()]
    if not servers:
        raise ValueError("servers must name at least one NATS URL")
    if connect_timeout_seconds <= 0:
        raise ValueError(f"connect_timeout_seconds must be > 0, got {connect_timeout_seconds}")

    async def quiet(error: Exception) -> None:
        # nats-py reports every failed reconnect attempt here; its default prints them all.
        log.debug("nats: %s", error)
        if on_error is not None:
            on_error(error)

    async def disconnected() -> None:
        if not connection.is_closed:  # closing on purpose disconnects too
            log.warning("nats: disconnected from %s", ", ".join(servers))

    async def reconnected() -> None:
        log.info("nats: reconnected")

    await _probe(servers, connect_timeout_seconds)
    connection = NATS()
    try:
        await asyncio.wait_for(
            connection.connect(
                servers, name=name, connect_timeout=connect_timeout_seconds,  # type: ignore[arg-type]
                allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=reconnect_wait_seconds,  # type: ignore[arg-type]
                ping_interval=ping_interval_seconds,  # type: ignore[arg-type]
                max_outstanding_pings=max_outstanding_pings, error_cb=quiet,
                disconnected_cb=disconnected, reconnected_cb=reconnected,
            ),
            timeout=connect_timeout_seconds * max(1, len(servers)) + 1.0,
        )
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        with_closed = connection
        if not with_closed.is_closed:
            await with_closed.close()
        raise NatsUnavailableError(
            f"cannot reach NATS at {', '.join(servers)}: {exc or type(exc).__name__}"
        ) from exc
    return connection


async def _probe(servers: list[str], timeout_seconds: float) -> None:
    """Fail at once when no server accepts a TCP connection (nats-py, told to reconnect
    forever, would retry a refused first connection until our timeout)."""
    problems = []
    for url in servers:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 4222),
                timeout_seconds,
            )
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            problems.append(f"{url}: {exc or type(exc).__name__}")
            continue
        writer.close()
        return
    raise NatsUnavailableError(f"cannot reach NATS at {', '.join(servers)}: {'; '.join(problems)}")


async def close_quietly(connection: NATS) -> None:
    """Close ``connection``; a link already lost (nats-py then raises from its final flush)
    is not an error here."""
    try:
        await connection.close()
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        log.debug("nats: closing a lost connection: %r", exc)
