"""The load generator of ``benchmarks/http.py``: asyncio in separate processes, each pinned to
its own core, posting raw JPEG bodies (``Content-Type: image/jpeg``) to one URL.

Two kinds of phase:

- *closed loop*: ``concurrency`` clients, each on its own keep-alive connection, sending its
  next request as soon as the last one is answered: the most the server completes, i.e. its
  capacity;
- *open loop*: requests start at a constant rate whatever the server does (no waiting for
  replies), as independent users would send them; each takes an idle connection or opens one.

Every request has a total deadline (``timeout_seconds``, enforced with ``asyncio.wait_for`` so
nothing hangs); its outcome is its HTTP status, or :data:`TIMEOUT`, :data:`CONNECTION_ERROR`
(refused, reset, closed mid-answer), or :data:`NOT_SENT` when the generator itself had no
connection left (its own limit, not the server's fault: counted, never waited for, so the
arrival rate stays what was asked). A 200 whose JSON body holds no ``"top5"`` list of 5
counts as :data:`BAD_BODY`.

Two HTTP clients, the same measurements:

- ``raw`` (default): a minimal HTTP/1.1 client on asyncio streams (one request per
  connection at a time, Content-Length or chunked answers). Measured here against a trivial
  endpoint, one core each: 2,000-3,400 requests/s at 1-64 connections;
- ``httpx``: ``httpx.AsyncClient``, what the issue suggested; the same test gave 200 requests/s
  at one connection and fell to about 50 at 64 (its connection pool's bookkeeping grows with
  the requests waiting on it), so it would be the bottleneck of any fast server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

TIMEOUT = -1
CONNECTION_ERROR = -2
NOT_SENT = -3
BAD_BODY = -4
_START_DELAY_SECONDS = 0.2  # from the order to the first request, for every process
ClientKind = Literal["raw", "httpx"]


@dataclass(frozen=True)
class Phase:
    """One load phase: ``closed`` (``concurrency`` clients) or ``open`` (``rate_per_second``
    arrivals in total) for ``duration_seconds``."""

    name: str
    mode: Literal["closed", "open"]
    duration_seconds: float
    timeout_seconds: float
    rate_per_second: float = 0.0
    concurrency: int = 0


@dataclass(frozen=True)
class Generator:
    """Where the load comes from: ``processes`` processes, pinned one per core of ``cpus``
    (unpinned when empty), at most ``max_connections`` open in all, speaking ``client``."""

    cpus: tuple[int, ...]
    processes: int
    max_connections: int
    client: ClientKind = "raw"


class LoadGenerator:
    """Generator processes started once (spawned and pinned), then driven phase after phase:
    ``with LoadGenerator(generator) as load: load.run(url, phase, images)``. Entering does
    not wait for them to be up (they import while the caller prepares); leaving stops them."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._workers: list[tuple[Any, Any]] = []
        self._ready = False

    def __enter__(self) -> LoadGenerator:
        ctx = mp.get_context("spawn")
        try:
            for index in range(self._generator.processes):
                ours, theirs = ctx.Pipe()
                process = ctx.Process(
                    target=_serve,
                    args=(theirs, index, self._generator),
                    name=f"http-load-{index}",
                )
                process.start()
                self._workers.append((process, ours))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _, pipe in self._workers:
            with contextlib.suppress(OSError):  # a process that died has closed its end
                pipe.send(None)
        for process, _ in self._workers:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        self._workers = []

    def run(self, url: str, phase: Phase, images: Sequence[bytes]) -> dict:
        """Run ``phase`` against ``url``, the requests' bodies cycling through ``images``;
        returns its summary (:func:`summarise`)."""
        if not self._ready:
            for process, pipe in self._workers:
                if not pipe.poll(120):
                    raise RuntimeError(f"load generator {process.name} did not start")
                pipe.recv()
            self._ready = True
        bodies = list(images)
        start = time.monotonic() + _START_DELAY_SECONDS
        for _, pipe in self._workers:
            pipe.send((url, phase, bodies, start))
        wait_seconds = _START_DELAY_SECONDS + phase.duration_seconds + phase.timeout_seconds + 60
        parts = []
        for process, pipe in self._workers:
            if not pipe.poll(wait_seconds):
                raise RuntimeError(f"load generator {process.name} did not report in time")
            parts.append(pipe.recv())
        return summarise(phase, parts)


