"""``torchstream serve --workers N``: N front-end processes (uvicorn workers sharing the
listening socket) in front of one pipeline process, joined by ZeroMQ over ipc.

One Python process has one GIL: parsing HTTP, admitting and refusing requests, and running the
pipeline's Python (decode calls, stage code, kernel launches) all compete for it, so past about
a thousand requests a second the front end starves the pipeline, and a burst of refusals
slows the answers that matter. Here the pipeline runs in the serving process as a
:class:`~torchstream.transport.Module` and each worker is a :class:`ModuleBackend` client of
it: the HTTP work spreads over the workers' cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from fastapi import FastAPI

from torchstream.http._app import create_app
from torchstream.http._config import ServeConfig
from torchstream.http._module_backend import ModuleBackend

__all__ = ["WORKER_ENV", "worker_app", "worker_settings"]

WORKER_ENV = "TORCHSTREAM_SERVE_WORKER"
"""The environment variable that hands a worker its settings (JSON)."""


def worker_settings(
    *, module_in: str, module_out: str, config: ServeConfig, workers: int, metrics: bool
) -> str:
    """The JSON a worker reads: endpoints, and the config with ``max_in_flight`` shared out."""
    fields = dataclasses.asdict(config)
    fields["max_in_flight"] = max(1, config.max_in_flight // workers)
    return json.dumps(
        {"module_in": module_in, "module_out": module_out, "config": fields, "metrics": metrics}
    )


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory, called in the worker). Its sources
    carry the worker's pid, so that the workers' infer sessions and warm-ups stay apart;
    websocket sessions keep the client's source id (a session is the same whichever worker
    serves it)."""
    settings: dict[str, Any] = json.loads(os.environ[WORKER_ENV])
    fields = dict(settings["config"])
    for name in ("api_keys", "cors_origins"):
        fields[name] = tuple(fields[name])
    tag = os.getpid()
    fields["infer_source_id"] = f"{fields['infer_source_id']}-{tag}"
    config = ServeConfig(**fields)
    backend = ModuleBackend(
        settings["module_in"], settings["module_out"],
        timeout_seconds=config.deadline_seconds, warmup_source_id=f"_warmup-{tag}",
    )
    return create_app(backend, config, metrics=settings["metrics"])
