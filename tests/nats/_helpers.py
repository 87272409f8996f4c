"""Shared by the worker tests and the fault suite: a small H.264 clip as packets, a
publisher thread replaying it into the input stream, and a collector of what the workers
publish (results and drop records) feeding an :class:`Accounting`."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from torchstream.nats import Layout, Publisher, connect, decode
from torchstream.nats._accounting import Accounting, ResultRecord
from torchstream.nats._connection import close_quietly
from torchstream.nats._ledger import DropRecord
from torchstream.nats._tickets import EPOCH_HEADER, PARTITION_HEADER, WORKER_HEADER
from torchstream.testing import SyntheticVideo
from torchstream.transport import FrameMessage, PacketPayload, ResultMessage

GOP = 10
"""Frames per group of pictures of the test clip (a keyframe every GOP frames)."""


@dataclass(frozen=True)
class Packet:
    data: bytes
    pts: int
    keyframe: bool


def h264_packets(frames: int = 60, *, width: int = 128, height: int = 96) -> list[Packet]:
    """``frames`` H.264 packets in Annex B, one picture each, no B-frames, a keyframe every
    :data:`GOP` frames (pts in 1/90000 s at 30 fps)."""
    import av

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, 90000)
    codec.framerate = Fraction(30)
    codec.options = {
        "bf": "0",
        "g": str(GOP),
        "keyint_min": str(GOP),
        "sc_threshold": "0",
        "tune": "zerolatency",
        "preset": "ultrafast",
        "annexb": "1",
        "repeat-headers": "1",
    }
    codec.open()
    video = SyntheticVideo(width=width, height=height)
    packets: list[Packet] = []
    for seq in range(frames):
        picture = av.VideoFrame.from_ndarray(video.render(seq).numpy(), format="rgb24")
        picture = picture.reformat(format="yuv420p")
        picture.pts = seq * 3000
        picture.time_base = Fraction(1, 90000)
        packets += [Packet(bytes(p), int(p.pts), p.is_keyframe) for p in codec.encode(picture)]
    packets += [Packet(bytes(p), int(p.pts), p.is_keyframe) for p in codec.encode(None)]
    return packets


def frame_message(source_id: str, seq: int, packet: Packet) -> FrameMessage:
    return FrameMessage(
        source_id=source_id,
        seq=seq,
        pts_seconds=packet.pts / 90000,
        keyframe=packet.keyframe,
        payload=PacketPayload(
            codec="h264", width=128, height=96, time_base=(1, 90000), pts=packet.pts
        ),
    )


class Replayer:
    """Publishes ``cameras`` sources on a thread, each looping the clip with increasing
    seqs and pts at ``fps`` (all cameras in step), until :meth:`stop`. Records what was
    acknowledged (and what may have been) in ``accounting``."""

    def __init__(
        self,
        url: str | list[str],
        layout: Layout,
        cameras: list[str],
        accounting: Accounting,
        *,
        fps: float = 30.0,
        frames: int = 60,
    ) -> None:
        self.url, self.layout, self.cameras, self.fps = url, layout, cameras, fps
        self.accounting = accounting
        self.packets = h264_packets(frames)
        self.sent = 0
        self.acknowledged_at: list[float] = []
        """When each acknowledgement came (time.monotonic()), in arrival order."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Replayer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _acknowledged(self, future: asyncio.Future[bool | None]) -> None:
        if not future.cancelled() and future.exception() is None and future.result():
            self.acknowledged_at.append(time.monotonic())

    async def _run(self) -> None:
        connection = await connect(self.url)
        publisher = Publisher(connection, self.layout, max_in_flight=256, ack_timeout_seconds=3)
        waiting: list[tuple[str, int, asyncio.Future[bool | None]]] = []
        started = time.monotonic()
        seq = 0
        try:
            while not self._stop.is_set():
                delay = started + seq / self.fps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                packet = self.packets[seq % len(self.packets)]
                looped = Packet(
                    packet.data,
                    packet.pts + 3000 * len(self.packets) * (seq // len(self.packets)),
                    packet.keyframe,
                )
                for camera in self.cameras:
                    message = frame_message(camera, seq, looped)
                    future = asyncio.ensure_future(
                        publisher.publish(message, looped.data, wait=True)
                    )
                    future.add_done_callback(self._acknowledged)
                    waiting.append((camera, seq, future))
                seq += 1
                self.sent = seq
            for camera, number, future in waiting:
                try:
                    stored = await future
                except Exception:
                    stored = False
                self.accounting.published(camera, [number], acknowledged=bool(stored))
        finally:
            await publisher.close()
            await close_quietly(connection)


@dataclass
class Collector:
    """Subscribes to results and drop records; feeds ``accounting`` (results pass a sink's
    fence first, like ``torchstream sink --nats``)."""

    url: str | list[str]
    layout: Layout
    accounting: Accounting
    results: list[tuple[float, ResultRecord]] = field(default_factory=list)
    drops: list[DropRecord] = field(default_factory=list)
    drop_claims: list[tuple[str, int, float]] = field(default_factory=list)
    """The (worker, claim epoch, arrival time) of each of ``drops``, in the same order
    (read while the collector runs, one may lack its partner yet: zip without strict)."""
    fenced: int = 0
    """Results dropped by the sink's fence: an older claim (epoch) than the newest seen."""
    fenced_from: collections.Counter[str] = field(default_factory=collections.Counter)
    """``fenced`` by worker."""
    stale_duplicates: int = 0
    """Results dropped by the sink's fence: at or below the last seq admitted for the source
    (a stale owner's result that raced behind the new owner's)."""
    ready: set[str] = field(default_factory=set)
    """Workers whose last heartbeat said ready."""

    def __post_init__(self) -> None:
        from torchstream.nats._fence import Fence

        self._fence = Fence()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def workers_of(self, source_id: str) -> list[str]:
        return [r.worker_id for _, r in self.results if r.source_id == source_id]

    def story(self, source_id: str, seqs: set[int], *, since: float, around: int = 2) -> str:
        """Every result and drop record of ``source_id`` at or near ``seqs``, in arrival
        order (times in seconds after ``since``): what a failed check needs to explain
        itself."""
        near = {n for seq in seqs for n in range(seq - around, seq + around + 1)}
        events = [
            (t, f"#{r.seq} result {r.worker_id}/{r.epoch}")
            for t, r in self.results
            if r.source_id == source_id and r.seq in near
        ]
        events += [
            (t, f"#{d.first_seq}..{d.last_seq} {d.reason} {worker}/{epoch}")
            for d, (worker, epoch, t) in zip(self.drops, self.drop_claims, strict=False)
            if d.source_id == source_id and near.intersection(d.seqs())
        ]
        return f"{source_id} {sorted(seqs)}: " + "; ".join(
            f"{t - since:+.2f} {text}" for t, text in sorted(events)
        )

    def drops_from(self, worker_id: str, reason: str) -> list[tuple[int, DropRecord]]:
        """(claim epoch, record) of each drop record ``worker_id`` sent for ``reason``."""
        return [
            (epoch, record)
            for record, (worker, epoch, _) in zip(self.drops, self.drop_claims, strict=False)
            if worker == worker_id and record.reason == reason
        ]

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connection = await connect(self.url)
        prefix = self.layout.prefix

        async def on_result(message: object) -> None:
            subject = message.subject  # type: ignore[attr-defined]
            headers = message.headers or {}  # type: ignore[attr-defined]
            decoded = decode(subject, headers, message.data).message  # type: ignore[attr-defined]
            if not isinstance(decoded, ResultMessage):
                return
            record = ResultRecord(
                decoded.source_id, decoded.seq, headers[WORKER_HEADER], int(headers[EPOCH_HEADER])
            )
            verdict = self._fence.check(
                partition=int(headers[PARTITION_HEADER]),
                epoch=record.epoch,
                worker_id=record.worker_id,
                source_id=record.source_id,
                seq=record.seq,
            )
            if verdict == "fenced":
                self.fenced += 1
                self.fenced_from[record.worker_id] += 1
                return
            if verdict == "duplicate":
                self.stale_duplicates += 1
                return
            self.results.append((time.monotonic(), record))
            self.accounting.result(record)

        async def on_drop(message: object) -> None:
            body = json.loads(message.data)  # type: ignore[attr-defined]
            record = DropRecord(
                body["source_id"], body["first_seq"], body["last_seq"], body["reason"]
            )
            self.drops.append(record)
            claim = (str(body.get("worker")), int(body.get("epoch", -1)), time.monotonic())
            self.drop_claims.append(claim)
            self.accounting.drop(record)

        async def on_heartbeat(message: object) -> None:
            beat = json.loads(message.data)  # type: ignore[attr-defined]
            if beat["ready"]:
                self.ready.add(beat["worker"])
            else:
                self.ready.discard(beat["worker"])

        await connection.subscribe(f"{prefix}.workers.heartbeat", cb=on_heartbeat)
        await connection.subscribe(f"{prefix}.out.*", cb=on_result)
        await connection.subscribe(f"{prefix}.drop.*", cb=on_drop)
        await connection.flush()
        self._ready.set()
        await self._stop.wait()
        await close_quietly(connection)


IDENTITY_PIPELINE = '''
"""An identity pipeline for the fault suite: one cheap stage that marks each frame. A slow
worker: ``--delay-ms`` per frame, or the number of milliseconds written in the file
``--delay-file`` (read at every batch, so a test can slow the worker down and let it
catch up again). Frames held in flight on demand: while the file ``--hold-file`` exists,
the stage holds the batch it has, after listing its frames ("<source id> <seq> <claim
epoch>" lines) in ``<hold file>.held``."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from torchstream import PipelineSpec


@dataclass
class Options:
    delay_ms: float = 0.0
    delay_file: str = ""
    hold_file: str = ""


class Mark:
    name = "mark"

    def __init__(self, options):
        self.delay_seconds = options.delay_ms / 1000 if options else 0.0
        self.delay_file = Path(options.delay_file) if options and options.delay_file else None
        self.hold_file = Path(options.hold_file) if options and options.hold_file else None

    def process(self, frames):
        if self.hold_file is not None and self.hold_file.exists():
            listing = Path(f"{self.hold_file}.held")
            partial = Path(f"{self.hold_file}.held.partial")
            epochs = [getattr(f.__dict__.get("_original"), "epoch", -1) for f in frames]
            partial.write_text(
                "".join(f"{f.source_id} {f.seq} {e}\\n" for f, e in zip(frames, epochs))
            )
            os.replace(partial, listing)  # seen whole or not at all
            while self.hold_file.exists():
                time.sleep(0.005)
        delay = self.delay_seconds
        if self.delay_file is not None:
            try:
                delay = float(self.delay_file.read_text() or 0) / 1000
            except (OSError, ValueError):
                pass
        if delay:
            time.sleep(delay * len(frames))
        for frame in frames:
            frame.attributes["test.marked"] = True


def build(config, options):
    return PipelineSpec(stages=[Mark(options)])
'''


def start_worker(
    url: str, pipeline: Path, worker_id: str, *extra: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``torchstream worker`` as a subprocess (stopped by the caller, by pid)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    command = [sys.executable, "-m", "torchstream.cli", "worker", str(pipeline), "--nats", url,
               "--worker-id", worker_id, "--log-level", "info", *extra]
    if log is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_seconds: float = 20.0
) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


def wait_for(condition: object, timeout_seconds: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def iter_unique(values: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value