def _serve(pipe: Any, index: int, generator: Generator) -> None:
    """One generator process: runs each ``(url, phase, images, start)`` it receives, until
    None."""
    if generator.cpus:
        os.sched_setaffinity(0, {generator.cpus[index % len(generator.cpus)]})
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    pipe.send("ready")
    while (job := pipe.recv()) is not None:
        url, phase, images, start = job
        pipe.send(run(_drive(url, phase, images, index, generator, start)))


# -- the two clients --------------------------------------------------------------------------
class _RawClient:
    """HTTP/1.1 POSTs of prepared requests over keep-alive connections; ``post`` returns
    ``(status, body)`` and raises ``OSError``/``EOFError``/``ValueError`` on broken ones."""

    def __init__(self, url: str, images: Sequence[bytes]) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            "content-type: image/jpeg\r\ncontent-length: {}\r\n\r\n"
        )
        self._requests = [head.format(len(image)).encode() + image for image in images]
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: set[asyncio.StreamWriter] = set()
        self.errors = (OSError, EOFError, ValueError, asyncio.LimitOverrunError)

    async def post(self, image: int) -> tuple[int, bytes]:
        connection = None
        while self._idle and connection is None:
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():  # closed by the server while idle
                self._close(writer)
            else:
                connection = reader, writer
        if connection is None:
            connection = await asyncio.open_connection(self._host, self._port)
            self._open.add(connection[1])
        reader, writer = connection
        try:
            writer.write(self._requests[image])
            status, body, keep = await _read_answer(reader)
        except BaseException:  # broken, or cancelled mid-answer: the connection is unusable
            self._close(writer)
            raise
        if keep:
            self._idle.append(connection)
        else:
            self._close(writer)
        return status, body

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in list(self._open):
            self._close(writer)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers expected
        body = b"".join(chunks)
    else:
        return status, await reader.read(), False  # the body ends with the connection
    return status, body, headers.get("connection") != "close"


class _HttpxClient:
    """The same through ``httpx.AsyncClient``."""

    def __init__(self, url: str, images: Sequence[bytes], connections: int, timeout: float):
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
        self._url, self._images = url, images
        self._headers = {"content-type": "image/jpeg"}
        self.errors = (httpx.HTTPError,)
        self._timeouts = (httpx.TimeoutException,)

    async def post(self, image: int) -> tuple[int, bytes]:
        try:
            response = await self._client.post(
                self._url, content=self._images[image], headers=self._headers
            )
        except self._timeouts as exc:
            raise asyncio.TimeoutError from exc
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


