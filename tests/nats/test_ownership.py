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


def test_a_claim_that_fails_now_is_tried_again_later() -> None:
    worker = Worker("nats://127.0.0.1:1", [], layout=Layout(partitions=2), worker_id="w1")
    bucket = Bucket()

    async def main() -> None:
        now = time.monotonic()
        worker.connection = Connection()  # type: ignore[assignment]
        worker.api = JetStreamApi(worker.connection)
        worker._claims_kv = bucket  # type: ignore[assignment]
        worker._interval = 0.1
        worker._watchdog = StallWatchdog(stall_threshold_seconds=60, now_seconds=now)
        worker._membership = Membership(partitions=2, heartbeat_timeout_seconds=60)
        worker._membership.observe("w1", incarnation=1, ready=True, now_seconds=now)

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
