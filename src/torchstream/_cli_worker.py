"""``torchstream worker``: a pipeline serving the partitions of a NATS JetStream layout that
this process owns (needs ``torchstream[nats]``; see :mod:`torchstream.nats._worker`)."""

from __future__ import annotations

import logging
import signal
import time

import click

from torchstream._cli_common import (
    ModelSpeed,
    _console,
    _options_help,
    load_pipeline,
    parse_options,
    speed_options,
    start_tracing,
)
from torchstream._cli_nats import NATS_HELP, _nats, build_layout, layout_options
from torchstream._logging import configure_logging
from torchstream._spec import PipelineSpec
from torchstream._types import Sink
from torchstream.sinks import JsonLinesSink
from torchstream.sources import DecoderChoice

log = logging.getLogger(__name__)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--nats", "url", default=None, metavar="URL", help=NATS_HELP + " (required)")
@click.option(
    "--worker-id", default=None, help="This worker's name in the group (default: <host>-<pid>)."
)
@click.option(
    "--heartbeat-timeout-seconds",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Peers silent for this long stop counting (default: the pin timeout).",
)
@click.option(
    "--stall-threshold-seconds",
    type=click.FloatRange(min=0.01),
    default=None,
    help="A loop stalled this long fences the worker (default: derived from the pin timeout).",
)
@click.option(
    "--drain-timeout-seconds",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="On SIGTERM, how long to finish the frames in flight.",
)
@click.option(
    "--max-frame-age-seconds",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Drop (counted `late`) frames older than this since they were published, on "
    "arrival or before their first stage [default: half the stream's max age].",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads shared by the cameras' decoders [default: 32 on CUDA (NVDEC), one per "
    "core, 2 to 16, on CPU].",
)
@click.option(
    "--content",
    type=click.Choice(["none", "image"]),
    default="none",
    show_default=True,
    help="Besides metadata, results carry an annotated JPEG.",
)
@click.option(
    "--meta",
    "-m",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write JSON lines metadata here.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--decoder",
    type=click.Choice(["auto", "nvdec", "pyav"]),
    default="auto",
    show_default=True,
    help="Video decoder for received packets.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
@click.option(
    "--trace-ratio",
    type=click.FloatRange(0, 1),
    default=None,
    help="Trace this share of frames (default $OTEL_TRACES_SAMPLER_ARG, else off).",
)
@click.option(
    "--trace-exporter",
    type=click.Choice(["otlp-http", "otlp-grpc", "console"]),
    default="otlp-http",
    show_default=True,
)
@click.option(
    "--help", "show_help", is_flag=True, help="Show this message and the pipeline's options."
)
@layout_options
@speed_options
@click.pass_context
def worker(
    ctx: click.Context,
    pipeline_name: str,
    url: str | None,
    worker_id: str | None,
    heartbeat_timeout_seconds: float | None,
    stall_threshold_seconds: float | None,
    drain_timeout_seconds: float,
    max_frame_age_seconds: float | None,
    decode_threads: int | None,
    content: str,
    meta: str | None,
    device: str,
    decoder: DecoderChoice,
    batch_size: int,
    max_wait_ms: float,
    speed: ModelSpeed,
    log_format: str,
    log_level: str,
    trace_ratio: float | None,
    trace_exporter: str,
    show_help: bool,
    prefix: str,
) -> None:
    """Run PIPELINE as one worker of a NATS JetStream deployment.

    The worker joins the group, owns its fair share of the partitions (the others' move
    to it), decodes and infers the frames of the cameras in them, and publishes results to
    <prefix>.out.<source id> (drop records to <prefix>.drop.<source id>). SIGTERM hands its
    partitions over without losing a frame; a crashed worker's partitions move after the
    pin timeout (`torchstream nats init --pin-timeout-seconds`). Pipeline options go after
    the pipeline name, as for `run`.
    """
    pipeline_module = load_pipeline(pipeline_name)
    if show_help:
        click.echo(ctx.get_help())
        click.echo(f"\nOptions of pipeline {pipeline_name!r}:\n{_options_help(pipeline_module)}")
        return
    if not url:
        raise click.UsageError("give --nats URL: the NATS server(s) of the deployment")
    nats_layer = _nats()
    from torchstream.nats._worker import Worker

    layout = build_layout(nats_layer, prefix=prefix)
    options = parse_options(pipeline_module, ctx.args)
    config = speed.run_config(device=device, batch_size=batch_size, max_wait_ms=max_wait_ms)
    spec: PipelineSpec = pipeline_module.build(config, options)
    configure_logging(level=log_level, json_lines=log_format == "json")
    tracer, provider = start_tracing(trace_ratio, trace_exporter, service="torchstream-worker")
    sinks: list[Sink] = [JsonLinesSink(meta)] if meta else []
    try:
        server = Worker(
            url,
            spec.stages,
            layout=layout,
            worker_id=worker_id,
            sinks=sinks,
            device=config.device,
            decoder=decoder,
            content=content,  # type: ignore[arg-type]
            style=spec.annotation,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            stall_threshold_seconds=stall_threshold_seconds,
            drain_timeout_seconds=drain_timeout_seconds,
            max_frame_age_seconds=max_frame_age_seconds,
            decode_threads=decode_threads,
            tracer=tracer,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: server.stop())
    _console.print(f"worker {server.worker_id}: {pipeline_name} on {url}")
    started = time.monotonic()
    try:
        stats = server.run()
    except (nats_layer.NatsUnavailableError, nats_layer.LayoutError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(stats.dropped.items())) or "none"
    _console.print(
        f"worker {stats.worker_id} stopped after {time.monotonic() - started:.1f} s: "
        f"{stats.results} results, dropped: {dropped}"
    )
    for stage in stats.stages:
        if stage.batches_total:
            _console.print(
                f"  stage {stage.name}: {stage.frames_total} frames in {stage.batches_total} "
                f"batches ({stage.frames_total / stage.batches_total:.1f} a batch), busy "
                f"{stage.busy_seconds:.1f} s"
            )


def register(group: click.Group) -> None:
    """Add ``worker`` to the ``torchstream`` command."""
    group.add_command(worker)
