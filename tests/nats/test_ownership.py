"""The group side of a worker, without a server: a claim the workers bucket cannot take now
(its raft group is electing a leader after a node died) is tried again, not fatal."""

from __future__ import annotations

import asyncio
import time

import nats.js.errors

from torchstream.nats import Layout
from torchstream.nats._assignment import Membership
from torchstream.nats._fence import StallWatchdog
from torchstream.nats._jsapi import JetStreamApi
from torchstream.nats._worker import Worker


class Bucket:
    """The workers bucket: ``put`` fails while ``leaderless``, else returns the next
    revision."""

    def __init__(self) -> None:
        self.leaderless = True
        self.revision = 40

    async def put(self, key: str, value: bytes) -> int:
        if self.leaderless:
            raise nats.js.errors.NoStreamResponseError
        self.revision += 1
        return self.revision


class Connection:
    def new_inbox(self) -> str:
        return "_INBOX.test"


def _offline(worker: Worker, bucket: object) -> None:
    """Set up what ``Worker._serve`` would, without a server: ``bucket`` as the workers
    bucket, the worker alone and ready in its group. Call on the test's event loop."""
    now = time.monotonic()
    worker.connection = Connection()  # type: ignore[assignment]
    worker.api = JetStreamApi(worker.connection)
    worker._claims_kv = bucket  # type: ignore[assignment]
    worker._interval = 0.1
    worker._watchdog = StallWatchdog(stall_threshold_seconds=60, now_seconds=now)
    worker._membership = Membership(
        partitions=worker.layout.partitions, heartbeat_timeout_seconds=60
    )
    worker._membership.observe("w1", incarnation=1, ready=True, now_seconds=now)


def test_a_claim_that_fails_now_is_tried_again_later() -> None:
    worker = Worker("nats://127.0.0.1:1", [], layout=Layout(partitions=2), worker_id="w1")
    bucket = Bucket()

    async def main() -> None:
        _offline(worker, bucket)

        await worker._rebalance()  # no leader: nothing claimed, and the worker goes on
        assert worker._owned == {} and worker._claims == {}

        bucket.leaderless = False
        await worker._rebalance()
        assert sorted(worker._owned) == [0, 1]
        assert sorted(worker._claims.values()) == [41, 42]
        assert [owned.epoch for owned in worker._owned.values()] == [41, 42]
        for owned in worker._owned.values():
            owned.cancel()  # its pull loop would need a server

    asyncio.run(main())


class SlowBucket:
    """The workers bucket, answering a ``put`` only once ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.revision = 70

    async def put(self, key: str, value: bytes) -> int:
        await self.answer.wait()
        self.revision += 1
        return self.revision


def test_a_partition_fenced_while_its_claim_is_written_does_not_start() -> None:
    # A stall or a lost link fences every partition, including one whose claim is still on
    # its way; when the claim returns it must neither pull (an orphan that nobody stops and
    # whose takeover windows nobody counts) nor leave its claim standing.
    worker = Worker("nats://127.0.0.1:1", [], layout=Layout(partitions=1), worker_id="w1")
    bucket = SlowBucket()

    async def main() -> None:
        _offline(worker, bucket)

        rebalancing = asyncio.ensure_future(worker._rebalance())
        while not worker._owned:
            await asyncio.sleep(0.001)
        owned = worker._owned[0]
        worker._fence("a test stall")  # while the claim is being written
        assert worker._owned == {}
        bucket.answer.set()
        await rebalancing
        assert owned.task is None, "a fenced partition started pulling"
        assert worker._claims == {} and worker._owned == {}

    asyncio.run(main())
