"""The NATS control plane at 1,000 cameras on this machine: ownership, order, accounting.

    python3 benchmarks/nats_scale.py [--cameras 1000] [--fps 3] [--size 2000] [--partitions 64]
                                     [--workers 3] [--publishers 4] [--seconds 60] [--record]

Starts its own nats-server (file store) and creates the layout (``--partitions``, default pin
timeout and ack wait, results kept in the results stream); starts ``--workers`` ``torchstream
worker`` subprocesses with a trivial pipeline (one stage that marks each frame); waits until
each has joined and the partitions have settled; then ``--publishers`` processes publish the
cameras (split between them) for ``--seconds``, each camera ``--fps`` JPEG images of about
``--size`` bytes a second, paced evenly, each publish's ack reported to its publisher
(``on_stored``). This process listens to everything the workers publish (results behind a
sink's epoch fence, drop records) and checks, per camera:

- ownership: one worker at a time: once a result of a newer claim (epoch) of the camera's
  partition has arrived, no result of an older claim or another worker's equal claim does
  (the sink's fence would drop it: counted as ``fenced``); ``moves`` counts owner changes;
- order and accounting: :class:`~torchstream.nats._accounting.Accounting` (every
  acknowledged frame processed once or counted as dropped, results in seq order).

The data plane (``--video CLIP --pipeline driving --worker-args "--device cuda ..."``): the
publishers replay real H.264 instead, every camera looping ``CLIP`` re-encoded as a camera
would send it (``--video-size``, 30 frames a keyframe, no B-frames) at ``--fps``, and the
workers run a real pipeline (a bundled sample or a file, with its options in
``--worker-args``) that decodes and infers.

It prints msgs/s and MB/s (frames acknowledged by JetStream, results received), the publish
→ result latency (p50/p99, wall clock: publisher and sink share this machine's clock), the
partitions each worker owns at the end, and the invariant report. Server, publishers,
workers and checker share this machine's cores: the data plane (decoding, models) is
benchmarked elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
from _clips import camera_clip
from _report import report

from torchstream.frame import Frame
from torchstream.nats import Layout, Publisher, connect, decode, init_layout
from torchstream.nats._accounting import Accounting, ResultRecord
from torchstream.nats._connection import close_quietly
from torchstream.nats._fence import Fence
from torchstream.nats._ledger import DropRecord
from torchstream.nats._tickets import EPOCH_HEADER, PARTITION_HEADER, WORKER_HEADER
from torchstream.testing import NatsServer
from torchstream.transport import FrameMessage, ImagePayload, ResultMessage

REPO = Path(__file__).resolve().parents[1]
STEADY_AFTER_SECONDS = 10.0
"""Latency is also reported without the frames published in the first seconds (start-up:
CUDA graphs captured, decoders opened, partitions settling)."""
SENT = "bench.sent"
"""The attribute in which a publisher writes its wall-clock time of publishing."""

PIPELINE = '''
"""A trivial pipeline: one stage that marks each frame."""
from torchstream import PipelineSpec


class Mark:
    name = "mark"

    def process(self, frames):
        for frame in frames:
            frame.attributes["bench.marked"] = True


def build(config, options):
    return PipelineSpec(stages=[Mark()])
'''


# -- publishers (processes) -------------------------------------------------------------------


def _jpeg(size: int) -> bytes:
    """A noise JPEG of about ``size`` bytes."""
    import torch

    from torchstream.sinks._images import encode_picture

    side = 8
    generator = torch.Generator().manual_seed(0)
    while True:
        rgb = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=generator)
        data = encode_picture(rgb, "jpg")
        if len(data) >= size or side >= 512:
            return data
        side += 4


def _paced(url: str, cameras: list[str], fps: float, seconds: float, start_at: float,
           results: Any, frame: Any) -> None:
    """One publisher process: ``cameras`` at ``fps`` each (staggered over a frame interval),
    for ``seconds`` from the wall clock ``start_at``, each message and payload made by
    ``frame(camera, seq)``; then every camera ends (an end of stream: decoders give up the
    pictures they still hold). Puts ``{camera: (acknowledged seqs, unknown seqs)}`` on
    ``results``."""
    layout = Layout()

    async def run() -> dict[str, tuple[list[int], list[int]]]:
        connection = await connect(url, name="bench-publisher")
        publisher = Publisher(connection, layout, max_in_flight=8192, ack_timeout_seconds=10)
        outcome: dict[str, tuple[list[int], list[int]]] = {c: ([], []) for c in cameras}

        def answered(camera: str, seq: int, stored: bool) -> None:
            outcome[camera][0 if stored else 1].append(seq)

        interval = 1 / (fps * len(cameras))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = n * interval
            if due > elapsed:
                await asyncio.sleep(due - elapsed)
            camera, seq = cameras[n % len(cameras)], n // len(cameras)
            message, payload = frame(camera, seq)
            try:
                await publisher.publish(message, payload,
                                        on_stored=functools.partial(answered, camera, seq))
            except Exception:
                answered(camera, seq, False)
            n += 1
        while not await publisher.flush():  # every answer in, or timed out
            pass
        await asyncio.gather(*(
            publisher.end(camera, last_seq=max(seqs[0] + seqs[1], default=None))
            for camera, seqs in outcome.items()
        ))
        await publisher.close()
        await close_quietly(connection)
        return outcome

    results.put(asyncio.run(run()))


def _publish(url: str, cameras: list[str], fps: float, size: int, seconds: float,
             start_at: float, results: Any) -> None:
    """Noise JPEGs of about ``size`` bytes (the control plane)."""
    image = _jpeg(size)

    def frame(camera: str, seq: int) -> tuple[FrameMessage, bytes]:
        return FrameMessage(
            source_id=camera, seq=seq, pts_seconds=seq / fps,
            payload=ImagePayload(format="jpeg"),
            metadata=Frame(source_id=camera, seq=seq, width=40, height=40,
                           attributes={SENT: time.time()}),
        ), image

    _paced(url, cameras, fps, seconds, start_at, results, frame)


def _clip_packets(clip: Path) -> list[Any]:
    from torchstream.codecs._pyav import demux_packets

    return list(demux_packets(str(clip), source_id="clip"))


def _publish_video(url: str, cameras: list[str], fps: float, clip: str, seconds: float,
                   start_at: float, results: Any) -> None:
    """``clip``'s H.264 packets, looped with growing pts, for each camera (the data plane)."""
    from torchstream.transport import PacketPayload

    packets = _clip_packets(Path(clip))
    span = len(packets)

    def frame(camera: str, seq: int) -> tuple[FrameMessage, bytes]:
        packet = packets[seq % span]
        pts = (packet.pts or 0) + (seq // span) * span * 3000  # 1/90000 s at 30 fps
        time_base = packet.time_base
        return FrameMessage(
            source_id=camera, seq=seq, pts_seconds=seq / fps, keyframe=packet.keyframe,
            payload=PacketPayload(
                codec=packet.codec, width=packet.width, height=packet.height,
                time_base=(time_base.numerator, time_base.denominator) if time_base
                else (1, 90000),
                pts=pts,
            ),
            metadata=Frame(source_id=camera, seq=seq, width=packet.width,
                           height=packet.height, attributes={SENT: time.time()}),
        ), packet.data

    _paced(url, cameras, fps, seconds, start_at, results, frame)


# -- the checker (this process) ---------------------------------------------------------------


class Checker:
    """Listens to results, drop records and heartbeats on a thread; feeds an Accounting."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accounting = Accounting()
        self.fence = Fence()
        self.latencies: list[float] = []
        self.steady: list[float] = []
        """Latencies of frames published after ``steady_after`` (wall clock)."""
        self.steady_after = math.inf
        self.results = 0
        self.fenced = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.ready: set[str] = set()
        self.owner: dict[int, str] = {}  # partition -> worker of its last result
        self.last: dict[str, tuple[str, int]] = {}  # camera -> (worker, epoch) of last result
        self.moves = 0
        self.trail: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
        """Per camera, everything heard about it in arrival order (--trail)."""
        self.ownership_violations: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Checker:
        self._thread.start()
        if not self._started.wait(20):
            raise SystemExit("the checker could not subscribe")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _on_result(self, message: Any) -> None:
        now = time.time()
        headers = message.headers or {}
        decoded = decode(message.subject, headers, message.data).message
        if not isinstance(decoded, ResultMessage):
            return
        worker, epoch = headers[WORKER_HEADER], int(headers[EPOCH_HEADER])
        partition = int(headers[PARTITION_HEADER])
        camera = decoded.frame.source_id
        verdict = self.fence.check(partition=partition, epoch=epoch, worker_id=worker,
                                   source_id=camera, seq=decoded.frame.seq)
        if verdict is not None:
            self.trail[camera].append((verdict, decoded.frame.seq, worker, epoch, partition))
        if verdict == "fenced":
            # A sink drops the result of a superseded claim and counts it: for this sink the
            # frame is lost, counted (unless its new owner processes it again).
            self.fenced += 1
            self.accounting.drop(DropRecord(camera, decoded.frame.seq, decoded.frame.seq,
                                            "fenced"))
            return
        if verdict is not None:  # a stale copy of a frame that already has its result
            return
        previous = self.last.get(camera)
        if previous is not None and previous[0] != worker:
            self.moves += 1
            if epoch <= previous[1]:  # another worker without a newer claim: two owners
                self.ownership_violations.append(
                    f"{camera}: {worker}@{epoch} after {previous[0]}@{previous[1]}")
        self.last[camera] = (worker, epoch)
        self.owner[partition] = worker
        self.results += 1
        sent = decoded.frame.attributes.get(SENT)
        if isinstance(sent, float):
            self.latencies.append(now - sent)
            if sent >= self.steady_after:
                self.steady.append(now - sent)
        self.accounting.result(ResultRecord(camera, decoded.frame.seq, worker, epoch))
        self.trail[camera].append(("result", decoded.frame.seq, worker, epoch, partition))

    def _on_drop(self, message: Any) -> None:
        body = json.loads(message.data)
        record = DropRecord(body["source_id"], body["first_seq"], body["last_seq"],
                            body["reason"])
        self.drops[record.reason] += record.frames
        self.accounting.drop(record)
        self.trail[record.source_id].append(
            ("drop:" + record.reason, record.first_seq, record.last_seq, body.get("worker"),
             body.get("epoch")))

    def _on_heartbeat(self, message: Any) -> None:
        beat = json.loads(message.data)
        (self.ready.add if beat["ready"] else self.ready.discard)(beat["worker"])

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connection = await connect(self.url, name="bench-checker")

        def sync(handler: Any) -> Any:
            async def callback(message: Any) -> None:
                handler(message)
            return callback

        await connection.subscribe("ts.out.*", cb=sync(self._on_result),
                                   pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
        await connection.subscribe("ts.drop.*", cb=sync(self._on_drop))
        await connection.subscribe("ts.workers.heartbeat", cb=sync(self._on_heartbeat))
        await connection.flush()
        self._started.set()
        await self._stop.wait()
        await close_quietly(connection)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far; 0 once it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each role's processes use between :meth:`begin` and :meth:`end`."""

    def __init__(self, roles: dict[str, list[int | None]]) -> None:
        self.roles = roles
        self.used: collections.Counter[str] = collections.Counter()

    def begin(self) -> None:
        for role, pids in self.roles.items():
            self.used[role] -= sum(_cpu_seconds(pid) for pid in pids)

    def end(self) -> None:
        for role, pids in self.roles.items():
            self.used[role] += sum(_cpu_seconds(pid) for pid in pids)


async def _consumers(url: str, layout: Layout) -> dict[int, Any]:
    from torchstream.nats._jsapi import JetStreamApi

    connection = await connect(url, name="bench-consumers")
    api = JetStreamApi(connection)
    states: dict[int, Any] = {}
    for partition in range(layout.partitions):
        info = await api.consumer_info(layout.input_stream, layout.consumer_name(partition))
        if info is not None:
            states[partition] = {key: info.get(key) for key in (
                "num_pending", "num_ack_pending", "num_redelivered", "num_waiting",
                "delivered", "ack_floor", "priority_groups")}
    await close_quietly(connection)
    return states


def _wait(condition: Any, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=1000)
    parser.add_argument("--fps", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=2000, help="bytes per image (about)")
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--video", type=Path, default=None,
                        help="data plane: replay this clip's H.264 (re-encoded) per camera")
    parser.add_argument("--video-size", default="1920x1080", help="with --video: WxH")
    parser.add_argument("--pipeline", default=None,
                        help="the workers' pipeline (a bundled sample or a file; default: one "
                             "stage that marks each frame)")
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="how long the workers get to catch up after publishing stops")
    parser.add_argument("--worker-args", default="",
                        help="more options for each `torchstream worker` (one string)")
    parser.add_argument("--trail", type=Path, default=None,
                        help="write what the checker heard about each failing camera here")
    parser.add_argument("--logs", type=Path, default=None,
                        help="copy the workers' and the server's logs into this folder")
    args = parser.parse_args()
    for name in ("cameras", "workers", "publishers", "partitions"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")

    cameras = [f"cam-{i:04d}" for i in range(args.cameras)]
    layout = Layout(partitions=args.partitions)
    processes: list[subprocess.Popen[bytes]] = []
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="nats-scale-") as folder:
        async def init() -> None:
            connection = await connect(server.url)
            await init_layout(connection, layout)
            await close_quietly(connection)

        asyncio.run(init())
        pipeline = Path(folder) / "mark.py"
        pipeline.write_text(PIPELINE)
        if args.pipeline is not None:
            pipeline = args.pipeline
        clip = None
        if args.video is not None:
            width, _, height = args.video_size.partition("x")
            clip = camera_clip(args.video, Path(folder) / "camera.mp4",
                               size=(int(width), int(height)), frames=150)
            sizes = [len(p.data) for p in _clip_packets(clip)]
            payload_bytes = sum(sizes) / len(sizes)
        else:
            payload_bytes = float(len(_jpeg(args.size)))
        checker = Checker(server.url).start()
        # This checkout's package first, then what the caller's path has (on a GPU machine the
        # unpacked wheels: PyAV, nats-py).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
        try:
            for n in range(args.workers):
                log = open(Path(folder) / f"w{n + 1}.log", "wb")  # noqa: SIM115 (child keeps it)
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "torchstream.cli", "worker", str(pipeline),
                     "--nats", server.url, "--worker-id", f"w{n + 1}", "--log-level", "warning",
                     *shlex.split(args.worker_args)],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                ))
            def joined() -> bool:
                for n, process in enumerate(processes):
                    if process.poll() is not None:  # it died: say why, not "timed out"
                        log = (Path(folder) / f"w{n + 1}.log").read_text(errors="replace")
                        raise SystemExit(f"worker w{n + 1} exited ({process.returncode}):\n"
                                         f"{log[-4000:]}")
                return len(checker.ready) >= args.workers

            _wait(joined, 300, "the workers to join")
            time.sleep(3.0)  # the partitions settle (a few heartbeat intervals)

            context = multiprocessing.get_context("spawn")
            outcomes = context.Queue()
            start_at = time.time() + 3.0  # the publishers' imports and connections first
            checker.steady_after = start_at + STEADY_AFTER_SECONDS
            share = [cameras[i :: args.publishers] for i in range(args.publishers)]
            publishers = [
                context.Process(target=_publish, args=(
                    server.url, part, args.fps, args.size, args.seconds, start_at, outcomes))
                if clip is None else
                context.Process(target=_publish_video, args=(
                    server.url, part, args.fps, str(clip), args.seconds, start_at, outcomes))
                for part in share if part
            ]
            for process in publishers:
                process.start()
            # CPU by role while the publishers publish (their start-up left out).
            cpu = CpuMeter({
                "nats-server": [server.pid], "checker": [os.getpid()],
                "workers": [p.pid for p in processes],
                "publishers": [p.pid for p in publishers],
            })
            for at, action in ((start_at + 0.5, cpu.begin), (start_at + args.seconds, cpu.end)):
                threading.Timer(max(0.0, at - time.time()), action).start()
            published: dict[str, tuple[list[int], list[int]]] = {}
            for _ in publishers:
                published.update(outcomes.get(timeout=args.seconds + 120))
            for process in publishers:
                process.join(30)
            acknowledged = sum(len(a) for a, _ in published.values())
            for camera, (acked, unknown) in published.items():
                checker.accounting.published(camera, acked)
                checker.accounting.published(camera, unknown, acknowledged=False)

            def caught_up() -> bool:
                return all(not s.unaccounted for s in checker.accounting.report().sources)

            drained = time.monotonic()
            try:
                _wait(caught_up, args.drain_seconds, "the workers to catch up")
            except SystemExit as exc:
                print(exc)
            drain_seconds = time.monotonic() - drained
            if args.trail is not None:  # the consumers' state, to explain frames left over
                consumers = asyncio.run(_consumers(server.url, layout))
                (args.trail.parent / (args.trail.stem + "-consumers.json")).write_text(
                    json.dumps(consumers))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            checker.stop()
            stalls = {
                f"w{n + 1}": (Path(folder) / f"w{n + 1}.log").read_text(errors="replace")
                .count(": stalled ")
                for n in range(args.workers)
            }
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for n in range(args.workers):
                    shutil.copy(Path(folder) / f"w{n + 1}.log", args.logs / f"w{n + 1}.log")
                if server.log_path.exists():
                    shutil.copy(server.log_path, args.logs / "nats-server.log")

    accounting = checker.accounting.report()
    # Unaccounted seqs above everything decided for their camera are a backlog the workers
    # had not reached when the run ended (overload), not frames lost silently.
    decided: dict[str, int] = {}
    for source in accounting.sources:
        decided[source.source_id] = -1
    for camera, seqs in checker.accounting._results.items():
        decided[camera] = max(decided.get(camera, -1), max(seqs, default=-1))
    for camera, records in checker.accounting._drops.items():
        decided[camera] = max(decided.get(camera, -1), *(r.last_seq for r in records))
    backlog = sum(1 for s in accounting.sources for q in s.unaccounted if q > decided[s.source_id])
    silent = sum(len(s.unaccounted) for s in accounting.sources) - backlog
    per_worker = collections.Counter(checker.owner.values())
    lost = collections.Counter[str]()
    for source in accounting.sources:
        lost.update(source.lost)
    in_rate = acknowledged / args.seconds
    out_rate = checker.results / args.seconds
    ok = accounting.ok and not checker.ownership_violations
    others = sum(len(s.duplicates) + len(s.out_of_order) + len(s.unpublished)
                 for s in accounting.sources)
    plane = "data plane" if clip is not None else "control plane"
    what = (f"H.264 {args.video_size} of {payload_bytes / 1e3:.1f} KB a frame on average "
            f"({args.video.name} re-encoded: 30 frames a keyframe, no B-frames)"
            if clip is not None else f"JPEG of {payload_bytes:.0f} bytes")
    card = ""
    if clip is not None:
        with contextlib.suppress(Exception):
            import torch

            card = f" — {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    extra = "".join(
        f" --{name} {value}" for name, value in (
            ("video", args.video and args.video.name), ("video-size", clip and args.video_size),
            ("pipeline", args.pipeline),
            ("drain-seconds", args.drain_seconds != 60.0 and f"{args.drain_seconds:g}")) if value
    ) + (f" --worker-args '{args.worker_args}'" if args.worker_args else "")
    lines = [
        f"### NATS {plane}, {args.cameras} cameras — {platform.node() or 'this machine'}{card} "
        f"— {datetime.date.today().isoformat()}",
        "",
        f"{os.cpu_count()} CPUs shared by nats-server, {len(publishers)} publisher processes, "
        f"{args.workers} `torchstream worker` processes ({args.pipeline or 'trivial pipeline'}) "
        f"and the checker; {args.partitions} partitions, {args.fps:g} frames/s per camera, "
        f"{what}, {args.seconds:g} s of publishing; workers caught up "
        f"{drain_seconds:.1f} s after the publishers stopped.",
        f"Command: `python3 benchmarks/nats_scale.py --cameras {args.cameras} --fps {args.fps:g} "
        f"--workers {args.workers} --publishers {args.publishers} --seconds {args.seconds:g}"
        f"{extra}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| frames acknowledged (published) | {acknowledged} ({in_rate:.0f} msgs/s, "
        f"{in_rate * payload_bytes / 1e6:.2f} MB/s) |",
        f"| results received | {checker.results} ({out_rate:.0f} msgs/s) |",
        f"| publish → result latency p50 / p99 | {_percentile(checker.latencies, 0.5) * 1e3:.0f}"
        f" ms / {_percentile(checker.latencies, 0.99) * 1e3:.0f} ms |",
        f"| the same after the first {STEADY_AFTER_SECONDS:g} s of publishing (warm-up left out)"
        f" | {_percentile(checker.steady, 0.5) * 1e3:.0f} ms / "
        f"{_percentile(checker.steady, 0.99) * 1e3:.0f} ms |",
        "| partitions per worker (owner of each partition's last result) | "
        + ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items())) + " |",
        f"| owner changes / ownership violations / fenced at the sink | {checker.moves} / "
        f"{len(checker.ownership_violations)} / {checker.fenced} |",
        f"| frames lost (counted, by reason) | {sum(lost.values())} "
        f"({', '.join(f'{r} {n}' for r, n in sorted(lost.items())) or 'none'}) |",
        f"| not processed when the run ended: backlog / lost silently (holes) | {backlog} / "
        f"{silent} |",
        f"| duplicates + out of order + unpublished | {others} |",
        "| worker stalls (fenced itself) | "
        + ", ".join(f"{w} {n}" for w, n in stalls.items()) + " |",
        "| CPU while publishing, by role (cores) | " + ", ".join(
            f"{role} {used / (args.seconds - 0.5):.2f}" for role, used in cpu.used.items()
        ) + " |",
        "| CPU per 1,000 frames, by role (ms) | " + ", ".join(
            f"{role} {used * 1e6 / max(1, acknowledged):.0f}" for role, used in cpu.used.items()
        ) + " |",
        f"| invariants (accounting, order, no duplicate, one owner) | "
        f"{'OK' if ok else 'FAILED'} ({len(accounting.sources)} cameras) |",
    ]
    report(lines, record=args.record)
    if args.trail is not None:
        failing = [src.source_id for src in accounting.sources if not src.ok][:20]
        args.trail.write_text(json.dumps({
            camera: {"unaccounted": list(next(
                src.unaccounted for src in accounting.sources if src.source_id == camera)),
                "trail": checker.trail[camera]}
            for camera in failing
        }))
    if not ok:
        for line in (*accounting.violations()[:20], *checker.ownership_violations[:20]):
            print("VIOLATION", line)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
