"""``torchstream module`` / ``source`` / ``sink``: the pipeline and its adapters as separate
processes over ZeroMQ (needs ``torchstream[transport]``)."""

from __future__ import annotations

import functools
import glob
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import click

from torchstream._cli_common import (
    _console,
    _device,
    _options_help,
    load_pipeline,
    parse_options,
    start_tracing,
)
from torchstream._logging import configure_logging
from torchstream._spec import PipelineSpec, RunConfig
from torchstream._types import Sink
from torchstream.pipeline import BatchPolicy
from torchstream.sinks import JsonLinesSink
from torchstream.sources import IMAGE_SUFFIXES, DecoderChoice
from torchstream.sources._video import default_source_id

_ENDPOINT_HELP = "<type>+<bind|connect>:<tcp://HOST:PORT | ipc://PATH>"


def _transport() -> Any:
    try:
        import torchstream.transport as transport
    except ImportError as exc:  # MissingDependencyError is an ImportError
        raise click.UsageError(str(exc)) from exc
    return transport


def _endpoint(transport: Any, text: str, option: str) -> Any:
    try:
        return transport.Endpoint.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _stop_on_signals(stop: Any) -> None:
    """SIGTERM and SIGINT call ``stop()`` (drain, then exit) instead of killing us."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop())


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--in", "inbound", default=None, metavar="ENDPOINT",
              help=f"Where frames arrive (required): {_ENDPOINT_HELP} (router+bind, "
                   "rep+bind, pull+bind, sub+connect).")
@click.option("--out", "outbound", default=None, metavar="ENDPOINT",
              help="Where results go (pub+bind, push+bind, dealer+connect).")
@click.option("--content", type=click.Choice(["none", "original", "image"]), default="none",
              show_default=True,
              help="Besides metadata, results carry nothing, the input bytes, or an annotated "
                   "JPEG.")
@click.option("--meta", "-m", type=click.Path(dir_okay=False), default=None,
              help="Also write JSON lines metadata here.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--decoder", type=click.Choice(["auto", "nvdec", "pyav"]), default="auto",
              show_default=True, help="Video decoder for received packets.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--half", is_flag=True, help="Half precision on CUDA.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="Seconds without a frame after which a source ends.")
@click.option("--shutdown-secret-file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Accept Shutdown messages carrying the secret in this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@click.option("--trace-ratio", type=click.FloatRange(0, 1), default=None,
              help="Trace this share of frames (default $OTEL_TRACES_SAMPLER_ARG, else off); "
                   "frames sent with a traceparent continue their sender's trace.")
@click.option("--trace-exporter", type=click.Choice(["otlp-http", "otlp-grpc", "console"]),
              default="otlp-http", show_default=True)
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus metrics and health on this port.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True)
@click.option("--help", "show_help", is_flag=True,
              help="Show this message and the pipeline's options.")
@click.pass_context
def module(
    ctx: click.Context,
    pipeline_name: str,
    inbound: str | None,
    outbound: str | None,
    content: str,
    meta: str | None,
    device: str,
    decoder: DecoderChoice,
    batch_size: int,
    max_wait_ms: float,
    half: bool,
    idle_timeout: float,
    shutdown_secret_file: str | None,
    log_format: str,
    log_level: str,
    trace_ratio: float | None,
    trace_exporter: str,
    metrics_port: int | None,
    metrics_address: str,
    show_help: bool,
) -> None:
    """Run PIPELINE on frames received over ZeroMQ and send the results on.

    Many sources share the inbound socket; each appears with its first frame and ends with
    its end of stream (or when idle). SIGTERM stops reading, finishes what was received and
    exits. Pipeline options go after the pipeline name, as for `run`.
    """
    pipeline_module = load_pipeline(pipeline_name)
    if show_help:
        click.echo(ctx.get_help())
        click.echo(f"\nOptions of pipeline {pipeline_name!r}:\n{_options_help(pipeline_module)}")
        return
    if not inbound:
        raise click.UsageError("give --in ENDPOINT: where the module receives frames")
    transport = _transport()
    options = parse_options(pipeline_module, ctx.args)
    inbound_endpoint = _endpoint(transport, inbound, "--in")
    outbound_endpoint = _endpoint(transport, outbound, "--out") if outbound else None
    if outbound_endpoint is None and not meta:
        raise click.UsageError("give --out, --meta or both: results must go somewhere")
    secret = None
    if shutdown_secret_file:
        secret = Path(shutdown_secret_file).read_text().strip()
        if not secret:
            raise click.BadParameter("the file is empty", param_hint="--shutdown-secret-file")
    config = RunConfig(
        device=_device(device),
        batch_policy=BatchPolicy(max_size=batch_size, max_wait_seconds=max_wait_ms / 1000),
        half=half,
    )
    spec: PipelineSpec = pipeline_module.build(config, options)
    configure_logging(level=log_level, json_lines=log_format == "json")
    tracer, provider = start_tracing(trace_ratio, trace_exporter)
    sinks: list[Sink] = [JsonLinesSink(meta)] if meta else []
    try:
        server = transport.Module(
            spec.stages,
            inbound=inbound_endpoint,
            outbound=outbound_endpoint,
            sinks=sinks,
            device=config.device,
            content=content,
            style=spec.annotation,
            decoder=decoder,
            idle_timeout_seconds=idle_timeout,
            shutdown_secret=secret,
            tracer=tracer,
        )
    except OSError as exc:
        raise click.UsageError(str(exc)) from exc
    _stop_on_signals(server.stop)
    metrics: list[Any] = []

    def serve_metrics() -> None:
        from torchstream.telemetry import ModuleCollector
        from torchstream.telemetry import serve_metrics as serve

        if server.ready.wait() and server.pipeline is not None and metrics_port is not None:
            metrics.append(serve(server.pipeline, port=metrics_port, address=metrics_address,
                                 health=server.health, collectors=[ModuleCollector(server)]))
            _console.print(f"metrics: http://{metrics_address}:{metrics[0].port}/metrics")

    if metrics_port is not None:
        threading.Thread(target=serve_metrics, daemon=True, name="ts/metrics").start()
    _console.print(
        f"module {pipeline_name}: frames on {server.inbound}"
        + (f", results on {server.outbound}" if server.outbound else "")
    )
    started = time.monotonic()
    stats = server.run()
    for item in metrics:
        item.close()
    if provider is not None:
        provider.shutdown()  # flush the last spans
    _console.print(
        f"module stopped after {time.monotonic() - started:.1f} s: {stats.frames_out} "
        f"frames out, {stats.dropped_total} dropped, {len(stats.sources)} sources"
    )


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


def _send_all(jobs: list[tuple[str, Any]], *, reliable: bool) -> None:
    """Run each ``(source id, send function)`` on its own thread; exit 1 if any failed."""
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
    for failure in failures:
        _console.print(f"[red]error[/red] {failure}")
    if failures:
        sys.exit(1)


@source.command("video")
@click.argument("inputs", nargs=-1, required=True, metavar="URI...")
@click.option("--out", "outbound", required=True, metavar="ENDPOINT",
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
def source_video(
    inputs: tuple[str, ...],
    outbound: str,
    source_id: str | None,
    sync: bool,
    loop: bool,
    streams: int,
    transport: Literal["tcp", "udp"],
    open_timeout: float,
    read_timeout: float,
    max_reconnects: int | None,
) -> None:
    """Send video files or stream URLs to a module, one source each.

    Live inputs (rtsp://, rtmp://, udp://, srt://, HLS .m3u8) reconnect after outages with
    backoff, in the same session (the first frame after an outage carries
    live.gap_seconds, timestamps go on increasing); they end on SIGINT/SIGTERM (or after
    --max-reconnects failed attempts), then send their end of stream."""
    zmq_transport = _transport()
    endpoint = _endpoint(zmq_transport, outbound, "--out")
    if source_id and len(inputs) > 1:
        raise click.UsageError("--source-id names one input; give one input or none")
    from torchstream.sources import is_live
    from torchstream.transport._adapters import send_video

    stop = threading.Event()
    _stop_on_signals(stop.set)
    jobs: list[tuple[str, Any]] = []
    for uri in inputs:
        base = source_id or default_source_id(uri)
        ids = [base] if streams == 1 else [f"{base}-{i}" for i in range(streams)]
        live = is_live(uri)
        for sid in ids:
            jobs.append((sid, functools.partial(
                send_video, uri, endpoint, source_id=sid, sync=sync and not live,
                loop=loop and not live, stop=stop, transport=transport,
                open_timeout_seconds=open_timeout, read_timeout_seconds=read_timeout,
                max_reconnects=max_reconnects,
            )))
    _send_all(jobs, reliable=endpoint.reliable)


@source.command("camera")
@click.argument("device", metavar="DEVICE")
@click.option("--out", "outbound", required=True, metavar="ENDPOINT",
              help=f"The module's input: {_ENDPOINT_HELP}.")
@click.option("--source-id", default=None, help="Source id (default: dev_video0 for "
              "/dev/video0).")
@click.option("--size", default=None, metavar="WxH", help="Picture size to ask for.")
@click.option("--fps", type=click.FloatRange(min=0.01), default=None,
              help="Frame rate to ask for.")
@click.option("--input-format", type=click.Choice(["mjpeg", "yuyv422", "h264"]), default=None,
              help="What the camera delivers: JPEG pictures (sent as images), raw YUYV "
                   "(sent as raw nv12 pictures) or H.264 (sent as packets).")
@_live_options
def source_camera(
    device: str,
    outbound: str,
    source_id: str | None,
    size: str | None,
    fps: float | None,
    input_format: Any,
    open_timeout: float,
    read_timeout: float,
    max_reconnects: int | None,
) -> None:
    """Send a V4L2 camera (/dev/video0) to a module: MJPEG pictures as JPEG images, raw
    pictures as raw payloads, H.264 as packets. An unplugged or failing camera is reopened
    with backoff in the same session; SIGINT/SIGTERM (or --max-reconnects failed attempts)
    end the stream."""
    zmq_transport = _transport()
    endpoint = _endpoint(zmq_transport, outbound, "--out")
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
    from torchstream.transport._live_adapter import camera_options, send_live

    stop = threading.Event()
    _stop_on_signals(stop.set)
    demuxer = LiveDemuxer(
        device, source_id=source_id, open_timeout_seconds=open_timeout,
        read_timeout_seconds=read_timeout, max_reconnects=max_reconnects,
        max_lag_seconds=1.0, stop_event=stop,
        options=camera_options(size=dimensions, fps=fps, input_format=input_format),
    )
    _send_all([(demuxer.source_id, functools.partial(send_live, demuxer, endpoint, stop=stop))],
              reliable=endpoint.reliable)


@source.command("images")
@click.argument("inputs", nargs=-1, required=True, metavar="PATH...")
@click.option("--out", "outbound", required=True, metavar="ENDPOINT",
              help=f"The module's input: {_ENDPOINT_HELP}.")
@click.option("--source-id", default=None, help="Source id (default: the folder's name).")
def source_images(inputs: tuple[str, ...], outbound: str, source_id: str | None) -> None:
    """Send JPEG/PNG files (folders, globs or files, in sorted order) as one source."""
    transport = _transport()
    endpoint = _endpoint(transport, outbound, "--out")
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
    sid = source_id or Path(inputs[0]).name or "images"
    from torchstream._errors import SourceError
    from torchstream.transport._adapters import send_images

    stop = threading.Event()
    _stop_on_signals(stop.set)
    try:
        report = send_images(paths, endpoint, source_id=sid, stop=stop)
    except SourceError as exc:
        _console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    _console.print(f"{sid}: {report.frames} images sent")


def _sink_options(function: Any) -> Any:
    function = click.option(
        "--in", "inbound", required=True, metavar="ENDPOINT",
        help=f"The module's output: {_ENDPOINT_HELP} (sub+connect, pull+connect).",
    )(function)
    function = click.option(
        "--source", "source_ids", multiple=True, metavar="PREFIX",
        help="Only these source ids (prefixes; sub endpoints). Repeatable.",
    )(function)
    function = click.option(
        "--exit-after", type=click.IntRange(min=1), default=None, metavar="N",
        help="Exit once N sources have ended.",
    )(function)
    function = click.option(
        "--idle-timeout", type=click.FloatRange(min=0.01), default=None,
        help="Exit after this many seconds without a message.",
    )(function)
    return function


def _receive(inbound: str, writers: list[Any], source_ids: tuple[str, ...],
             exit_after: int | None, idle_timeout: float | None) -> None:
    transport = _transport()
    endpoint = _endpoint(transport, inbound, "--in")
    from torchstream.transport._adapters import receive_results

    stop = threading.Event()
    _stop_on_signals(stop.set)
    report = receive_results(
        endpoint, writers, source_ids=list(source_ids) or None,
        exit_after_sources=exit_after, idle_timeout_seconds=idle_timeout, stop=stop,
    )
    _console.print(
        f"{report.results} results, {report.sources_ended} sources ended, {report.errors} errors"
    )
    if report.errors:
        sys.exit(1)


@click.group()
def sink() -> None:
    """Sink adapters: receive a module's results and write them."""


@sink.command("json")
@click.argument("path", type=click.Path(dir_okay=False))
@_sink_options
def sink_json(path: str, inbound: str, source_ids: tuple[str, ...], exit_after: int | None,
              idle_timeout: float | None) -> None:
    """Write every result's metadata as JSON lines to PATH ('-' for stdout)."""
    from torchstream.transport._adapters import JsonResultWriter

    _receive(inbound, [JsonResultWriter(path)], source_ids, exit_after, idle_timeout)


@sink.command("images")
@click.argument("directory", type=click.Path(file_okay=False))
@_sink_options
def sink_images(directory: str, inbound: str, source_ids: tuple[str, ...],
                exit_after: int | None, idle_timeout: float | None) -> None:
    """Write results' images (module --content original or image) under DIRECTORY/<source>/."""
    from torchstream.transport._adapters import ImageResultWriter

    _receive(inbound, [ImageResultWriter(directory)], source_ids, exit_after, idle_timeout)


@sink.command("video")
@click.argument("pattern")
@_sink_options
def sink_video(pattern: str, inbound: str, source_ids: tuple[str, ...],
               exit_after: int | None, idle_timeout: float | None) -> None:
    """Write each source's results as a video into PATTERN, e.g. 'out/{source_id}.mp4':
    original packets (module --content original) re-muxed as they are, annotated pictures
    (--content image) encoded as H.264."""
    from torchstream.transport._adapters import VideoResultWriter

    try:
        writer = VideoResultWriter(pattern)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATTERN") from None
    _receive(inbound, [writer], source_ids, exit_after, idle_timeout)


source.add_command(source_video, name="url")  # `source url rtsp://…`: the same adapter


def register(group: click.Group) -> None:
    """Add ``module``, ``source`` and ``sink`` to the ``torchstream`` command."""
    group.add_command(module)
    group.add_command(source)
    group.add_command(sink)
