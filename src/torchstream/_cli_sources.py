"""``torchstream source video|url|camera|images``: the source adapters, which read inputs and
send them to a module over ZeroMQ, demuxed, never decoded (needs ``torchstream[transport]``)."""

from __future__ import annotations

import contextlib
import functools
import glob
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import click

from torchstream._cli_common import _console
from torchstream._cli_nats import NATS_HELP, open_outlet
from torchstream._cli_transport import (
    _ENDPOINT_HELP,
    _adapter_telemetry,
    _endpoint,
    _stop_on_signals,
    _Telemetry,
    _telemetry_options,
    _transport,
)
from torchstream.sources import IMAGE_SUFFIXES
from torchstream.sources._video import default_source_id


@click.group()
def source() -> None:
    """Source adapters: read inputs and send them to a module (demuxed, never decoded).
    Live inputs and cameras reconnect after outages, in the same session."""


def _live_options(function: Any) -> Any:
    """The options of live inputs (cameras, RTSP/RTMP/UDP/SRT/HLS streams)."""
    function = click.option(
        "--max-reconnects", type=click.IntRange(min=0), default=None,
        help="Live inputs: give up after this many consecutive failed attempts to reconnect "
             "(default: never).",
    )(function)
    function = click.option(
        "--read-timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
        help="Live inputs: seconds without a packet after which the input is reopened.",
    )(function)
    function = click.option(
        "--open-timeout", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
        help="Live inputs: seconds a connection may take to open.",
    )(function)
    return function


def _send_all(jobs: list[tuple[str, Any]], *, reliable: bool) -> list[str]:
    """Run each ``(source id, send function)`` on its own thread; the failures."""
    failures: list[str] = []

    def send(sid: str, job: Any) -> None:
        try:
            report = job()
            _console.print(
                f"{sid}: {report.frames} packets sent"
                + (f", {report.reconnects} reconnects" if report.reconnects else "")
                + ("" if report.acknowledged or not reliable or not report.frames
                   else " (end of stream not acknowledged)")
            )
        except Exception as exc:
            failures.append(f"{sid}: {exc}")

    threads = [threading.Thread(target=send, args=job, name=f"ts/send/{job[0]}") for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    return failures


def _nats_options(function: Any) -> Any:
    """``--nats URL`` (instead of ``--out``) and the layout's ``--prefix``."""
    function = click.option(
        "--prefix", default="ts", show_default=True,
        help="With --nats: the subject prefix (publishes to <prefix>.in.<source id>).",
    )(function)
    function = click.option(
        "--nats", "nats_url", default=None, metavar="URL",
        help="Publish to NATS JetStream instead of --out (run `torchstream nats init` "
             "first). " + NATS_HELP,
    )(function)
    return function


@contextlib.contextmanager
def _destination(
    outbound: str | None, nats_url: str | None, prefix: str
) -> Iterator[tuple[Any, bool]]:
    """Where to send: a ZeroMQ endpoint (``--out``) or a NATS outlet (``--nats``, closed at
    the end, after its acks), and whether ends of stream are acknowledged."""
    if outbound is not None and nats_url is None:
        endpoint = _endpoint(_transport(), outbound, "--out")
        yield endpoint, endpoint.reliable
    elif nats_url is not None and outbound is None:
        with open_outlet(nats_url, prefix) as outlet:
            yield outlet, True
    else:
        raise click.UsageError("give one of --out ENDPOINT (ZeroMQ) and --nats URL")


def _nats_source_id(text: str, nats_url: str | None) -> str:
    """Over NATS a source id is one subject token: other characters become ``_``."""
    if nats_url is None:
        return text
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:256] or "source"


def _exit_on(failures: list[str]) -> None:
    for failure in failures:
        _console.print(f"[red]error[/red] {failure}")
    if failures:
        sys.exit(1)


@source.command("video")
@click.argument("inputs", nargs=-1, required=True, metavar="URI...")
@click.option("--out", "outbound", default=None, metavar="ENDPOINT",
              help=f"The module's input: {_ENDPOINT_HELP} (dealer+connect, req+connect, "
                   "push+connect).")
@click.option("--source-id", default=None, help="Source id (one input only; default: its name).")
@click.option("--sync", is_flag=True,
              help="Files: send at the stream's own frame rate, like a camera.")
