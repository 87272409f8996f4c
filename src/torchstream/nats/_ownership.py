"""The group side of a worker: heartbeats, the stream's first sequence, which partitions it
owns (claims, graceful releases) and the stall watchdog that fences it.

A mixin of :class:`~torchstream.nats._worker.Worker`, kept apart to keep each file short:
the attributes it uses are the worker's (declared below for the type checker), set in
``Worker.__init__`` and ``Worker._serve``. Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from torchstream.nats._assignment import Membership
from torchstream.nats._emit import Emitter
from torchstream.nats._fence import Stall, StallWatchdog
from torchstream.nats._jsapi import JetStreamApi
from torchstream.nats._layout import Layout
from torchstream.nats._ledger import DropRecord, Ledger, StreamLedger
from torchstream.nats._partition import OwnedPartition
from torchstream.sources._pushed import PushedSource

if TYPE_CHECKING:
    from torchstream.nats._worker import Worker

__all__ = ["Ownership"]

log = logging.getLogger("torchstream.nats._worker")


class Ownership:
    """Heartbeats, ownership and fencing of a :class:`~torchstream.nats._worker.Worker`."""

    worker_id: str
    incarnation: int
    layout: Layout
    connection: NATS
    control: NATS
    """The connection of the heartbeats (sent and heard), apart from the data's."""
    api: JetStreamApi
    ledger: Ledger
    ready: threading.Event
    stream_first_seq: int | None
    _asking_first_seq: asyncio.Future[int | None] | None
    _owned: dict[int, OwnedPartition]
    _claims: dict[int, int]
    _claims_kv: KeyValue
    _sources: dict[str, PushedSource]
    _in_flight: collections.Counter[int]
    _counts: collections.Counter[str]
    _closing: set[asyncio.Future[None]]
    _membership: Membership
    _watchdog: StallWatchdog
    _recovery: asyncio.Task[None] | None
    _emitter: Emitter | None
    _wake: asyncio.Event | None
    _stopping: bool
    _settle_until: float
    _interval: float
    _drain_timeout: float
    _link_timeout: float
    """The heartbeat timeout: a link silent for longer is taken as cut."""

    if TYPE_CHECKING:

        def record_drop(self, record: DropRecord, partition: int, epoch: int) -> None: ...

        def count_window(self, owned: OwnedPartition, ledger: StreamLedger, why: str) -> None:
            ...

    # -- heartbeats and the stream ------------------------------------------------------

    async def _heartbeats(self, subject: str) -> None:
        while True:
            self.check_progress()
            await self._heartbeat(subject)
            await asyncio.sleep(self._interval)

    async def _heartbeat(self, subject: str, *, leaving: bool = False) -> None:
        leaving = leaving or self._stopping  # late beats must not bring it back
        body = json.dumps(
            {
                "worker": self.worker_id,
                "incarnation": self.incarnation,
                "ready": self.ready.is_set() and not leaving,
                "leaving": leaving,
            }
        )
        try:
            await self.control.publish(subject, body.encode())
        except nats.errors.Error as exc:
            log.debug("worker: heartbeat not sent: %r", exc)

    async def _on_heartbeat(self, message: Any) -> None:
        try:
            beat = json.loads(message.data)
            changed = self._membership.observe(
                str(beat["worker"]),
                incarnation=int(beat["incarnation"]),
                ready=bool(beat["ready"]),
                leaving=bool(beat.get("leaving")),
                now_seconds=time.monotonic(),
            )
        except (ValueError, KeyError, TypeError):
            return
        if changed and self._wake is not None:
            self._wake.set()

    async def _refresh_stream_info(self) -> None:
        while True:
            await self.refresh_stream_first_seq()
            await asyncio.sleep(1.0)

    async def refresh_stream_first_seq(self) -> int | None:
        """Ask the server for the input stream's first sequence now (the stream's limits
        only ever move it up) and return it; the last value known if the server does not
        answer. One question at a time: concurrent callers share it."""
        asking = self._asking_first_seq
        if asking is None:
            asking = self._asking_first_seq = asyncio.ensure_future(self._ask_first_seq())
            asking.add_done_callback(lambda _: setattr(self, "_asking_first_seq", None))
        return await asyncio.shield(asking)

    async def _ask_first_seq(self) -> int | None:
        try:
            info = await self.api.stream_info(self.layout.input_stream)
            if info is not None:
                first = int(info["state"]["first_seq"])
                self.stream_first_seq = max(first, self.stream_first_seq or 0)
        except Exception as exc:  # the next try may work; the value only ages
            log.debug("worker: stream info: %r", exc)
        return self.stream_first_seq

    # -- ownership ----------------------------------------------------------------------

    async def _rebalance(self) -> None:
        now = time.monotonic()
        if not self.check_progress() or now < self._settle_until:
            return
        if self._owned and self._link_silent_seconds(now) > self._link_timeout:
            # Its own heartbeats stopped coming back (a cut link): the others have taken or
            # will take its partitions; what it holds must not go out after their results.
            # (The data connection may be silent without being cut: no frames to pull, or a
            # stream electing its leader.)
            self._fence("lost its link to the group")
            return
        wanted = self._membership.owned_by(self.worker_id, now)
        lost = [p for p in self._owned if p not in wanted]
        gained = [p for p in sorted(wanted) if p not in self._owned]
        await asyncio.gather(*(self._release(p) for p in lost))
        claimed = 0
        for partition in gained:
            owned = OwnedPartition(cast("Worker", self), partition)
            self._owned[partition] = owned
            try:
                await owned.start()
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                # No claim, no epoch: the workers bucket has no leader now (a node died and
                # its raft group is electing one). Not this worker's end: the next rebalance,
                # an interval later, tries again.
                log.warning(
                    "worker %s: cannot claim partition %d now: %r", self.worker_id, partition, exc
                )
                if self._owned.get(partition) is owned:
                    del self._owned[partition]
                break
            claimed += 1
        if lost or claimed:
            log.info(
                "worker %s: owns %d partitions (+%d -%d)",
                self.worker_id,
                len(self._owned),
                claimed,
                len(lost),
            )

    def _link_silent_seconds(self, now: float) -> float:
        """How long its own heartbeats have not come back on the heartbeat connection
        (0 before the first: it owns nothing until then)."""
        me = self._membership.status(self.worker_id)
        return 0.0 if me is None else now - me.last_seen_seconds

    async def claim(self, partition: int) -> int:
        """A new epoch for this worker's claim of ``partition``: the revision of a write to
        the workers bucket, which only grows."""
        body = json.dumps({"worker": self.worker_id, "incarnation": self.incarnation})
        epoch = int(await self._claims_kv.put(f"claim.{partition}", body.encode()))
        self._claims[partition] = epoch
        self._counts["claims"] += 1
        return epoch

    async def _release(self, partition: int) -> None:
        """Hand ``partition`` over: stop pulling, finish its frames, unpin, forget it."""
        owned = self._owned.get(partition)
        if owned is None:
            return
        await owned.stop()
        deadline = time.monotonic() + self._drain_timeout
        while self._in_flight[partition] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await owned.unpin()
        self._forget(owned, "left")
        self._counts["leaves"] += 1

    def _forget(self, owned: OwnedPartition, reason: str) -> None:
        self._owned.pop(owned.partition, None)
        self._claims.pop(owned.partition, None)
        # A takeover window still open: its frames that have not come back never will to
        # this worker, and the next owner starts above them; count them now.
        for stream in owned.ledgers.values():
            self.count_window(owned, stream, reason)
        self.ledger.release(owned.ledgers)
        for source_id in owned.ledgers:
            source = self._sources.pop(source_id, None)
            if source is not None:
                source.end() if reason == "left" else source.close()
            if self._emitter is not None:
                self._emitter.drain(source_id, reason)

    def check_progress(self) -> bool:
        """Record progress of the loop. False while the worker deals with a stall (noticed
        here or by the emitter): callers hold what they have until :meth:`after_stall`."""
        stall = self._watchdog.progress(time.monotonic()) or self._watchdog.stalled
        if stall is None:
            return True
        self._recover(stall)
        return False

    async def after_stall(self) -> None:
        """Return once the stall being dealt with (if any) is over: the partitions another
        worker claimed meanwhile are fenced, the others kept."""
        stall = self._watchdog.stalled
        recovery = self._recover(stall) if stall is not None else self._recovery
        if recovery is not None and not recovery.done():
            await asyncio.shield(recovery)

    def _recover(self, stall: Stall) -> asyncio.Task[None]:
        recovery = self._recovery
        if recovery is None or recovery.done():
            self._counts["stalls"] += 1
            recovery = self._recovery = asyncio.ensure_future(self._check_claims(stall))
        return recovery

    async def _check_claims(self, stall: Stall) -> None:
        """After a stall, keep each partition whose newest claim is still this worker's
        epoch and fence the others. Every owner claims a partition (a new, larger KV
        revision) before it pulls from it, so an unchanged claim means no other worker has
        pulled from it yet: nothing this worker holds can come after another's results. A
        claim made after this check races only with results already on their way, which
        the epoch fence at the sinks drops. Until this returns nothing is emitted (the
        watchdog's latch) and the pull loops wait; when the claims cannot be read within
        the stall threshold, every partition is fenced, as a paused worker must."""
        partitions = dict(self._owned)
        try:
            newest = await asyncio.wait_for(
                self._newest_claims(list(partitions)),
                self._watchdog.stall_threshold_seconds,
            )
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            newest = None
            reason = f"claims unreadable: {exc!r}"
        why = f"stalled {stall.stalled_seconds:.2f} s"
        if newest is None:
            self._fence(f"{why} ({reason})")
        else:
            lost = [  # (epoch 0: its claim is being written, it has pulled nothing yet)
                owned for p, owned in partitions.items()
                if owned.epoch and newest.get(p) != owned.epoch and self._owned.get(p) is owned
            ]
            for owned in lost:
                self._fence_partition(owned)
            if lost:
                self._counts["fences"] += 1
            log.warning(
                "worker %s: %s: kept %d partitions, fenced %d (claimed by another worker)",
                self.worker_id, why, len(partitions) - len(lost), len(lost),
            )
        self._watchdog.recover(time.monotonic())

    async def claim_is_current(self, partition: int, epoch: int) -> bool:
        """Whether ``epoch`` is still the newest claim of ``partition`` (False when the
        claims cannot be read within the heartbeat timeout)."""
        try:
            newest = await asyncio.wait_for(self._newest_claims([partition]), self._link_timeout)
        except (asyncio.TimeoutError, nats.errors.Error):
            return False
        return newest.get(partition) == epoch

    async def _newest_claims(self, partitions: list[int]) -> dict[int, int]:
        async def revision(partition: int) -> tuple[int, int]:
            try:
                entry = await self._claims_kv.get(f"claim.{partition}")
            except nats.js.errors.KeyNotFoundError:
                return partition, 0
            return partition, int(entry.revision or 0)

        return dict(await asyncio.gather(*(revision(p) for p in partitions)))

    def _fence(self, why: str) -> None:
        """Give up every partition at once: nothing it holds goes out (counted ``fenced``),
        nothing is acknowledged; it joins again after hearing the group."""
        log.warning("worker %s: %s: dropping its partitions", self.worker_id, why)
        self._counts["fences"] += 1
        for owned in list(self._owned.values()):
            self._fence_partition(owned)
        self._settle_until = time.monotonic() + 2 * self._interval

    def _fence_partition(self, owned: OwnedPartition) -> None:
        """Stop ``owned`` at once: what it holds is dropped (counted ``fenced``), nothing
        more is acknowledged, its pin is left to time out."""
        owned.cancel()
        closing = asyncio.ensure_future(owned.puller.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        self._forget(owned, "fenced")
