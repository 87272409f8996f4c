"""Admission in plain ASGI, before FastAPI's routing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from urllib.parse import parse_qs

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from torchstream.http._server import Server

__all__ = ["AdmissionGate", "discard_body"]


class AdmissionGate:
    """Admits or refuses ``POST /v1/infer`` and ``/v1/jobs`` in plain ASGI, before FastAPI's
    per-request work (routing, dependencies, validation), so that refusing a burst costs
    little and is answered at once. It owns the request's slot: released when the answer has
    gone, unless the route handed it to a job (``request.state.slot = "job"``).

    Requests it cannot judge cheaply pass through unadmitted and the route answers them:
    without a right API key (401), before the pipeline is ready (503), with a malformed
    ``deadline_seconds`` (422)."""

    _ROUTES = ("/v1/infer", "/v1/jobs")

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        if (
            scope["type"] != "http" or scope["method"] != "POST"
            or scope["path"] not in self._ROUTES
            or (server.keys and not server.keys.accept_header(_header(scope, b"authorization")))
            or not server.backend.health().ready
        ):
            await self.app(scope, receive, send)
            return
        asked = _deadline_query(scope.get("query_string", b""))
        if asked is False:
            await self.app(scope, receive, send)
            return
        arrival = server.clock()
        deadline = server.deadline(arrival, asked or None)
        if not server.admission.try_enter(within_seconds=deadline - arrival):
            problem = server.refusal()
            await _drain(receive, server.config.max_body_bytes)
            body = json.dumps(problem.body()).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        state = scope.setdefault("state", {})
        state["arrival"], state["deadline"] = arrival, deadline
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get("slot") != "job":
                server.admission.leave(served=bool(state.get("served", False)))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _deadline_query(query: bytes) -> float | bool | None:
    """``deadline_seconds`` from a query string: None when absent, False when malformed."""
    if b"deadline_seconds" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("deadline_seconds", [])
    try:
        value = float(values[-1])
    except (IndexError, ValueError):
        return False
    return value if value > 0 and math.isfinite(value) else False


async def _drain(receive: Receive, max_bytes: int) -> None:
    """Read and drop a request's body (at most ``max_bytes``, for at most a second)."""

    async def drain() -> None:
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if total > max_bytes or not message.get("more_body", False):
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(), 1.0)


async def discard_body(request: Request, max_bytes: int) -> None:
    """:func:`_drain` for a route's request whose body nothing has read yet."""
    await _drain(request.receive, max_bytes)
