"""The worker's way out, against a stand-in connection: a result whose storage the results
stream does not confirm is counted (``result_unconfirmed``), not forgotten; a drop record is
sent until the stream confirms it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import pytest

from torchstream.nats._emit import DROP_ATTEMPTS, Emitter
from torchstream.nats._ledger import DropRecord
from torchstream.nats._tickets import Ticket
from torchstream.nats._wire import Encoded


@dataclass
class Reply:
    subject: str
    data: bytes = b""
    headers: dict[str, str] | None = None


@dataclass
class Input:
    """The delivered input message of a ticket: only its acknowledgement matters here."""

    acked: bool = False

    async def ack(self) -> None:
        self.acked = True


@dataclass
class Connection:
    """Enough of a nats-py client for :class:`Emitter`: ``answer(reply_subject)`` makes the
    results stream's reply to each publish (None: no reply ever comes)."""

    answer: Callable[[str], Reply | None]
    published: list[tuple[str, str]] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    delay_seconds: float = 0.0
    """How long each reply takes."""
    _callbacks: list[Callable[[Reply], Any]] = field(default_factory=list)

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Callable[[Reply], Any]) -> object:
        self._callbacks.append(cb)
        return object()

    async def publish(
        self, subject: str, body: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self.published.append((subject, reply))
        self.message_ids.append((headers or {}).get("Nats-Msg-Id", ""))
        answer = self.answer(reply) if reply else None
        if answer is not None:
            for callback in self._callbacks:
                asyncio.get_running_loop().call_later(
                    self.delay_seconds, lambda cb=callback: asyncio.ensure_future(cb(answer))
                )


def _send_one(answer: Callable[[str], Reply | None]) -> tuple[Input, list[DropRecord], int]:
    """One result of cam #7 (partition 3, epoch 12) through an emitter; returns its input,
    the drop records counted, and how many tickets were done."""
    drops: list[tuple[DropRecord, int, int]] = []
    done: list[Ticket] = []
    message = Input()

    async def may_emit(ticket: Ticket) -> bool:
        return True

    async def main() -> None:
        connection = Connection(answer)
        emitter = Emitter(
            connection,  # type: ignore[arg-type]
            drop_subject_of=lambda s: f"ts.drop.{s}",
            may_emit=may_emit,
            on_drop=lambda record, partition, epoch: drops.append((record, partition, epoch)),
            on_done=done.append,
            stored=True,
            ack_timeout_seconds=0.05,
        )
        await emitter.start()
        ticket = Ticket("cam", 7, 3, 12, message)  # type: ignore[arg-type]
        emitter.add(ticket)
        ticket.encoded, ticket.state = Encoded("ts.out.cam", {}, b"result"), "result"
        emitter.settle(ticket)
        for _ in range(200):
            if done:
                break
            await asyncio.sleep(0.005)
        await emitter.close()
        assert connection.published == [("ts.out.cam", "_INBOX.test.0")]
        assert emitter.published == 1

    asyncio.run(main())
    assert all((partition, epoch) == (3, 12) for _, partition, epoch in drops)
    return message, [record for record, _, _ in drops], len(done)


def test_a_stored_result_acknowledges_its_input() -> None:
    pub_ack = json.dumps({"stream": "TS_OUT", "seq": 41}).encode()
    message, drops, done = _send_one(lambda subject: Reply(subject, pub_ack))
    assert message.acked and drops == [] and done == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda subject: None, id="no-reply"),  # its server died with it
        pytest.param(lambda subject: Reply(subject, headers={"Status": "503"}), id="503"),
        pytest.param(
            lambda subject: Reply(subject, json.dumps({"error": {"code": 500}}).encode()),
            id="error",
        ),
    ],
)
def test_an_unconfirmed_result_is_counted(answer: Callable[[str], Reply | None]) -> None:
    # Its frame comes back after the ack wait and the ledger drops it as a duplicate, so
    # this record is all that accounts for it if the result reached no sink.
    message, drops, done = _send_one(answer)
    assert drops == [DropRecord("cam", 7, 7, "result_unconfirmed")]
    assert not message.acked and done == 1


def test_a_drop_record_that_cannot_be_sent_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    class Closed(Connection):
        async def publish(self, subject: str, body: bytes, reply: str = "",
                          headers: dict[str, str] | None = None) -> None:
            raise nats.errors.ConnectionClosedError

    async def may_emit(ticket: Ticket) -> bool:
        return True

    async def main() -> int:
        emitter = Emitter(
            Closed(lambda subject: None),  # type: ignore[arg-type]
            drop_subject_of=lambda s: f"ts.drop.{s}", may_emit=may_emit,
            on_drop=lambda record, partition, epoch: None, on_done=lambda ticket: None,
            stored=False,
        )
        emitter.publish_drop(DropRecord("cam", 3, 5, "gap"), b"{}")
        for _ in range(100):
            if emitter.drops_unsent:
                break
            await asyncio.sleep(0.005)
        return emitter.drops_unsent

    assert asyncio.run(main()) == 3
    assert "drop record of cam #3-5 (gap) not sent" in caplog.text


