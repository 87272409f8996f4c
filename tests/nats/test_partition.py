"""One partition's handling of a camera's messages, without a server: its takeover window
is counted when the session ends, a frame of that session redelivered after the end (a
previous owner's frame in flight) neither starts a new session nor goes uncounted, and a
frame delivered after a later one is read from the stream in order instead of counted as a
hole."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from torchstream.nats import Layout
from torchstream.nats._ledger import Delivery, DropRecord, Ledger
from torchstream.nats._partition import OwnedPartition
from torchstream.nats._wire import encode
from torchstream.nats._worker import Worker
from torchstream.transport import EndOfStream, FrameMessage, ImagePayload

CAMERA = "cam-7"
LAYOUT = Layout(partitions=4)


class Client:
    """What a message's ``ack`` needs: a connection that records what it publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append((subject, payload))


class StoredStream:
    """The input stream as a worker reads it straight (``js.get_msg`` with ``next``): the
    messages stored at each stream sequence."""

    def __init__(self) -> None:
        self.stored: dict[int, tuple[str, Any, bytes]] = {}
        self.stored_at: dict[int, datetime.datetime] = {}
        self.reads: list[int] = []
        self.fail = False

    def store(self, body: FrameMessage, stream_seq: int, *, waited_seconds: float = 0.0) -> None:
        encoded = encode(LAYOUT.partition_subject(1, CAMERA), body, JPEG)
        self.stored[stream_seq] = (encoded.subject, encoded.headers, encoded.body)
        self.stored_at[stream_seq] = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
            seconds=waited_seconds
        )

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> RawStreamMsg:
        assert stream == LAYOUT.input_stream and next
        self.reads.append(seq)
        if self.fail:
            raise nats.errors.TimeoutError
        found = [s for s in sorted(self.stored) if s >= seq and self.stored[s][0] == subject]
        if not found:
            raise nats.js.errors.NotFoundError
        subject, headers, data = self.stored[found[0]]
        return RawStreamMsg(subject=subject, seq=found[0], data=data, headers=headers,
                            time=self.stored_at.get(found[0]))


class StubWorker:
    """The worker side an :class:`OwnedPartition` calls while it handles messages."""

    def __init__(self) -> None:
        self.layout = LAYOUT
        self.connection = Client()
        self.js = StoredStream()
        self.counts: dict[str, int] = {}
        self.api: Any = None
        self.ledger = Ledger()
        self.drops: list[DropRecord] = []
        self.ended: list[EndOfStream] = []
        self.pushed: list[int] = []
        self.tickets: list[Any] = []
        self.worker_id = "w1"
        self.stream_first_seq: int | None = None
        self.first_seq_now: int | None = None  # what the server would answer
        self.handover = -1  # the last seq with a result, as the results stream says
        self.max_frame_age_seconds = 30.0
        self.claimed_epoch = 9  # the newest claim of the partition (the test's own: epoch 9)

    async def refresh_stream_first_seq(self) -> int | None:
        self.stream_first_seq = self.first_seq_now
        return self.stream_first_seq

    def record_drop(self, record: DropRecord, partition: int, epoch: int) -> None:
        self.drops.append(record)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    async def claim_is_current(self, partition: int, epoch: int) -> bool:
        return self.claimed_epoch == epoch

    count_window = Worker.count_window  # the real one: it closes the window, records drops

    async def end_source(self, ticket: Any, eos: EndOfStream) -> None:
        self.ended.append(eos)

    async def push(self, ticket: Any, frame: FrameMessage, payload: Any) -> None:
        self.pushed.append(frame.seq)
        self.tickets.append(ticket)


JPEG = b"\xff\xd8\xff\xe0 jpeg"


def _message(client: Client, body: FrameMessage | EndOfStream, stream_seq: int,
             delivered: int = 1, *, waited_seconds: float = 0.0) -> Msg:
    encoded = encode(LAYOUT.partition_subject(1, CAMERA), body,
                     JPEG if isinstance(body, FrameMessage) else None)
    reply = f"$JS.ACK.{LAYOUT.input_stream}.{LAYOUT.consumer_name(1)}.{delivered}.{stream_seq}" \
            f".{stream_seq}.{time.time_ns() - int(waited_seconds * 1e9)}.0"
    return Msg(client, encoded.subject, reply, encoded.body, encoded.headers)  # type: ignore[arg-type]