# -- one process's share of a phase -----------------------------------------------------------
async def _drive(
    url: str, phase: Phase, images: list[bytes], index: int, generator: Generator, start: float
) -> dict:
    """This process's share of the phase; times are seconds from the phase's start."""
    share = generator.processes
    connections = max(1, generator.max_connections // share)
    timeout = phase.timeout_seconds
    client: _RawClient | _HttpxClient
    if generator.client == "httpx":
        client = _HttpxClient(url, images, connections, timeout)
    else:
        client = _RawClient(url, images)
    sent_at: list[float] = []
    latency: list[float] = []
    outcome: list[int] = []
    lag: list[float] = []
    errors: Counter[str] = Counter()

    async def one(image: int) -> None:
        began = time.monotonic()
        try:
            code, body = await asyncio.wait_for(client.post(image), timeout)
            if code == 200 and not _good_body(body):
                code = BAD_BODY
        except asyncio.TimeoutError:
            code = TIMEOUT
        except client.errors as exc:
            code = CONNECTION_ERROR
            errors[type(exc).__name__] += 1
        sent_at.append(began - start)
        latency.append(time.monotonic() - began)
        outcome.append(code)

    await asyncio.sleep(max(0.0, start - time.monotonic()))
    end = start + phase.duration_seconds
    if phase.mode == "closed":
        clients = phase.concurrency // share + (index < phase.concurrency % share)

        async def loop(first: int) -> None:
            count = first
            while time.monotonic() < end:
                await one((count * share + index) % len(images))
                count += clients

        await asyncio.gather(*(loop(i) for i in range(min(clients, connections))))
    else:
        in_flight: set[asyncio.Task[None]] = set()
        step = share / phase.rate_per_second
        due, count = index / phase.rate_per_second, 0
        while due < phase.duration_seconds:
            delay = start + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(time.monotonic() - start - due)
            if len(in_flight) >= connections:
                sent_at.append(due)
                latency.append(0.0)
                outcome.append(NOT_SENT)
            else:
                task = asyncio.create_task(one((count * share + index) % len(images)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            due += step
            count += 1
        if in_flight:
            await asyncio.gather(*in_flight)
    await client.aclose()
    return {
        "sent_at": np.array(sent_at),
        "latency": np.array(latency),
        "outcome": np.array(outcome, dtype=np.int32),
        "lag": np.array(lag),
        "errors": dict(errors),
    }


def _good_body(content: bytes) -> bool:
    try:
        return len(find_top5(json.loads(content))) == 5
    except (ValueError, LookupError):
        return False


def find_top5(answer: object) -> list:
    """The ``top5`` list anywhere in a decoded answer (torchstream may wrap the frame's
    metadata); ``LookupError`` when there is none."""
    if isinstance(answer, dict):
        if isinstance(answer.get("top5"), list):
            return answer["top5"]
        answer = list(answer.values())
    if isinstance(answer, list):
        for value in answer:
            with contextlib.suppress(LookupError):
                return find_top5(value)
    raise LookupError("no top5 in the answer")


# -- numbers ----------------------------------------------------------------------------------
def summarise(phase: Phase, parts: list[dict]) -> dict:
    """The phase's numbers, JSON-ready; latencies in milliseconds.

    ``ok_per_second``: 200 answers per second from the phase's start to its last 200 answer
    (at least the phase's duration). A closed loop stops sending at the end of the phase and
    its last answers come later, so this is its steady completion rate; for an open loop it is
    the rate at which the server really answered what was offered, backlog included.
    """
    sent_at = np.concatenate([p["sent_at"] for p in parts])
    latency = np.concatenate([p["latency"] for p in parts])
    outcome = np.concatenate([p["outcome"] for p in parts])
    lag = np.concatenate([p["lag"] for p in parts])
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    ok = outcome == 200
    rejected = np.isin(outcome, (429, 503))
    sent = int(np.count_nonzero(outcome != NOT_SENT))
    codes = Counter(int(c) for c in outcome[outcome >= 100])
    last_ok = float((sent_at + latency)[ok].max()) if ok.any() else 0.0
    elapsed = max(phase.duration_seconds, last_ok)
    return {
        **asdict(phase),
        "requests": len(outcome),
        "sent": sent,
        "sent_per_second": sent / phase.duration_seconds,
        "ok": int(ok.sum()),
        "ok_per_second": int(ok.sum()) / elapsed,
        "elapsed_seconds": elapsed,
        "latency_ms": _percentiles(latency[ok]),
        "status_codes": {str(code): n for code, n in sorted(codes.items())},
        "timeouts": int(np.count_nonzero(outcome == TIMEOUT)),
        "connection_errors": int(np.count_nonzero(outcome == CONNECTION_ERROR)),
        "connection_error_types": dict(errors),
        "not_sent": int(np.count_nonzero(outcome == NOT_SENT)),
        "bad_bodies": int(np.count_nonzero(outcome == BAD_BODY)),
        "rejected_latency_ms": _percentiles(latency[rejected]),
        "generator_lag_ms": _percentiles(lag),
    }


def _percentiles(seconds: np.ndarray) -> dict[str, float] | None:
    if seconds.size == 0:
        return None
    p50, p95, p99, top = np.percentile(seconds * 1000, [50, 95, 99, 100])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(top)}