def _drop_emitter(connection: Connection, **options: Any) -> Emitter:
    """An emitter that only sends drop records (``options``: ``stored``, timeouts...)."""

    async def may_emit(ticket: Ticket) -> bool:
        return True

    return Emitter(
        connection,  # type: ignore[arg-type]
        drop_subject_of=lambda s: f"ts.drop.{s}", may_emit=may_emit,
        on_drop=lambda record, partition, epoch: None, on_done=lambda ticket: None,
        **{"stored": True, **options},
    )


def _drop_record_through(
    answers: Callable[[int], Reply | None], *, wait_seconds: float = 1.5
) -> tuple[Connection, Emitter]:
    """One drop record (cam #3-5, gap) through an emitter of a layout with a results stream;
    ``answers(n)`` is the stream's reply to the n-th send (from 0)."""

    async def main() -> tuple[Connection, Emitter]:
        sends = 0

        def answer(subject: str) -> Reply | None:
            nonlocal sends
            sends += 1
            reply = answers(sends - 1)
            return None if reply is None else Reply(subject, reply.data, reply.headers)

        connection = Connection(answer)
        emitter = _drop_emitter(connection, ack_timeout_seconds=0.05)
        await emitter.start()
        emitter.publish_drop(DropRecord("cam", 3, 5, "gap"), b'{"first_seq": 3}')
        await asyncio.sleep(wait_seconds)
        await emitter.close()
        return connection, emitter

    return asyncio.run(main())


STORED = Reply("", json.dumps({"stream": "TS_OUT", "seq": 9}).encode())


def test_a_stored_drop_record_is_sent_once() -> None:
    connection, emitter = _drop_record_through(lambda n: STORED, wait_seconds=0.3)
    assert [subject for subject, _ in connection.published] == ["ts.drop.cam"]
    assert connection.published[0][1].startswith("_INBOX.test.")  # it asks for the ack
    assert emitter.drops_resent == 0 and emitter.drops_unsent == 0


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(None, id="no-reply"),  # written to a server that died
        pytest.param(Reply("", headers={"Status": "503"}), id="503"),  # leader election
    ],
)
def test_an_unconfirmed_drop_record_is_sent_again_as_the_same_message(
    refusal: Reply | None,
) -> None:
    connection, emitter = _drop_record_through(lambda n: refusal if n < 2 else STORED)
    assert [subject for subject, _ in connection.published] == ["ts.drop.cam"] * 3
    ids = set(connection.message_ids)
    assert len(ids) == 1 and ids != {""}  # the stream stores it once
    assert emitter.drops_resent == 2 and emitter.drops_unsent == 0


def test_a_drop_record_never_confirmed_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    connection, emitter = _drop_record_through(lambda n: None, wait_seconds=4.0)
    assert len(connection.published) == DROP_ATTEMPTS
    assert emitter.drops_unsent == 3  # frames 3..5
    assert "drop record of cam #3-5 (gap) not sent" in caplog.text


def test_without_drop_subjects_in_the_stream_a_drop_record_goes_out_once() -> None:
    async def main() -> Connection:
        connection = Connection(lambda subject: None)
        emitter = _drop_emitter(connection, drops_stored=False, ack_timeout_seconds=0.05)
        await emitter.start()
        emitter.publish_drop(DropRecord("cam", 3, 5, "gap"), b"{}")
        await asyncio.sleep(0.5)
        await emitter.close()
        assert emitter.drops_unsent == 0
        return connection

    assert asyncio.run(main()).published == [("ts.drop.cam", "")]


@pytest.mark.parametrize("delay_seconds, unsent", [(0.1, 0), (2.0, 3)])
def test_close_waits_for_drop_records_in_flight(delay_seconds: float, unsent: int) -> None:
    # A worker that stops right after its last drop record: the ack still counts if it comes
    # within the ack timeout; else the frames are counted unsent.
    async def main() -> int:
        connection = Connection(
            lambda subject: Reply(subject, STORED.data), delay_seconds=delay_seconds
        )
        emitter = _drop_emitter(connection, ack_timeout_seconds=0.5)
        await emitter.start()
        emitter.publish_drop(DropRecord("cam", 3, 5, "gap"), b"{}")
        await asyncio.sleep(0)
        await emitter.close()
        return emitter.drops_unsent

    assert asyncio.run(main()) == unsent
