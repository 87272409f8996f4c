"""``torchstream nats init``: create or check the JetStream layout (needs
``torchstream[nats]``); and the ``--nats URL`` destination of the source adapters."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from torchstream._cli_common import _console

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


def register(group: click.Group) -> None:
    """Add ``nats`` to the ``torchstream`` command."""
    group.add_command(nats)