def _frame(seq: int) -> FrameMessage:
    return FrameMessage(source_id=CAMERA, seq=seq, pts_seconds=seq / 3,
                        payload=ImagePayload(format="jpeg"))


def _partition(worker: StubWorker) -> OwnedPartition:
    owned = OwnedPartition(worker, 1)  # type: ignore[arg-type]
    owned.epoch = 9

    async def handover_seq(source_id: str) -> int | None:
        return worker.handover

    owned._handover_seq = handover_seq  # type: ignore[method-assign]
    return owned


def test_an_end_of_stream_counts_the_last_frames_the_broker_discarded() -> None:
    # The camera's frames 3..6 waited past the stream's max age: the broker removed them,
    # and no frame of the camera follows to show the hole. Its end of stream does.
    worker = StubWorker()
    owned = _partition(worker)
    worker.first_seq_now = 400  # the stream now starts past frame 2's stream seq (120)
    owned.ledgers[CAMERA] = worker.ledger.stream(CAMERA, handover_seq=-1)  # taken over

    async def main() -> None:
        client = worker.connection
        for seq in (0, 1, 2):
            await owned._handle(_message(client, _frame(seq), 100 + 10 * seq))
        assert worker.pushed == [0, 1, 2]
        await owned._handle(_message(client, EndOfStream(source_id=CAMERA, last_seq=6), 500))
        assert worker.drops == [DropRecord(CAMERA, 3, 6, "broker_discard")]
        assert worker.ended and CAMERA not in owned.ledgers

    asyncio.run(main())


def test_an_end_of_stream_first_after_a_claim_counts_what_the_previous_owner_held() -> None:
    worker = StubWorker()
    owned = _partition(worker)
    worker.handover = 4  # the previous owner's last result

    async def main() -> None:
        client = worker.connection
        await owned._handle(_message(client, EndOfStream(source_id=CAMERA, last_seq=8), 90))
        assert worker.drops == [DropRecord(CAMERA, 5, 8, "failover_inflight")]
        # One of them comes back after its ack wait: counted already, a duplicate.
        await owned._handle(_message(client, _frame(6), 60, delivered=2))
        assert worker.drops[-1] == DropRecord(CAMERA, 6, 6, "duplicate")
        assert worker.pushed == [] and len(worker.ended) == 1

    asyncio.run(main())


def test_an_end_of_stream_counts_the_window_and_later_redeliveries_are_duplicates() -> None:
    worker = StubWorker()
    owned = OwnedPartition(worker, 1)  # type: ignore[arg-type]
    owned.epoch = 9
    # Taken over at handover point 10, first live frame 15: 11..14 were in flight at the
    # previous owner and may still come back.
    ledger = worker.ledger.stream(CAMERA, handover_seq=10)
    owned.ledgers[CAMERA] = ledger
    ledger.on_delivery(Delivery(15, True, 150, 1))

    async def main() -> None:
        client = worker.connection
        await owned._handle(_message(client, EndOfStream(source_id=CAMERA, last_seq=15), 160))
        assert [(d.first_seq, d.last_seq, d.reason) for d in worker.drops] == [
            (11, 14, "failover_inflight")
        ]
        assert worker.ended and CAMERA not in owned.ledgers
        # Frame 12 of the ended session comes back (stream seq below the end's): counted as
        # a duplicate (the window counted it), acknowledged, not pushed, no new session.
        await owned._handle(_message(client, _frame(12), 120, delivered=2))
        assert worker.drops[-1] == DropRecord(CAMERA, 12, 12, "duplicate")
        assert worker.pushed == [] and CAMERA not in owned.ledgers
        assert any(subject.startswith("$JS.ACK") for subject, _ in client.published)

    asyncio.run(main())


