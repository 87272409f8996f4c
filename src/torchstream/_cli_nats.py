"""``torchstream nats init``: create or check the JetStream layout (needs
``torchstream[nats]``); the ``--nats URL`` destination of the source adapters, and what the
sink adapters read with ``--nats URL`` (through the client's :class:`NatsSink`)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from torchstream._cli_common import _console

log = logging.getLogger(__name__)

NATS_HELP = (
    "NATS server URL (nats://host:4222); for a cluster, several separated by commas."
)


async def close_quietly(connection: Any) -> None:
    from torchstream.nats._connection import close_quietly as close

    await close(connection)


def _nats() -> Any:
    try:
        import torchstream.nats as nats_layer
    except ImportError as exc:  # MissingDependencyError is an ImportError
        raise click.UsageError(str(exc)) from exc
    return nats_layer


def layout_options(function: Any) -> Any:
    """The options that say which layout to use (the same on every command of a
    deployment)."""
    function = click.option(
        "--prefix", default="ts", show_default=True,
        help="Subject prefix: sources publish to <prefix>.in.<source id>.",
    )(function)
    return function


def build_layout(nats_layer: Any, **settings: Any) -> Any:
    """A ``Layout`` from CLI settings, with ``ValueError`` turned into a usage error."""
    try:
        return nats_layer.Layout(**settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
def nats() -> None:
    """Scale-out on NATS JetStream: streams, partitions and pinned workers."""


@nats.command("init")
@click.option("--nats", "url", required=True, metavar="URL", help=NATS_HELP)
@click.option("--partitions", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Partitions cameras are hashed into (fixed once created).")
@click.option("--pin-timeout-seconds", type=click.FloatRange(min=0.05), default=1.0,
              show_default=True,
              help="A partition moves after its worker has not pulled for this long.")
@click.option("--max-ack-pending", type=click.IntRange(min=1), default=256, show_default=True,
              help="Frames in flight per partition (delivered, not yet acknowledged).")
@click.option("--max-age-seconds", type=click.FloatRange(min=1), default=60.0,
              show_default=True, help="Frames older than this are discarded (counted).")
@click.option("--max-bytes", type=click.IntRange(min=1 << 20), default=1 << 30,
              show_default=True, help="Input stream size limit; the oldest frames go first.")
@click.option("--replicas", type=click.Choice(["1", "3", "5"]), default="1", show_default=True,
              help="Copies of each stream (3 on a 3-node cluster).")
@click.option("--memory", is_flag=True, help="Keep streams in memory instead of files.")
@layout_options
def nats_init(
    url: str, partitions: int, pin_timeout_seconds: float, max_ack_pending: int,
    max_age_seconds: float, max_bytes: int, replicas: str, memory: bool, prefix: str,
) -> None:
    """Create (or check and update) the streams, per-partition consumers and buckets.

    Idempotent: run it again with the same options and nothing changes. Another
    --partitions than the existing stream's is refused (it would re-map cameras)."""
    nats_layer = _nats()
    layout = build_layout(
        nats_layer, prefix=prefix, partitions=partitions,
        pin_timeout_seconds=pin_timeout_seconds, max_ack_pending=max_ack_pending,
        max_age_seconds=max_age_seconds, max_bytes=max_bytes, replicas=int(replicas),
        storage="memory" if memory else "file",
    )

    async def run() -> Any:
        connection = await nats_layer.connect(url, name="torchstream-init")
        try:
            return await nats_layer.init_layout(connection, layout)
        finally:
            await close_quietly(connection)

    try:
        report = asyncio.run(run())
    except nats_layer.LayoutError as exc:
        raise click.ClickException(str(exc)) from None
    except (nats_layer.NatsUnavailableError, nats_layer.JetStreamError) as exc:
        raise click.ClickException(str(exc)) from None
    _console.print(
        f"{layout.input_stream}: {layout.partitions} partitions on {url}: "
        f"{len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged"
    )
    for name in report.created:
        _console.print(f"  created {name}")
    for name in report.updated:
        _console.print(f"  updated {name}")


