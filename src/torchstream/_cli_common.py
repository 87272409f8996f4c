"""What the ``torchstream`` commands share: loading pipelines, their options, the device."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

import click
import torch
from rich.console import Console

BUNDLED = {
    "driving": "torchstream.samples.driving",
    "faces": "torchstream.samples.faces",
}

_console = Console(stderr=True, highlight=False)

if TYPE_CHECKING:
    from torchstream._spec import RunConfig
    from torchstream.pipeline import CompileMode

_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class ModelSpeed:
    """The speed options of the commands that run model stages (``run``, ``module``,
    ``worker``), as one value: see :func:`speed_options`."""

    half: bool
    channels_last: bool
    cuda_graphs: bool
    compile_mode: CompileMode | None
    switch_interval_ms: float

    def run_config(self, *, device: str, batch_size: int, max_wait_ms: float) -> RunConfig:
        """The pipeline's :class:`RunConfig`; also sets the process's GIL switch interval (a
        program-wide setting, so the program makes it, not the library)."""
        from torchstream._spec import RunConfig
        from torchstream.pipeline import BatchPolicy

        sys.setswitchinterval(self.switch_interval_ms / 1000)
        return RunConfig(
            device=_device(device),
            batch_policy=BatchPolicy(
                max_size=batch_size,
                max_wait_seconds=max_wait_ms / 1000,
                pad_to_max_size=self.cuda_graphs,
            ),
            half=self.half,
            channels_last=self.channels_last,
            cuda_graphs=self.cuda_graphs,
            compile_mode=self.compile_mode,
        )


_SPEED_FLAGS = ("half", "channels_last", "cuda_graphs", "compile_mode", "switch_interval_ms")


def speed_options(command: _Command) -> _Command:
    """Add ``--half --channels-last --cuda-graphs --compile --switch-interval-ms`` to a click
    command; it receives them as one ``speed: ModelSpeed`` argument."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        speed = ModelSpeed(**{name: kwargs.pop(name) for name in _SPEED_FLAGS})
        if speed.cuda_graphs and speed.compile_mode in ("reduce-overhead", "max-autotune"):
            raise click.UsageError(
                f"--cuda-graphs and --compile {speed.compile_mode} do not go together (that "
                "mode captures CUDA graphs itself; --compile default does go with --cuda-graphs)"
            )
        return command(*args, speed=speed, **kwargs)

    options = [
        click.option("--half", is_flag=True, help="Half precision on CUDA."),
        click.option(
            "--channels-last", is_flag=True,
            help="Model weights in NHWC order (faster convolutions on CUDA). This and the next "
            "two reach the stages of pipelines that pass RunConfig's speed options on "
            "(driving does).",
        ),
        click.option(
            "--cuda-graphs", is_flag=True,
            help="Replay each model's forward pass as a CUDA graph (pads batches to "
            "--batch-size).",
        ),
        click.option(
            "--compile", "compile_mode", default=None,
            type=click.Choice(
                ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
            ),
            help="torch.compile the models with this mode (the first batch compiles).",
        ),
        click.option(
            "--switch-interval-ms", type=click.FloatRange(min=0.01), default=0.2,
            show_default=True,
            help="Python's GIL hand-over interval. Its own default, 5 ms, lets decoder threads "
            "starve the model stage (measured on an H100: 1,610 vs 1,750 frames/s).",
        ),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return typing.cast(_Command, decorated)


def load_pipeline(spec: str) -> types.ModuleType:
    """A bundled sample (``faces`` or ``samples/faces``), a ``.py`` file, or a directory
    holding ``pipeline.py``; it must define ``build(config, options)``."""
    path = Path(spec)
    if path.is_file():
        module_path = path
    elif path.is_dir() and (path / "pipeline.py").is_file():
        module_path = path / "pipeline.py"
    elif spec.removeprefix("samples/") in BUNDLED:
        return importlib.import_module(BUNDLED[spec.removeprefix("samples/")])
    else:
        raise click.BadParameter(
            f"{spec!r} is neither a bundled sample ({', '.join(sorted(BUNDLED))}) "
            "nor a Python file or directory with pipeline.py",
            param_hint="PIPELINE",
        )
    module_spec = importlib.util.spec_from_file_location(f"_ts_pipeline_{path.stem}", module_path)
    if module_spec is None or module_spec.loader is None:
        raise click.BadParameter(f"cannot load {module_path}", param_hint="PIPELINE")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)):
        raise click.BadParameter(
            f"{module_path} must define build(config, options)", param_hint="PIPELINE"
        )
    return module


