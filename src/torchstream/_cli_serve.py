"""``torchstream serve``: the HTTP front end (needs ``torchstream[http]``)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any

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


def _http() -> Any:
    try:
        import uvicorn

        import torchstream.http as http
    except ImportError as exc:
        raise click.UsageError(
            f"torchstream serve needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install 'torchstream[http]'"
        ) from exc
    return http, uvicorn


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("pipeline_name", metavar="[PIPELINE]", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--module", "module_in", default=None, metavar="ENDPOINT",
              help="Send frames to a running module instead of running PIPELINE here "
              "(e.g. dealer+connect:tcp://gpu:5555); needs --results.")
@click.option("--results", "module_out", default=None, metavar="ENDPOINT",
              help="Where that module's results come from (e.g. sub+connect:tcp://gpu:5556).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="HTTP worker processes. 1: the pipeline runs in the server's process. "
              "More: the pipeline runs alone in this process (as a module over ipc) and the "
              "workers share the port, for more requests per second than one process parses.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="With --workers > 1: the pipeline's own metrics on this port.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest a frame waits for its batch to fill.")
@click.option("--half", is_flag=True, help="Half precision on CUDA.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests inside the pipeline at once; past it: 429 with Retry-After.")
@click.option("--deadline-seconds", type=click.FloatRange(min=0.001), default=10.0,
              show_default=True, help="Longest a request waits for its result (then 504).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=20.0,
              show_default=True, help="Largest request body (413 past it).")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=40_000_000,
              show_default=True, help="Largest image, checked from its header (422 past it).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Require Authorization: Bearer <key>, keys one per line in this file.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow this origin with CORS (repeat for more; off by default).")
@click.option("--job-ttl-seconds", type=click.FloatRange(min=0.001), default=300.0,
              show_default=True, help="How long finished jobs are kept.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--meta", "-m", type=click.Path(dir_okay=False), default=None,
              help="Also write every result to this JSON lines file.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Serve /metrics (needs prometheus-client).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--trace-ratio", type=click.FloatRange(0, 1), default=None,
              help="Trace this share of requests (default: $OTEL_TRACES_SAMPLER_ARG, else off).")
@click.option("--trace-exporter", type=click.Choice(["otlp-http", "otlp-grpc", "console"]),
              default="otlp-http", show_default=True)
@click.option("--help", "show_help", is_flag=True,
              help="Show this message (and PIPELINE's options) and exit.")
@click.pass_context
def serve(
    ctx: click.Context,
    pipeline_name: str | None,
    host: str,
    port: int,
    module_in: str | None,
    module_out: str | None,
    workers: int,
    metrics_port: int | None,
    device: str,
    batch_size: int,
    max_wait_ms: float,
    half: bool,
    max_in_flight: int,
    deadline_seconds: float,
    max_body_mb: float,
    max_image_pixels: int,
    api_key_file: str | None,
    cors_origins: tuple[str, ...],
    job_ttl_seconds: float,
    max_jobs: int,
    meta: str | None,
    metrics: bool,
    log_format: str,
    log_level: str,
    trace_ratio: float | None,
    trace_exporter: str,
    show_help: bool,
) -> None:
    """Serve PIPELINE over HTTP: POST /v1/infer, /v1/jobs, WS /v1/stream, /healthz,
    /readyz, /metrics; the OpenAPI documents are at /docs.

    Requests of all clients are batched together by the pipeline. Past --max-in-flight
    requests the answer is 429 at once; a request without a result within its deadline
    gets 504. SIGTERM stops taking requests, answers those in flight, then exits.
    Pipeline options go after the pipeline name, as for `run`.
    """
    pipeline_module = load_pipeline(pipeline_name) if pipeline_name else None
    if show_help:
        click.echo(ctx.get_help())
        if pipeline_module is not None:
            click.echo(
                f"\nOptions of pipeline {pipeline_name!r}:\n{_options_help(pipeline_module)}"
            )
        return
    if (module_in is None) != (module_out is None):
        raise click.UsageError("--module and --results go together")
    if module_in is not None and pipeline_module is not None:
        raise click.UsageError("give PIPELINE or --module, not both")
    if module_in is None and pipeline_module is None:
        raise click.UsageError("give PIPELINE (run it here) or --module/--results")
    http, uvicorn = _http()
    api_keys: tuple[str, ...] = ()
    if api_key_file:
        try:
            api_keys = http.read_api_keys(api_key_file)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--api-key-file") from None
    config = http.ServeConfig(
        max_in_flight=max_in_flight,
        deadline_seconds=deadline_seconds,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels,
        api_keys=api_keys,
        job_ttl_seconds=job_ttl_seconds,
        max_jobs=max_jobs,
        cors_origins=cors_origins,
    )
    configure_logging(level=log_level, json_lines=log_format == "json")
    provider = None
    if workers > 1:
        _serve_with_workers(ctx, http, uvicorn, pipeline_module, config, workers=workers,
                            host=host, port=port, module_in=module_in, module_out=module_out,
                            device=device, batch_size=batch_size, max_wait_ms=max_wait_ms,
                            half=half, meta=meta, metrics=metrics, metrics_port=metrics_port,
                            trace_ratio=trace_ratio, trace_exporter=trace_exporter)
        return
    if pipeline_module is not None:
        options = parse_options(pipeline_module, ctx.args)
        run_config = RunConfig(
            device=_device(device),
            batch_policy=BatchPolicy(max_size=batch_size, max_wait_seconds=max_wait_ms / 1000),
            half=half,
        )
        spec: PipelineSpec = pipeline_module.build(run_config, options)
        tracer, provider = start_tracing(trace_ratio, trace_exporter)
        sinks: list[Sink] = [JsonLinesSink(meta)] if meta else []
        backend = http.InProcessBackend(
            spec.stages, device=run_config.device, sinks=sinks, tracer=tracer,
            max_queued=max(1024, max_in_flight),
        )
        what = f"pipeline {pipeline_name} on {run_config.device}"
    else:
        if ctx.args:
            raise click.UsageError(f"unexpected arguments {' '.join(ctx.args)!r}")
        try:
            backend = http.ModuleBackend(module_in, module_out, timeout_seconds=deadline_seconds)
        except (ValueError, OSError, ImportError) as exc:
            raise click.UsageError(str(exc)) from exc
        what = f"module {module_in} (results from {module_out})"

    failures: list[BaseException] = []
    uv_config = uvicorn.Config(
        None, host=host, port=port, log_config=None, access_log=False,
        ws_max_size=config.max_body_bytes + 1024,
        timeout_graceful_shutdown=int(deadline_seconds) + 5,
    )
    server = uvicorn.Server(uv_config)

    def start_failed(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    try:
        app = http.create_app(backend, config, metrics=metrics, on_start_failure=start_failed)
    except ImportError as exc:
        raise click.UsageError(f"{exc} (or pass --no-metrics)") from exc
    uv_config.app = app
    _console.print(
        f"serving {what} on http://{host}:{port} (docs: /docs; ready when /readyz says so)"
    )
    # uvicorn handles SIGTERM/SIGINT while it runs (stop accepting, answer what is in
    # flight, drain the pipeline) and raises the signal again afterwards for the handler it
    # found: make that a no-op, so a drained stop exits with status 0.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: None)
    try:
        server.run()
    finally:
        if provider is not None:
            provider.shutdown()
    if failures:
        _console.print(f"[red]serve: the pipeline failed to start:[/red] {failures[0]}")
        sys.exit(1)
    if not server.started:
        sys.exit(1)  # uvicorn said why (a port in use, say)


def _serve_with_workers(
    ctx: click.Context, http: Any, uvicorn: Any, pipeline_module: Any, config: Any, *,
    workers: int, host: str, port: int, module_in: str | None, module_out: str | None,
    device: str, batch_size: int, max_wait_ms: float, half: bool, meta: str | None,
    metrics: bool, metrics_port: int | None, trace_ratio: float | None, trace_exporter: str,
) -> None:
    """``--workers N``: the pipeline as a module in this process (unless ``--module``), and
    N uvicorn workers in front of it."""
    from torchstream.http._workers import WORKER_ENV, worker_settings

    module = None
    thread = None
    errors: list[BaseException] = []
    folder = None
    provider = None
    if pipeline_module is not None:
        from torchstream._cli_transport import _transport

        transport = _transport()
        options = parse_options(pipeline_module, ctx.args)
        run_config = RunConfig(
            device=_device(device),
            batch_policy=BatchPolicy(max_size=batch_size, max_wait_seconds=max_wait_ms / 1000),
            half=half,
        )
        spec: PipelineSpec = pipeline_module.build(run_config, options)
        tracer, provider = start_tracing(trace_ratio, trace_exporter)
        folder = tempfile.mkdtemp(prefix="torchstream-serve-")
        module_in = f"dealer+connect:ipc://{folder}/in"
        module_out = f"sub+connect:ipc://{folder}/out"
        module = transport.Module(
            spec.stages, inbound=f"router+bind:ipc://{folder}/in",
            outbound=f"pub+bind:ipc://{folder}/out",
            sinks=[JsonLinesSink(meta)] if meta else [], device=run_config.device,
            tracer=tracer, max_queued=max(64, config.max_in_flight),
        )

        def run_module() -> None:
            try:
                module.run()
            except BaseException as exc:  # reported below: the server must not start
                errors.append(exc)

        thread = threading.Thread(target=run_module, name="ts/module", daemon=True)
        thread.start()
        while not module.ready.wait(0.1):  # models loading
            if not thread.is_alive():
                _console.print(f"[red]serve: the pipeline failed to start:[/red] {errors[0]}")
                sys.exit(1)
        if metrics_port is not None:
            from torchstream.telemetry import ModuleCollector, serve_metrics

            served = serve_metrics(module.pipeline, port=metrics_port, health=module.health,
                                   collectors=[ModuleCollector(module)])
            _console.print(f"pipeline metrics: http://127.0.0.1:{served.port}/metrics")
    elif ctx.args:
        raise click.UsageError(f"unexpected arguments {' '.join(ctx.args)!r}")
    assert module_in is not None and module_out is not None
    os.environ[WORKER_ENV] = worker_settings(
        module_in=module_in, module_out=module_out, config=config, workers=workers,
        metrics=metrics,
    )
    _console.print(
        f"serving with {workers} workers on http://{host}:{port} (ready when /readyz says so)"
    )
    try:
        uvicorn.run(
            "torchstream.http._workers:worker_app", factory=True, workers=workers, host=host,
            port=port, log_config=None, access_log=False,
            ws_max_size=config.max_body_bytes + 1024,
            timeout_graceful_shutdown=int(config.deadline_seconds) + 5,
        )
    finally:
        if module is not None and thread is not None:
            module.stop()  # the workers are gone: drain what the module has, then stop
            thread.join()
        if provider is not None:
            provider.shutdown()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    if errors:
        _console.print(f"[red]serve: the pipeline failed:[/red] {errors[0]}")
        sys.exit(1)


class ControlServer:
    """``run --control-port``: the sources API of a running pipeline, served by uvicorn on
    its own thread (``ts/control``)."""

    def __init__(self, pipeline: Any, *, host: str, port: int, api_key_file: str | None):
        http, uvicorn = _http()
        keys: tuple[str, ...] = ()
        if api_key_file:
            try:
                keys = http.read_api_keys(api_key_file)
            except (OSError, ValueError) as exc:
                raise click.BadParameter(str(exc), param_hint="--api-key-file") from None
        app = http.create_control_app(pipeline, api_keys=keys)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ts/control", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise click.UsageError(f"cannot serve the control API on {host}:{port}")
            time.sleep(0.01)  # uvicorn offers no event for "listening"
        self.port: int = self._server.servers[0].sockets[0].getsockname()[1]

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def register(group: click.Group) -> None:
    """Add ``serve`` to the ``torchstream`` command."""
    group.add_command(serve)
