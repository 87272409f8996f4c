"""``torchstream module`` / ``sink``: the pipeline and its sink adapters as separate processes
over ZeroMQ (needs ``torchstream[transport]``), and what every adapter shares: endpoints,
signals, telemetry options (the source adapters: :mod:`torchstream._cli_sources`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from torchstream._cli_common import (
    ModelSpeed,
    _console,
    _options_help,
    load_pipeline,
    parse_options,
    speed_options,
    start_tracing,
    tracing_provider,
)
from torchstream._logging import configure_logging
from torchstream._spec import PipelineSpec
from torchstream._types import Sink
from torchstream.sinks import JsonLinesSink
from torchstream.sources import DecoderChoice

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
@speed_options
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
    speed: ModelSpeed,
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
    config = speed.run_config(device=device, batch_size=batch_size, max_wait_ms=max_wait_ms)
    spec: PipelineSpec = pipeline_module.build(config, options)
    configure_logging(level=log_level, json_lines=log_format == "json")
    tracer, provider = start_tracing(trace_ratio, trace_exporter, service="torchstream-module")
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


def _telemetry_options(function: Any) -> Any:
    """--trace-ratio, --trace-exporter, --metrics-port and --metrics-address of an adapter."""
    for decorator in reversed([
        click.option("--trace-ratio", type=click.FloatRange(0, 1), default=None,
                     help="Trace this share of frames over OTLP (default "
                          "$OTEL_TRACES_SAMPLER_ARG, else off); see the README's Metrics."),
        click.option("--trace-exporter", type=click.Choice(["otlp-http", "otlp-grpc", "console"]),
                     default="otlp-http", show_default=True),
        click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
                     help="Serve Prometheus metrics and /healthz on this port."),
        click.option("--metrics-address", default="127.0.0.1", show_default=True),
    ]):
        function = decorator(function)
    return function


@dataclass(frozen=True)
class _Telemetry:
    """An adapter's --trace-ratio, --trace-exporter, --metrics-port, --metrics-address."""

    trace_ratio: float | None
    trace_exporter: str
    metrics_port: int | None
    metrics_address: str


def _ready(monitor: Any) -> Any:
    """/healthz and /readyz of an adapter: alive while it runs; a sink adapter is ready once
    its socket is open, a source adapter at once."""
    from torchstream.pipeline import PipelineHealth

    def health() -> PipelineHealth:
        ready = getattr(monitor, "receiving", True)
        return PipelineHealth(alive=True, ready=ready, reason="" if ready else "not bound yet")

    return health


@contextlib.contextmanager
def _adapter_telemetry(
    monitor: Any, collector: str, span_name: str, service: str, options: _Telemetry
) -> Iterator[Any]:
    """Serves ``monitor``'s metrics (``collector``, a class of torchstream.telemetry) while
    the adapter runs and yields its tracer (None when tracing is off); flushes the last
    spans at the end."""
    server = None
    metrics_port, metrics_address = options.metrics_port, options.metrics_address
    if metrics_port is not None:
        try:
            import torchstream.telemetry as telemetry
        except ImportError as exc:  # MissingDependencyError names the extra
            raise click.UsageError(str(exc)) from exc
        try:
            server = telemetry.serve_collectors(
                [getattr(telemetry, collector)(monitor)], port=metrics_port,
                address=metrics_address, health=_ready(monitor),
            )
        except OSError as exc:
            raise click.UsageError(f"--metrics-port {metrics_port}: {exc}") from exc
        _console.print(f"metrics: http://{metrics_address}:{server.port}/metrics")
    provider = tracing_provider(options.trace_ratio, options.trace_exporter, service=service)
    tracer = None
    if provider is not None:
        from torchstream.telemetry._tracing import OtelAdapterTracer

        tracer = OtelAdapterTracer(span_name, provider.get_tracer("torchstream"))
    try:
        yield tracer
    finally:
        if provider is not None:
            provider.shutdown()  # flush the last spans
        if server is not None:
            server.close()


def _sink_options(function: Any) -> Any:
    function = click.option(
        "--in", "inbound", default=None, metavar="ENDPOINT",
        help=f"The module's output: {_ENDPOINT_HELP} (sub+connect, pull+connect); or --nats.",
    )(function)
    function = click.option(
        "--nats", "nats_url", default=None, metavar="URL",
        help="Read the results of NATS workers (<prefix>.out.*) instead of --in, each "
             "(source, seq) once, never a fenced worker's.",
    )(function)
    function = click.option(
        "--prefix", default="ts", show_default=True, help="With --nats: the subject prefix.",
    )(function)
    function = click.option(
        "--start", default="live", show_default=True, metavar="live|new|first|SEQ",
        help="With --nats: results published from now on (live), or read from the results "
             "stream: stored from now on (new), all it holds (first), or from stream "
             "sequence SEQ.",
    )(function)
    function = click.option(
        "--source", "source_ids", multiple=True, metavar="PREFIX",
        help="Only these source ids (prefixes; sub endpoints and --nats). Repeatable.",
    )(function)
    function = click.option(
        "--exit-after", type=click.IntRange(min=1), default=None, metavar="N",
        help="Exit once N sources have ended.",
    )(function)
    function = click.option(
        "--idle-timeout", type=click.FloatRange(min=0.01), default=None,
        help="Exit after this many seconds without a message.",
    )(function)
    return _telemetry_options(function)