@click.option("--loop", is_flag=True, help="Files: start over at the end, until interrupted.")
@click.option("--streams", type=click.IntRange(min=1), default=1, show_default=True,
              help="Send each input as this many sources (<id>-0, <id>-1, …), for load tests.")
@click.option("--transport", type=click.Choice(["tcp", "udp"]), default="tcp",
              show_default=True, help="RTSP inputs: how packets travel.")
@_live_options
@_nats_options
@_telemetry_options
def source_video(
    inputs: tuple[str, ...],
    outbound: str | None,
    source_id: str | None,
    sync: bool,
    loop: bool,
    streams: int,
    transport: Literal["tcp", "udp"],
    open_timeout: float,
    read_timeout: float,
    max_reconnects: int | None,
    nats_url: str | None,
    prefix: str,
    trace_ratio: float | None,
    trace_exporter: str,
    metrics_port: int | None,
    metrics_address: str,
) -> None:
    """Send video files or stream URLs to a module (--out) or to NATS JetStream (--nats),
    one source each.

    Live inputs (rtsp://, rtmp://, udp://, srt://, HLS .m3u8) reconnect after outages with
    backoff, in the same session (the first frame after an outage carries
    live.gap_seconds, timestamps go on increasing); they end on SIGINT/SIGTERM (or after
    --max-reconnects failed attempts), then send their end of stream."""
    if source_id and len(inputs) > 1:
        raise click.UsageError("--source-id names one input; give one input or none")
    from torchstream.sources import is_live
    from torchstream.transport._adapter_stats import SendMonitor
    from torchstream.transport._adapters import send_video

    stop = threading.Event()
    _stop_on_signals(stop.set)
    monitor = SendMonitor()
    with _destination(outbound, nats_url, prefix) as (endpoint, reliable), _adapter_telemetry(
        monitor, "SourceAdapterCollector", "source video", "torchstream-source",
        _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
    ) as tracer:
        jobs: list[tuple[str, Any]] = []
        for uri in inputs:
            base = _nats_source_id(source_id or default_source_id(uri), nats_url)
            ids = [base] if streams == 1 else [f"{base}-{i}" for i in range(streams)]
            live = is_live(uri)
            for sid in ids:
                jobs.append((sid, functools.partial(
                    send_video, uri, endpoint, source_id=sid, sync=sync and not live,
                    loop=loop and not live, stop=stop, transport=transport,
                    open_timeout_seconds=open_timeout, read_timeout_seconds=read_timeout,
                    max_reconnects=max_reconnects, monitor=monitor, tracer=tracer,
                    raw_pictures="jpeg" if nats_url else "raw",
                )))
        failures = _send_all(jobs, reliable=reliable)
    _exit_on(failures)


@source.command("camera")
@click.argument("device", metavar="DEVICE")
@click.option("--out", "outbound", default=None, metavar="ENDPOINT",
              help=f"The module's input: {_ENDPOINT_HELP} (or --nats).")
@click.option("--source-id", default=None, help="Source id (default: dev_video0 for "
              "/dev/video0).")
@click.option("--size", default=None, metavar="WxH", help="Picture size to ask for.")
@click.option("--fps", type=click.FloatRange(min=0.01), default=None,
              help="Frame rate to ask for.")
@click.option("--input-format", type=click.Choice(["mjpeg", "yuyv422", "h264"]), default=None,
              help="What the camera delivers: JPEG pictures (sent as images), raw YUYV "
                   "(sent as raw nv12 pictures; as JPEG images with --nats) or H.264 (sent "
                   "as packets).")