def _option_fields(module: types.ModuleType) -> list[tuple[dataclasses.Field[Any], Any]]:
    options_cls = getattr(module, "Options", None)
    if options_cls is None:
        return []
    hints = typing.get_type_hints(options_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_cls)]


def _convert(name: str, kind: Any, text: str) -> Any:
    if get_origin(kind) is Literal:
        allowed = [str(a) for a in get_args(kind)]
        if text not in allowed:
            raise click.UsageError(f"--{name} must be one of {', '.join(allowed)}, got {text!r}")
        return text
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise click.UsageError(
                f"--{name} expects {kind.__name__}, got {text!r}"
            ) from None
    raise click.UsageError(f"--{name}: unsupported option type {kind!r}")


def parse_options(module: types.ModuleType, args: list[str]) -> Any:
    """Turn ``--field-name value`` / ``--flag`` / ``--no-flag`` into the pipeline's Options."""
    fields = {f.name.replace("_", "-"): (f, kind) for f, kind in _option_fields(module)}
    values: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--"):
            raise click.UsageError(f"unexpected argument {arg!r}")
        key, _, inline = arg[2:].partition("=")
        negated = key.startswith("no-") and key[3:] in fields
        entry = fields.get(key[3:] if negated else key)
        if entry is None:
            known = ", ".join(f"--{k}" for k in fields) or "none"
            raise click.UsageError(f"no such option {arg!r} (pipeline options: {known})")
        field, kind = entry
        if kind is bool:
            values[field.name] = not negated
            continue
        if not inline:
            if not rest:
                raise click.UsageError(f"--{key} needs a value")
            inline = rest.pop(0)
        values[field.name] = _convert(key, kind, inline)
    options_cls = getattr(module, "Options", None)
    if options_cls is None:
        return None
    try:
        return options_cls(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _options_help(module: types.ModuleType) -> str:
    lines = []
    for field, kind in _option_fields(module):
        flag = field.name.replace("_", "-")
        if kind is bool:
            flag = f"--{flag} / --no-{flag}"
        else:
            meta = "|".join(map(str, get_args(kind))) if get_origin(kind) is Literal else (
                getattr(kind, "__name__", str(kind)).upper()
            )
            flag = f"--{flag} {meta}"
        help_text = field.metadata.get("help", "")
        lines.append(f"  {flag:<34} {help_text} [default: {field.default}]")
    return "\n".join(lines) or "  (none)"


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise click.BadParameter(
            f"{text!r} (use cpu, cuda or cuda:N)", param_hint="--device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{text!r} (use cpu, cuda or cuda:N)", param_hint="--device")
    return device


def tracing_provider(trace_ratio: float | None, exporter: str, *, service: str) -> Any:
    """The OpenTelemetry tracer provider for ``--trace-ratio`` (else
    ``$OTEL_TRACES_SAMPLER_ARG``), or None when tracing is off. The service is
    ``$OTEL_SERVICE_NAME``, else ``service``; the OTLP exporters take their endpoint and
    headers from ``$OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``_HEADERS``. Log records then
    carry trace and span ids."""
    sampler_arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
    if trace_ratio is None and sampler_arg:
        try:
            trace_ratio = float(sampler_arg)
        except ValueError:
            raise click.UsageError(
                f"OTEL_TRACES_SAMPLER_ARG must be a ratio, got {sampler_arg!r}"
            ) from None
    if not trace_ratio:
        return None
    try:
        from torchstream.telemetry._tracing import TraceLogFilter, configure_tracing
    except ImportError as exc:  # MissingDependencyError names the extra
        raise click.UsageError(str(exc)) from exc

    provider = configure_tracing(
        ratio=trace_ratio,
        exporter=exporter,  # type: ignore[arg-type]
        service=os.environ.get("OTEL_SERVICE_NAME") or service,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceLogFilter())
    return provider


def start_tracing(
    trace_ratio: float | None, exporter: str, *, service: str = "torchstream"
) -> tuple[Any, Any]:
    """``(frame tracer, provider)`` for a pipeline (see :func:`tracing_provider`), or
    ``(None, None)`` when tracing is off."""
    provider = tracing_provider(trace_ratio, exporter, service=service)
    if provider is None:
        return None, None
    from torchstream.telemetry._tracing import OtelFrameTracer

    return OtelFrameTracer(provider.get_tracer("torchstream")), provider