def _receive(
    kind: str, writers: list[Any],
    receiving: tuple[str | None, tuple[str, ...], int | None, float | None],
    telemetry: _Telemetry, nats: tuple[str | None, str, str] = (None, "ts", "live"),
) -> None:
    """Receive into ``writers``; ``receiving``: --in, --source, --exit-after, --idle-timeout;
    ``nats``: --nats, --prefix, --start."""
    inbound, source_ids, exit_after, idle_timeout = receiving
    nats_url, prefix, start_text = nats
    if (inbound is None) == (nats_url is None):
        raise click.UsageError("give one of --in ENDPOINT (ZeroMQ) and --nats URL")
    if nats_url is None and start_text != "live":
        raise click.UsageError("--start reads the NATS results stream: give --nats URL")
    if nats_url is not None:
        from torchstream._cli_nats import parse_start, print_report, receive_from_nats

        start = parse_start(start_text)
        stop_nats = threading.Event()
        _stop_on_signals(stop_nats.set)
        print_report(receive_from_nats(
            nats_url, prefix, writers, source_prefixes=source_ids, start=start,
            exit_after_sources=exit_after, idle_timeout_seconds=idle_timeout, stop=stop_nats,
        ))
        return
    transport = _transport()
    assert inbound is not None
    endpoint = _endpoint(transport, inbound, "--in")
    from torchstream.transport._adapter_stats import ReceiveMonitor
    from torchstream.transport._adapters import receive_results

    stop = threading.Event()
    _stop_on_signals(stop.set)
    monitor = ReceiveMonitor()
    with _adapter_telemetry(
        monitor, "SinkAdapterCollector", f"sink {kind}", "torchstream-sink", telemetry
    ) as tracer:
        report = receive_results(
            endpoint, writers, source_ids=list(source_ids) or None,
            exit_after_sources=exit_after, idle_timeout_seconds=idle_timeout, stop=stop,
            monitor=monitor, tracer=tracer,
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
def sink_json(
    path: str, inbound: str | None, source_ids: tuple[str, ...], exit_after: int | None,
    idle_timeout: float | None, trace_ratio: float | None, trace_exporter: str,
    metrics_port: int | None, metrics_address: str, nats_url: str | None, prefix: str,
    start: str,
) -> None:
    """Write every result's metadata as JSON lines to PATH ('-' for stdout)."""
    from torchstream.transport._adapters import JsonResultWriter

    _receive("json", [JsonResultWriter(path)], (inbound, source_ids, exit_after, idle_timeout),
             _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
             (nats_url, prefix, start))


@sink.command("images")
@click.argument("directory", type=click.Path(file_okay=False))
@_sink_options
def sink_images(
    directory: str, inbound: str | None, source_ids: tuple[str, ...], exit_after: int | None,
    idle_timeout: float | None, trace_ratio: float | None, trace_exporter: str,
    metrics_port: int | None, metrics_address: str, nats_url: str | None, prefix: str,
    start: str,
) -> None:
    """Write results' images (module --content original or image) under DIRECTORY/<source>/."""
    from torchstream.transport._adapters import ImageResultWriter

    writer = ImageResultWriter(directory)
    _receive("images", [writer], (inbound, source_ids, exit_after, idle_timeout),
             _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
             (nats_url, prefix, start))


@sink.command("video")
@click.argument("pattern")
@_sink_options
def sink_video(
    pattern: str, inbound: str | None, source_ids: tuple[str, ...], exit_after: int | None,
    idle_timeout: float | None, trace_ratio: float | None, trace_exporter: str,
    metrics_port: int | None, metrics_address: str, nats_url: str | None, prefix: str,
    start: str,
) -> None:
    """Write each source's results as a video into PATTERN, e.g. 'out/{source_id}.mp4':
    original packets (module --content original) re-muxed as they are, annotated pictures
    (--content image) encoded as H.264."""
    from torchstream.transport._adapters import VideoResultWriter

    try:
        writer = VideoResultWriter(pattern)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATTERN") from None
    _receive("video", [writer], (inbound, source_ids, exit_after, idle_timeout),
             _Telemetry(trace_ratio, trace_exporter, metrics_port, metrics_address),
             (nats_url, prefix, start))


def register(group: click.Group) -> None:
    """Add ``module`` and ``sink`` to the ``torchstream`` command (``source``: see
    :mod:`torchstream._cli_sources`)."""
    group.add_command(module)
    group.add_command(sink)
