"""``WS /v1/stream``: the frames of one session in, their results out, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from torchstream.client._trace import new_traceparent
from torchstream.http._backend import Outcome
from torchstream.http._images import ImageRejected, check_image
from torchstream.http._server import Problem, Server, StreamState

__all__ = ["stream"]

_SOURCE_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")


async def stream(server: Server, websocket: WebSocket) -> None:
    """``WS /v1/stream?source_id=…``: the frames of one session in, their results out, in
    order. See the README for the message format."""
    source_id = websocket.query_params.get("source_id", "")
    if not server.keys.accept_header(websocket.headers.get("authorization")):
        await websocket.close(code=1008, reason="missing or wrong API key")
        return
    # Refusals after the handshake, so that the client gets the close code and reason.
    refusal: tuple[int, str] | None = None
    health = server.backend.health()
    if not _SOURCE_ID.match(source_id):
        refusal = 1008, "source_id query parameter: 1-128 of A-Z a-z 0-9 . _ : @ / -"
    elif not health.ready:
        refusal = 1013, f"not ready: {health.reason}"[:120]
    elif (previous := server.streams.get(source_id)) is not None and previous.connected:
        refusal = 1008, f"source {source_id!r} is already streaming"[:120]
    await websocket.accept()
    if refusal is None and previous is not None:
        # Its previous connection is gone and its last frames are finishing: wait for them,
        # so that the new session starts after the old one ended.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(previous.finished.wait(), server.config.deadline_seconds)
        if source_id in server.streams:
            refusal = 1013, f"source {source_id!r} is still finishing its previous session"
    if refusal is not None:
        await websocket.close(code=refusal[0], reason=refusal[1])
        return
    state = server.streams[source_id] = StreamState()
    try:
        await _session(server, websocket, source_id, state)
    finally:
        await server.backend.end_source(source_id)
        del server.streams[source_id]
        state.finished.set()



_Pending = tuple[int, "asyncio.Future[Outcome] | Problem", float, float, str]


async def _session(
    server: Server, websocket: WebSocket, source_id: str, state: StreamState
) -> None:
    cfg = server.config
    pending: asyncio.Queue[_Pending | None] = asyncio.Queue(cfg.max_stream_in_flight)
    writer = asyncio.create_task(_send_results(server, websocket, pending))
    index = 0
    ended = False
    try:
        while not writer.done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            started = server.clock()
            text = message.get("text")
            if text is not None:
                if _is_end(text):
                    ended = True
                    break
                await pending.put((index, Problem(400, "text messages: only {\"end\": true}"),
                                   started, started, ""))
                index += 1
                continue
            data: bytes = message.get("bytes") or b""
            await pending.put(_submit(server, source_id, index, data, started))
            index += 1
    finally:
        state.connected = False
        await pending.put(None)
        await asyncio.wait({writer})
    if ended and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"type": "end", "source_id": source_id,
                                                  "frames": index}))
            await websocket.close(code=1000)


def _is_end(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("end") is True


def _submit(server: Server, source_id: str, index: int, data: bytes, started: float) -> _Pending:
    cfg = server.config
    deadline = server.deadline(started, None)
    try:
        if len(data) > cfg.max_body_bytes:
            raise ImageRejected(
                413, f"frame of {len(data)} bytes exceeds the limit of {cfg.max_body_bytes}"
            )
        image = check_image(data, declared=None, max_pixels=cfg.max_image_pixels,
                            max_side=cfg.max_image_side)
    except ImageRejected as exc:
        return (index, Problem(exc.status, exc.message), started, deadline, "")
    if not server.admission.try_enter(within_seconds=deadline - started):
        return (index, Problem(429, "too many frames in flight on this server",
                               retry_after_seconds=server.admission.retry_after_seconds()),
                started, deadline, "")
    traceparent = new_traceparent(sample_ratio=server.trace_ratio)
    future = server.backend.submit(
        source_id, image, deadline_monotonic=deadline, traceparent=traceparent
    )
    return (index, future, started, deadline, traceparent)


async def _send_results(
    server: Server, websocket: WebSocket, pending: asyncio.Queue[_Pending | None]
) -> None:
    """Answers in the order the frames came; keeps draining (releasing admission) after the
    client went away."""
    connected = True
    while (item := await pending.get()) is not None:
        index, work, started, deadline, traceparent = item
        if isinstance(work, Problem):
            status, body = work.status, {"type": "error", "index": index, **work.body()}
            payload = json.dumps(body)
        else:
            served = False
            try:
                outcome = await server.wait(work, deadline)
                served = True
                status = 200
                payload = (
                    b'{"type": "result", "index": ' + str(index).encode() + b", "
                    + server.result_json(outcome, traceparent, started)[1:]
                ).decode()
            except Problem as exc:
                status = exc.status
                payload = json.dumps({"type": "error", "index": index, **exc.body()})
            finally:
                server.admission.leave(served=served)
        server.counters.stream_frames[status] += 1
        if connected:
            try:
                await websocket.send_text(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                connected = False
