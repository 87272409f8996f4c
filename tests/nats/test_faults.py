"""The fault suite: real ``torchstream worker`` processes and a real nats-server, started and
stopped by pid; a publisher replaying an H.264 clip; every run checked by the accounting
(published = processed + counted drops, no duplicate, no result out of order)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.nats._helpers import (
    IDENTITY_PIPELINE,
    Collector,
    Replayer,
    start_worker,
    stop_process,
    wait_for,
)

from torchstream.nats import Layout, connect, init_layout
from torchstream.nats._accounting import Accounting, AccountingReport
from torchstream.nats._connection import close_quietly
from torchstream.testing import NatsCluster, NatsServer

PIN_TIMEOUT_SECONDS = 0.5
LAYOUT = Layout(partitions=8, pin_timeout_seconds=PIN_TIMEOUT_SECONDS, ack_wait_seconds=2.0)
CAMERAS = [f"cam-{n}" for n in range(6)]
FPS = 15.0


def _init(url: str | list[str], layout: Layout = LAYOUT) -> None:
    async def main() -> None:
        connection = await connect(url)
        await init_layout(connection, layout)
        await close_quietly(connection)

    asyncio.run(main())


class Deployment:
    """Workers (subprocesses), a collector and a replayer around one server."""

    def __init__(self, url: str | list[str], tmp_path: Path, *,
                 collector_url: str | None = None) -> None:
        self.url = url if isinstance(url, str) else ",".join(url)
        self.tmp_path = tmp_path
        self.pipeline = tmp_path / "identity.py"
        self.pipeline.write_text(IDENTITY_PIPELINE)
        self.accounting = Accounting()
        self.collector = Collector(collector_url or url, LAYOUT, self.accounting).start()
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.replayer: Replayer | None = None

    def add(self, worker_id: str, *extra: str, url: str | None = None
            ) -> subprocess.Popen[bytes]:
        process = start_worker(url or self.url, self.pipeline, worker_id, *extra,
                               log=self.tmp_path / f"{worker_id}.log")
        self.workers[worker_id] = process
        assert wait_for(lambda: worker_id in self.collector.ready, 60), self.log(worker_id)
        return process

    def log(self, worker_id: str) -> str:
        path = self.tmp_path / f"{worker_id}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def replay(self) -> Replayer:
        self.replayer = Replayer(self.url.split(","), LAYOUT, CAMERAS, self.accounting,
                                 fps=FPS).start()
        assert wait_for(lambda: {r.source_id for _, r in self.collector.results}
                        >= set(CAMERAS), 30), "no results"
        return self.replayer

    def owner_of(self, camera: str) -> str:
        return [r.worker_id for _, r in self.collector.results if r.source_id == camera][-1]

    def finish(self) -> None:
        """Stop publishing, let the workers catch up, stop them, check the accounting."""
        assert self.replayer is not None
        self.replayer.stop()
        expected = self.replayer.sent

        def caught_up() -> bool:
            report = self.accounting.report()
            return all(not s.unaccounted for s in report.sources)

        started = time.monotonic()
        if wait_for(caught_up, 10):
            print(f"caught up {time.monotonic() - started:.1f} s after publishing stopped")
        else:
            behind = {s.source_id: len(s.unaccounted) for s in self.accounting.report().sources}
            print(f"NOT caught up 10 s after publishing stopped: unaccounted {behind}")
        for process in self.workers.values():
            stop_process(process)
        self.collector.stop()
        assert expected > 0

    def close(self) -> None:
        for process in self.workers.values():
            stop_process(process, signal.SIGKILL, 5)
        self.collector.stop()
        if self.replayer is not None:
            self.replayer.stop()


@pytest.fixture
def deployment(server: NatsServer, tmp_path: Path) -> Iterator[Deployment]:
    _init(server.url)
    running = Deployment(server.url, tmp_path)
    try:
        yield running
    finally:
        running.close()


def _arrivals(collector: Collector, camera: str) -> list[tuple[float, str, int]]:
    return [(t, r.worker_id, r.seq) for t, r in collector.results if r.source_id == camera]


def _first_after(collector: Collector, camera: str, moment: float, not_worker: str
                 ) -> float | None:
    for t, worker, _ in _arrivals(collector, camera):
        if t > moment and worker != not_worker:
            return t
    return None


def test_sigkill_a_worker(deployment: Deployment) -> None:
    for name in ("w1", "w2", "w3"):
        deployment.add(name)
    deployment.replay()
    time.sleep(1.0)
    victim = deployment.owner_of(CAMERAS[0])
    moved = [c for c in CAMERAS if deployment.owner_of(c) == victim]
    killed_at = time.monotonic()
    deployment.workers[victim].kill()
    deployment.workers[victim].wait()
    # Past the takeover window: ack wait + pin timeout after the takeover.
    time.sleep(LAYOUT.ack_wait_seconds + 2 * PIN_TIMEOUT_SECONDS + 0.5)
    deployment.finish()
    takeovers = {c: _first_after(deployment.collector, c, killed_at, victim) for c in moved}
    print("takeover seconds:", {c: None if t is None else round(t - killed_at, 3)
                                for c, t in takeovers.items()})
    for camera, moment in takeovers.items():
        assert moment is not None, camera
        assert moment - killed_at <= PIN_TIMEOUT_SECONDS + 0.5 + 1 / FPS, camera
    report = deployment.accounting.report()
    print(report)
    assert report.ok, str(report)


def test_add_and_remove_a_worker_gracefully(deployment: Deployment) -> None:
    deployment.add("w1")
    deployment.add("w2")
    deployment.replay()
    time.sleep(1.0)
    joined_at = time.monotonic()
    deployment.add("w3")
    time.sleep(1.5)
    leaving = deployment.owner_of(CAMERAS[0])
    stop_process(deployment.workers.pop(leaving))
    time.sleep(1.5)
    deployment.finish()
    report = deployment.accounting.report()
    print(report)
    assert report.ok, str(report)
    assert sum(sum(s.lost.values()) for s in report.sources) == 0, str(report)
    gaps = []
    for camera in CAMERAS:
        times = [t for t, _, _ in _arrivals(deployment.collector, camera) if t > joined_at]
        gaps.append(max(b - a for a, b in itertools.pairwise(times)))
    print("largest gap per camera:", [round(g, 3) for g in gaps])
    assert max(gaps) < 0.5 + 1 / FPS


def test_sigstop_a_worker_for_3_seconds(deployment: Deployment, tmp_path: Path) -> None:
    # The victim is paused with frames in its pipeline, not by luck: its stage holds a batch
    # while a file exists and lists the frames it holds. Released during the pause, the
    # stage finishes them when the worker resumes: they must not go out as results.
    for name in ("w1", "w2"):
        deployment.add(name, "--hold-file", str(tmp_path / f"{name}.hold"))
    deployment.replay()
    time.sleep(1.0)
    collector = deployment.collector
    victim = deployment.owner_of(CAMERAS[0])
    hold, listing = tmp_path / f"{victim}.hold", tmp_path / f"{victim}.hold.held"
    hold.touch()
    assert wait_for(listing.exists, 10, interval=0.005), deployment.log(victim)
    process = deployment.workers[victim]
    process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    hold.unlink()
    held = {(s, int(n), int(e))
            for s, n, e in (line.split() for line in listing.read_text().splitlines())}
    # Its claims when it stopped: those of the frames it held and of its results so far.
    stale = {e for _, _, e in held} | {
        r.epoch for t, r in collector.results if r.worker_id == victim and t <= stopped_at
    }
    time.sleep(3.0)
    process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    time.sleep(LAYOUT.ack_wait_seconds + 2.0)
    deployment.finish()
    report = deployment.accounting.report()
    fenced_by_victim = collector.drops_from(victim, "fenced")
    print(report, f"held by {victim} when stopped: {sorted(held)}; its claims then: "
          f"{sorted(stale)}; fenced by {victim}: "
          f"{sorted((e, r.source_id, r.first_seq) for e, r in fenced_by_victim)}; "
          f"fenced at the sink: {dict(collector.fenced_from)} "
          f"(+{collector.stale_duplicates} stale duplicates)")
    assert report.ok, str(report)
    assert all(not s.out_of_order and not s.duplicates for s in report.sources), str(report)
    assert held and stale, (held, stale)
    assert "stalled" in deployment.log(victim)
    # Each frame it held went out as a drop record of its own, "fenced" under the claim it
    # was held for, never as a result (whoever produced a result for it, not the victim).
    fenced_seqs = {(r.source_id, seq, epoch) for epoch, r in fenced_by_victim
                   for seq in r.seqs()}
    assert held <= fenced_seqs, (held, fenced_by_victim, deployment.log(victim))
    assert not [r for _, r in collector.results
                if r.worker_id == victim and (r.source_id, r.seq, r.epoch) in held]
    # Nothing of its old claims reached the sink's consumers once it resumed (a result
    # that passed its check just before the pause is the sink's fence's to drop).
    late = [(t - resumed_at, r) for t, r in collector.results
            if r.worker_id == victim and r.epoch in stale and t > resumed_at]
    assert not late, late


def test_a_paused_worker_that_nobody_replaced_keeps_its_partitions(
    deployment: Deployment,
) -> None:
    # Alone, paused past its stall threshold and its pins' timeout: no other worker claimed
    # a partition meanwhile, so nothing it holds can come after another's results. It must
    # keep its partitions and lose nothing (a busy machine stalls workers like this).
    deployment.add("w1", "--delay-ms", "20")
    deployment.replay()
    time.sleep(1.0)
    process = deployment.workers["w1"]
    process.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    process.send_signal(signal.SIGCONT)
    time.sleep(1.5)
    deployment.finish()
    report = deployment.accounting.report()
    print(report)
    log = deployment.log("w1")
    assert report.ok, str(report)
    assert "stalled" in log and f"kept {LAYOUT.partitions} partitions, fenced 0" in log, log
    assert not any(s.lost for s in report.sources), str(report)  # not one frame lost


@pytest.mark.slow
def test_restart_the_server_with_its_file_store(
    server: NatsServer, deployment: Deployment
) -> None:
    deployment.add("w1")
    deployment.add("w2")
    deployment.replay()
    time.sleep(1.0)
    server.restart()
    assert wait_for(lambda: deployment.collector.ready >= {"w1", "w2"}, 20)
    time.sleep(LAYOUT.ack_wait_seconds + 2.0)
    deployment.finish()
    report = deployment.accounting.report()
    print(report)
    assert report.ok, str(report)
    assert all(s.processed > 0 for s in report.sources)


def test_blackhole_between_a_worker_and_the_server(
    server: NatsServer, deployment: Deployment
) -> None:
    from torchstream.testing import TcpProxy

    with TcpProxy("127.0.0.1", server.port) as proxy:
        deployment.add("w1", url=f"nats://{proxy.address}")
        deployment.add("w2")
        deployment.replay()
        time.sleep(1.0)
        proxy.blackhole()
        time.sleep(3.0)
        proxy.heal()
        time.sleep(LAYOUT.ack_wait_seconds + 3.0)
        deployment.finish()
    report = deployment.accounting.report()
    print(report, "fenced at the sink:", deployment.collector.fenced)
    assert report.ok, str(report)
    assert all(s.processed > 0 for s in report.sources)


ALLOWED_LOSSES = {
    "resync_keyframe", "failover_inflight", "failover_keyframe", "fenced", "result_unconfirmed"
}
"""Losses the cluster test allows: counted, and none an acknowledged frame missing from the
stream (a ``gap`` or a ``broker_discard``)."""


def _diagnostics(cluster: NatsCluster, deployment: Deployment, moments: dict[str, float]
                 ) -> str:
    """What a failure of the cluster test needs to explain itself: when things happened,
    what the workers counted, the end of every log."""
    start = moments.get("killed", 0.0)
    collector = deployment.collector
    drops = collections.Counter(
        (worker, record.reason, record.frames)
        for record, (worker, _, _) in zip(collector.drops, collector.drop_claims, strict=False)
    )
    lines = [
        "moments (s after the kill): "
        + ", ".join(f"{name} {t - start:+.1f}" for name, t in moments.items()),
        f"collector: {len(collector.results)} results, fenced {dict(collector.fenced_from)}, "
        f"{collector.stale_duplicates} stale duplicates, drop records (worker, reason, "
        f"frames): {dict(drops)}",
    ]
    # The seqs behind a failed check: unaccounted, or lost for a reason not allowed.
    for source in deployment.accounting.report().sources:
        suspect = set(source.unaccounted) | {
            seq for record in collector.drops
            if record.source_id == source.source_id and record.reason not in ALLOWED_LOSSES
            for seq in record.seqs()
        }
        if suspect:
            lines.append(collector.story(source.source_id, set(sorted(suspect)[:5]), since=start))
    for node in cluster.nodes:
        state = "running" if node.running else "down"
        # Without the survivors' retries to reach the dead node, once a second each.
        tail = [line for line in node.log_tail(400).splitlines()
                if "connect to route" not in line][-12:]
        lines.append(f"--- {node.name} {node.url} ({state}):\n" + "\n".join(tail))
    for worker in deployment.workers:
        lines.append(f"--- worker {worker}:\n{deployment.log(worker)[-1500:]}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_stream_leader_dies_in_a_3_node_cluster(
    cluster: NatsCluster, tmp_path: Path, how: str
) -> None:
    layout = replace(LAYOUT, replicas=3)
    _init(cluster.urls, layout)
    leader = cluster.stream_leader(layout.input_stream)
    assert leader is not None
    # The checking side listens on a node that stays up: results are plain messages to it,
    # and a listener that reconnects misses those sent meanwhile.
    other = next(url for url in cluster.urls if url != leader.url)
    deployment = Deployment(cluster.urls, tmp_path, collector_url=other)
    moments: dict[str, float] = {}

    def diagnostics() -> str:
        return _diagnostics(cluster, deployment, moments)

    try:
        deployment.add("w1")
        deployment.add("w2")
        deployment.replay()
        time.sleep(1.0)
        now_leading = cluster.stream_leader(layout.input_stream)
        assert now_leading is leader, f"the leader moved by itself to {now_leading}"
        moments["killed"] = killed_at = time.monotonic()
        if how == "SIGKILL":
            leader.kill()
        else:
            leader.stop()
        moments["down"] = time.monotonic()
        replayer = deployment.replayer
        assert replayer is not None
        # A SIGKILLed leader is replaced after the raft election timeout (4 to 9 s); the
        # publisher's acks stop meanwhile (those frames time out, unacknowledged) and come
        # back by themselves once the stream has a new leader.
        per_second = FPS * len(CAMERAS)

        def resumed() -> bool:
            acks = replayer.acknowledged_at
            return sum(1 for t in acks[-int(per_second):] if t > killed_at) >= per_second

        assert wait_for(resumed, 30), (
            f"no acks since the leader died: {replayer.sent} sent\n{diagnostics()}"
        )
        moments["resumed"], resumed_seq = time.monotonic(), replayer.sent
        new_leader = cluster.stream_leader(layout.input_stream)
        print(f"{how}: publishing resumed {moments['resumed'] - killed_at:.1f} s after, "
              f"new leader {new_leader}")
        assert new_leader is not None and new_leader is not leader, diagnostics()
        time.sleep(LAYOUT.ack_wait_seconds + 1.0)
        moments["finishing"] = time.monotonic()
        deployment.finish()
        moments["finished"] = time.monotonic()
    finally:
        deployment.close()
    report = deployment.accounting.report()
    print(report)
    # Every acknowledged frame processed or counted. A result a worker had sent to the
    # dying node went nowhere: the worker counts it (result_unconfirmed), as its frame,
    # redelivered, is a duplicate to it.
    assert report.ok, f"{report}\n{diagnostics()}"
    for source in report.sources:
        # No acknowledged frame went missing from the stream (that would show as a gap or a
        # broker discard). Frames after those lost unacknowledged during the election wait
        # for a keyframe; on a loaded machine a worker may also stall and fence itself, or
        # partitions move: those losses are counted and allowed here.
        assert set(source.lost) <= ALLOWED_LOSSES, f"{source}\n{diagnostics()}"
        seqs = [r.seq for _, r in deployment.collector.results if r.source_id == source.source_id]
        assert max(seqs) > resumed_seq, (
            f"{source.source_id}: nothing since publishing resumed\n{diagnostics()}"
        )


def test_a_slow_worker_loses_old_frames_to_the_stream_limits_and_counts_them(
    server: NatsServer, tmp_path: Path
) -> None:
    # Frames live 1 s in the stream. For 3 s the worker processes 25 frames a second of the
    # 90 published, 4 in flight per partition: the rest wait in the stream, which discards
    # those older than 1 s before the worker pulls them. Then it catches up. (The worker's
    # own shedding of late frames is off here: see the next test.)
    report = _slow_worker(server, tmp_path, "--max-frame-age-seconds", "1000")
    for source in report.sources:
        assert source.lost.get("broker_discard", 0) > 0, str(source)
        # Each hole is known as the broker's, never as a gap of unknown cause.
        assert set(source.lost) <= {"broker_discard", "resync_keyframe"}, str(source)
        assert source.processed > 0, str(source)


def test_a_slow_worker_sheds_its_late_frames_itself(server: NatsServer, tmp_path: Path) -> None:
    # The same slow worker with its default frame age (half the stream's 1 s): it drops
    # frames that waited over 0.5 s, counted `late`, each for an acknowledgement, before
    # the stream's limit removes them unseen.
    report = _slow_worker(server, tmp_path)
    for source in report.sources:
        assert source.lost.get("late", 0) > 0, str(source)
        assert set(source.lost) <= {"late", "resync_keyframe", "broker_discard"}, str(source)
        assert source.processed > 0, str(source)


def _slow_worker(server: NatsServer, tmp_path: Path, *worker_args: str) -> AccountingReport:
    layout = replace(LAYOUT, max_age_seconds=1.0, max_ack_pending=4)
    _init(server.url, layout)
    deployment = Deployment(server.url, tmp_path)
    delay = tmp_path / "delay-ms"
    try:
        deployment.add("w1", "--delay-file", str(delay), *worker_args)
        delay.write_text("40")
        deployment.replay()
        time.sleep(3.0)
        delay.write_text("0")
        time.sleep(2.0)
        deployment.finish()
    finally:
        deployment.close()
    report = deployment.accounting.report()
    print(report)
    assert report.ok, str(report)
    return report