@_live_options
@_nats_options
@_telemetry_options
def source_camera(
    device: str,
    outbound: str | None,
    source_id: str | None,
    size: str | None,
    fps: float | None,
    input_format: Any,
    open_timeout: float,
    read_timeout: float,
    max_reconnects: int | None,
    nats_url: str | None,
    prefix: str,
    trace_ratio: float | None,
    trace_exporter: str,
    metrics_port: int | None,
    metrics_address: str,
) -> None:
    """Send a V4L2 camera (/dev/video0) to a module (--out) or to NATS JetStream (--nats):
    MJPEG pictures as JPEG images, raw pictures as raw payloads (with --nats encoded as
    JPEG images here: NATS workers take no raw pixels), H.264 as packets. An unplugged or
    failing camera is reopened with backoff in the same session; SIGINT/SIGTERM (or
    --max-reconnects failed attempts) end the stream."""
    if (outbound is None) == (nats_url is None):
        raise click.UsageError("give one of --out ENDPOINT (ZeroMQ) and --nats URL")
    if outbound is not None:
        _endpoint(_transport(), outbound, "--out")  # a usage error before opening anything
    if not device.startswith("/dev/video"):
        raise click.BadParameter(f"a V4L2 device (/dev/video*), got {device!r}",
                                 param_hint="DEVICE")
    dimensions = None
    if size is not None:
        width, _, height = size.lower().partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise click.BadParameter(f"WIDTHxHEIGHT, got {size!r}", param_hint="--size")
        dimensions = (int(width), int(height))
    from torchstream.sources._live import LiveDemuxer
    from torchstream.transport._adapter_stats import SendMonitor
    from torchstream.transport._live_adapter import camera_options, send_live

    stop = threading.Event()
    _stop_on_signals(stop.set)
    demuxer = LiveDemuxer(
        device, source_id=source_id, open_timeout_seconds=open_timeout,
        read_timeout_seconds=read_timeout, max_reconnects=max_reconnects,
        max_lag_seconds=1.0, stop_event=stop,
        options=camera_options(size=dimensions, fps=fps, input_format=input_format),
    )
    monitor = SendMonitor()
    with _destination(outbound, nats_url, prefix) as (endpoint, reliable), _adapter_telemetry(
        monitor, "SourceAdapterCollector", "source camera", "torchstream-source",
        _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
    ) as tracer:
        sid = _nats_source_id(demuxer.source_id, nats_url)
        send = functools.partial(send_live, demuxer, endpoint, source_id=sid, stop=stop,
                                 monitor=monitor, tracer=tracer,
                                 raw_pictures="jpeg" if nats_url else "raw")
        failures = _send_all([(sid, send)], reliable=reliable)
    _exit_on(failures)


@source.command("images")
@click.argument("inputs", nargs=-1, required=True, metavar="PATH...")
@click.option("--out", "outbound", default=None, metavar="ENDPOINT",
              help=f"The module's input: {_ENDPOINT_HELP}.")
@click.option("--source-id", default=None, help="Source id (default: the folder's name).")
@_nats_options
@_telemetry_options
def source_images(
    inputs: tuple[str, ...], outbound: str | None, source_id: str | None,
    nats_url: str | None, prefix: str, trace_ratio: float | None,
    trace_exporter: str, metrics_port: int | None, metrics_address: str,
) -> None:
    """Send JPEG/PNG files (folders, globs or files, in sorted order) as one source, to a
    module (--out) or to NATS JetStream (--nats; images over 1 MiB via its object store)."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif glob.has_magic(text):
            paths.extend(sorted(Path(p) for p in glob.glob(text)))
        else:
            paths.append(path)
    if not paths:
        raise click.UsageError("no image files in the inputs")
    sid = _nats_source_id(source_id or Path(inputs[0]).name or "images", nats_url)
    from torchstream._errors import SourceError
    from torchstream.transport._adapter_stats import SendMonitor
    from torchstream.transport._adapters import send_images

    stop = threading.Event()
    _stop_on_signals(stop.set)
    monitor = SendMonitor()
    error: SourceError | None = None
    with _destination(outbound, nats_url, prefix) as (endpoint, _), _adapter_telemetry(
        monitor, "SourceAdapterCollector", "source images", "torchstream-source",
        _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
    ) as tracer:
        try:
            report = send_images(paths, endpoint, source_id=sid, stop=stop, monitor=monitor,
                                 tracer=tracer)
        except SourceError as exc:
            error = exc
    if error is not None:
        _console.print(f"[red]error[/red] {error}")
        sys.exit(1)
    _console.print(f"{sid}: {report.frames} images sent")



source.add_command(source_video, name="url")  # `source url rtsp://…`: the same adapter


def register(group: click.Group) -> None:
    """Add ``source`` to the ``torchstream`` command."""
    group.add_command(source)
