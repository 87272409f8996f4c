"""The ``torchstream`` command: a thin layer over the public API."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from torchstream._cli_common import (
    ModelSpeed,
    _console,
    _options_help,
    load_pipeline,
    parse_options,
    speed_options,
    start_tracing,
)
from torchstream._gc import freeze_startup_heap
from torchstream._logging import configure_logging
from torchstream._spec import PipelineSpec
from torchstream._types import Sink
from torchstream.pipeline import Pipeline, PipelineStatistics
from torchstream.sinks import JsonLinesSink, VideoSink
from torchstream.sources import DecoderChoice, open_source


@click.group()
@click.version_option(package_name="torchstream")
def main() -> None:
    """torchstream: serve PyTorch models on live video streams and images."""


def _unique_ids(inputs: tuple[str, ...], decoder: DecoderChoice) -> list[Any]:
    sources, seen = [], Counter[str]()
    for uri in inputs:
        source = open_source(uri, decoder=decoder)
        seen[source.source_id] += 1
        if seen[source.source_id] > 1:
            source = open_source(
                uri, source_id=f"{source.source_id}-{seen[source.source_id]}", decoder=decoder
            )
        sources.append(source)
    return sources


def _table(stats: PipelineStatistics, elapsed: float, final: bool = False) -> Table:
    table = Table(title="torchstream" + (" — done" if final else ""), title_justify="left")
    for column in ("source", "frames", "fps", "dropped", "status"):
        table.add_column(column, justify="left" if column in ("source", "status") else "right")
    for sid, s in stats.sources.items():
        status = "error" if s.errors else ("running" if s.running else "done")
        table.add_row(sid, str(s.frames_out), f"{s.frames_per_second:.1f}",
                      str(s.dropped_total), status)
    fps = stats.frames_out / elapsed if elapsed > 0 else 0.0
    table.caption = (
        f"{stats.frames_out} frames in {elapsed:.1f} s ({fps:.1f} frames/s), "
        f"dropped {stats.dropped_total} {dict(stats.dropped) or ''}"
    )
    return table


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--input", "-i", "inputs", multiple=True, metavar="URI",
              help="Video file, image file/dir/glob or stream URL; repeat for more sources.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Annotated H.264 video (one file per source: NAME-<source>.mp4 beside it).")
@click.option("--meta", "-m", type=click.Path(dir_okay=False), default=None,
              help="JSON lines metadata, one line per frame ('-' for stdout).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--decoder",
    type=click.Choice(["auto", "nvdec", "pyav"]),
    default="auto",
    show_default=True,
    help="Video decoder: NVDEC on the GPU when the device is CUDA (auto), or force one.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Frames per batch, across all sources.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Longest a frame waits for its batch to fill.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines on stderr: text, or JSON objects for collectors.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="error", show_default=True, help="Lowest level logged.")
@click.option("--trace-ratio", type=click.FloatRange(0, 1), default=None,
              help="Trace this share of frames with OpenTelemetry (default: "
                   "$OTEL_TRACES_SAMPLER_ARG if set, else off). Needs torchstream[telemetry].")
@click.option("--trace-exporter", type=click.Choice(["otlp-http", "otlp-grpc", "console"]),
              default="otlp-http", show_default=True,
              help="Where spans go; OTLP endpoint and headers from $OTEL_EXPORTER_OTLP_*.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus metrics on this port (needs torchstream[telemetry]).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint binds to (0.0.0.0 for a remote Prometheus).")
@click.option("--metrics-source-labels/--no-metrics-source-labels", default=True,
              show_default=True, help="Per-source metric labels (off for thousands of sources).")
@click.option("--control-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve the sources API (GET/PUT/DELETE /v1/sources/{id}) on this port and "
                   "run until SIGINT/SIGTERM, even with no input (needs torchstream[http]).")
@click.option("--control-address", default="127.0.0.1", show_default=True,
              help="Address the control API binds to.")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Control API: require Authorization: Bearer <key> (one key per line).")
@click.option(
    "--help", "show_help", is_flag=True, help="Show this message and the pipeline's options."
)
@speed_options
@click.pass_context
def run(
    ctx: click.Context,
    pipeline_name: str,
    inputs: tuple[str, ...],
    output: str | None,
    meta: str | None,
    device: str,
    decoder: DecoderChoice,
    batch_size: int,
    max_wait_ms: float,
    speed: ModelSpeed,
    quiet: bool,
    log_format: str,
    log_level: str,
    trace_ratio: float | None,
    trace_exporter: str,
    metrics_port: int | None,
    metrics_address: str,
    metrics_source_labels: bool,
    control_port: int | None,
    control_address: str,
    api_key_file: str | None,
    show_help: bool,
) -> None:
    """Run PIPELINE (a bundled sample such as `faces`, or a .py file) over the inputs.

    Pipeline-specific options (listed by `torchstream run PIPELINE --help`) go after the
    pipeline name. Exit code 1 if any input failed; the others are still processed. With
    --control-port, sources can be added and removed over HTTP while it runs, and it runs
    until interrupted.
    """
    module = load_pipeline(pipeline_name)
    if show_help:
        click.echo(ctx.get_help())
        click.echo(f"\nOptions of pipeline {pipeline_name!r}:\n{_options_help(module)}")
        return
    options = parse_options(module, ctx.args)
    if not inputs and control_port is None:
        raise click.UsageError("give at least one --input (or --control-port)")
    config = speed.run_config(device=device, batch_size=batch_size, max_wait_ms=max_wait_ms)
    spec: PipelineSpec = module.build(config, options)
    for target in (output, meta):
        if target and target != "-":
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise click.UsageError(f"cannot create the folder of {target}: {exc}") from exc
    sinks: list[Sink] = []
    if meta:
        sinks.append(JsonLinesSink(meta))
    video = VideoSink(output, style=spec.annotation) if output else None
    if video is not None:
        sinks.append(video)
    sources = _unique_ids(inputs, decoder)

    configure_logging(level=log_level, json_lines=log_format == "json")
    tracer, provider = start_tracing(trace_ratio, trace_exporter)
    started = time.monotonic()
    interrupted = False
    live = Live(console=_console, refresh_per_second=4, transient=True) if (
        not quiet and _console.is_terminal
    ) else None
    with Pipeline(spec.stages, sinks, device=config.device, tracer=tracer) as pipeline:
        freeze_startup_heap()
        metrics = None
        if metrics_port is not None:
            from torchstream.telemetry import serve_metrics

            try:
                metrics = serve_metrics(
                    pipeline,
                    port=metrics_port,
                    address=metrics_address,
                    per_source_labels=metrics_source_labels,
                )
            except OSError as exc:
                raise click.UsageError(
                    f"cannot serve metrics on {metrics_address}:{metrics_port}: {exc}"
                ) from exc
            _console.print(f"metrics: http://{metrics_address}:{metrics.port}/metrics")
        control = None
        if control_port is not None:
            from torchstream._cli_serve import ControlServer

            control = ControlServer(pipeline, host=control_address, port=control_port,
                                    api_key_file=api_key_file)
            _console.print(f"sources API: http://{control_address}:{control.port}/v1/sources")
        for source in sources:
            pipeline.add_source(source)
        # Without a control API the run ends with its inputs; with one, at SIGINT/SIGTERM.
        stop = threading.Event()
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.set())

        def done(timeout: float | None) -> bool:
            if control is None:
                return pipeline.wait(timeout_seconds=timeout) or stop.is_set()
            return stop.wait(timeout)

        try:
            if live is None:
                while not done(1.0):
                    pass
            else:
                with live:
                    while not done(0.25):
                        live.update(_table(pipeline.statistics(), time.monotonic() - started))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            if control is not None:
                control.close()
            if metrics is not None:
                metrics.close()
    if provider is not None:
        provider.shutdown()  # flush the last spans
    elapsed = time.monotonic() - started
    stats = pipeline.statistics()
    if not quiet:
        _console.print(_table(stats, elapsed, final=True))
    failed = False
    for sid, s in stats.sources.items():
        for error in s.errors:
            failed = True
            _console.print(f"[red]error[/red] {error}" if error.startswith(sid) else
                           f"[red]error[/red] {sid}: {error}")
    for sink in pipeline.statistics().sinks:
        if sink.errors_total:
            failed = True
            _console.print(f"[red]error[/red] sink {sink.name}: {sink.errors_total} errors")
    if meta and meta != "-":
        _console.print(f"metadata: {Path(meta).resolve()}")
    if video is not None:
        for path in video.written_paths:
            _console.print(f"video: {Path(path).resolve()}")
    if interrupted:
        sys.exit(130)
    if failed:
        sys.exit(1)


# The multi-process commands (module, source and sink) and the HTTP front end (serve).
from torchstream._cli_nats import register as register_nats  # noqa: E402
from torchstream._cli_serve import register as register_serve  # noqa: E402
from torchstream._cli_sources import register as register_sources  # noqa: E402
from torchstream._cli_transport import register  # noqa: E402
from torchstream._cli_worker import register as register_worker  # noqa: E402

register(main)
register_sources(main)
register_serve(main)
register_nats(main)
register_worker(main)

if __name__ == "__main__":
    main()