def test_a_frame_that_waited_too_long_in_the_stream_is_dropped_as_late() -> None:
    worker = StubWorker()
    owned = _partition(worker)
    owned.ledgers[CAMERA] = worker.ledger.stream(CAMERA, handover_seq=-1)

    async def main() -> None:
        client = worker.connection
        await owned._handle(_message(client, _frame(0), 10, waited_seconds=1.0))
        await owned._handle(_message(client, _frame(1), 11, waited_seconds=31.0))
        await owned._handle(_message(client, _frame(2), 12, waited_seconds=29.0))
        assert worker.pushed == [0, 2]  # an image is its own keyframe: 2 goes on
        assert worker.drops == [DropRecord(CAMERA, 1, 1, "late")]
        acks = [s for s, _ in client.published if s.startswith("$JS.ACK")]
        assert len(acks) == 1  # the late one is acknowledged at once (the others on results)
        # The ones let in go stale when their age passes the limit: 29 s and 1 s from now
        # (the pipeline drops a frame whose first stage has not run by then, also as late).
        now = time.monotonic()
        stale_in = [t.stale_at - now for t in worker.tickets]
        assert stale_in[0] == pytest.approx(29.0, abs=0.5)
        assert stale_in[1] == pytest.approx(1.0, abs=0.5)

    asyncio.run(main())


def _acks(client: Client) -> int:
    return sum(1 for subject, _ in client.published if subject.startswith("$JS.ACK"))


def test_a_frame_delivered_after_a_later_one_is_read_from_the_stream_in_order() -> None:
    # Across a change of stream leader JetStream delivered #3 before #2, which it redelivers
    # after its ack wait. #2 is in the stream (stream seq 120): the worker reads it from
    # there and processes it before #3; the late redelivery is then a duplicate.
    worker = StubWorker()
    owned = _partition(worker)
    owned.ledgers[CAMERA] = worker.ledger.stream(CAMERA, handover_seq=-1)
    for seq in range(5):
        worker.js.store(_frame(seq), 100 + 10 * seq)
    worker.js.stored[115] = (LAYOUT.partition_subject(1, "cam-other"), None, b"")

    async def main() -> None:
        client = worker.connection
        for seq in (0, 1, 3, 4):
            await owned._handle(_message(client, _frame(seq), 100 + 10 * seq))
        assert worker.pushed == [0, 1, 2, 3, 4]
        assert [t.message is None for t in worker.tickets] == [False, False, True, False, False]
        assert worker.drops == [] and worker.counts == {"hole_filled": 1}
        assert worker.js.reads == [111, 121]  # after #1's stream seq, up to #3's
        await owned._handle(_message(client, _frame(2), 120, delivered=2))
        assert worker.drops == [DropRecord(CAMERA, 2, 2, "duplicate")]
        assert worker.pushed == [0, 1, 2, 3, 4] and _acks(client) == 1

    asyncio.run(main())


@pytest.mark.parametrize("read", ["not in the stream", "read fails", "newer claim"])
def test_a_hole_the_stream_cannot_fill_is_counted_as_a_gap(read: str) -> None:
    worker = StubWorker()
    owned = _partition(worker)
    owned.ledgers[CAMERA] = worker.ledger.stream(CAMERA, handover_seq=-1)
    for seq in (0, 1, 4):
        worker.js.store(_frame(seq), 100 + 10 * seq)
    worker.js.fail = read == "read fails"
    if read == "newer claim":  # 2 and 3 are in the stream, but another worker took them
        worker.js.store(_frame(2), 120)
        worker.js.store(_frame(3), 130)
        worker.claimed_epoch = 10

    async def main() -> None:
        client = worker.connection
        for seq in (0, 1, 4):
            await owned._handle(_message(client, _frame(seq), 100 + 10 * seq))
        assert worker.pushed == [0, 1, 4]  # an image is its own keyframe: 4 goes on
        assert worker.drops == [DropRecord(CAMERA, 2, 3, "gap")]
        assert worker.js.reads == ([] if read == "newer claim" else [111])

    asyncio.run(main())


def test_a_frame_read_from_the_stream_that_waited_too_long_is_dropped_as_late() -> None:
    worker = StubWorker()
    owned = _partition(worker)
    owned.ledgers[CAMERA] = worker.ledger.stream(CAMERA, handover_seq=-1)
    worker.js.store(_frame(1), 110, waited_seconds=31.0)  # the limit is 30 s

    async def main() -> None:
        client = worker.connection
        await owned._handle(_message(client, _frame(0), 100))
        await owned._handle(_message(client, _frame(2), 120))
        assert worker.pushed == [0, 2]
        assert worker.drops == [DropRecord(CAMERA, 1, 1, "late")]

    asyncio.run(main())