def open_outlet(url: str, prefix: str) -> Any:
    """The NATS destination of a source adapter (a ``NatsOutlet``), or a CLI error."""
    nats_layer = _nats()
    from torchstream.nats._outlet import NatsOutlet

    layout = build_layout(nats_layer, prefix=prefix)
    try:
        return NatsOutlet(url, layout)
    except nats_layer.NatsUnavailableError as exc:
        raise click.ClickException(str(exc)) from None


def parse_start(text: str) -> str | int:
    """``--start``: ``live``, ``new``, ``first`` or a stream sequence number."""
    if text in ("live", "new", "first"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise click.BadParameter(
        f"live, new, first or a stream sequence number (>= 1), got {text!r}",
        param_hint="--start",
    )


@dataclass(frozen=True)
class NatsReceiveReport:
    results: int
    sources_ended: int
    errors: int
    """Writers that failed on a result or when closing."""
    fenced: int
    duplicates: int
    rejected: int
    """Malformed messages."""


def receive_from_nats(
    url: str,
    prefix: str,
    writers: Sequence[Any],
    *,
    source_prefixes: Sequence[str] = (),
    start: str | int = "live",
    exit_after_sources: int | None = None,
    idle_timeout_seconds: float | None = None,
    stop: threading.Event | None = None,
) -> NatsReceiveReport:
    """Hand the results that NATS workers publish to ``writers`` (each a ``ResultWriter``),
    through a :class:`~torchstream.client.NatsSink` (so each (source, seq) once, never a
    fenced worker's), until ``stop``, ``exit_after_sources`` ends of stream, or
    ``idle_timeout_seconds`` without a result. ``source_prefixes``: only sources whose id
    starts with one of them. A writer that fails is logged and counted; closes the writers
    at the end. Raises a ``click.ClickException`` when the server cannot be reached."""
    nats_layer = _nats()
    from torchstream.client import NatsSink
    from torchstream.transport._protocol import ResultMessage

    stop = stop or threading.Event()
    wanted = tuple(source_prefixes)
    results = ended = errors = 0

    def hand_over(result: Any) -> None:
        nonlocal errors
        for writer in writers:
            try:
                if result.end_of_stream:
                    writer.end(result.source_id)
                else:
                    writer.write(ResultMessage(
                        frame=result.frame, content=result.content_kind,
                        payload=result.content_description, traceparent=result.traceparent,
                    ), result.content)
            except Exception as exc:
                errors += 1
                log.warning("sink: %r failed on %r: %s", writer, result, exc)

    layout = build_layout(nats_layer, prefix=prefix)
    try:
        sink = NatsSink(url, layout=layout, start=start)  # type: ignore[arg-type]
    except (nats_layer.NatsUnavailableError, nats_layer.LayoutError) as exc:
        raise click.ClickException(str(exc)) from None
    last = time.monotonic()
    try:
        with sink:
            while not stop.is_set():
                if exit_after_sources is not None and ended >= exit_after_sources:
                    break
                try:
                    result = sink.recv(0.2)  # short: SIGTERM sets ``stop``
                except TimeoutError:
                    if idle_timeout_seconds is not None and (
                        time.monotonic() - last > idle_timeout_seconds
                    ):
                        break
                    continue
                last = time.monotonic()
                if wanted and not result.source_id.startswith(wanted):
                    continue
                if result.end_of_stream:
                    ended += 1
                else:
                    results += 1
                hand_over(result)
            stats = sink.statistics()
    finally:
        for writer in writers:
            try:
                writer.close()
            except Exception as exc:
                errors += 1
                log.warning("sink: %r failed to close: %s", writer, exc)
    return NatsReceiveReport(results, ended, errors, stats.fenced, stats.duplicates,
                             sum(stats.rejected.values()))


def print_report(done: NatsReceiveReport) -> None:
    """Print what a sink adapter did; exit 1 if a writer failed."""
    _console.print(f"{done.results} results, {done.sources_ended} sources ended, "
                   f"{done.errors} errors, {done.fenced} fenced, {done.duplicates} duplicates"
                   + (f", {done.rejected} malformed" if done.rejected else ""))
    if done.errors:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add ``nats`` to the ``torchstream`` command."""
    group.add_command(nats)
