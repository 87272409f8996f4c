"""The worker's way out, against a stand-in connection: a result whose storage the results
stream does not confirm is counted (``result_unconfirmed``), not forgotten."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import pytest

from torchstream.nats._emit import Emitter
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
        answer = self.answer(reply) if reply else None
        if answer is not None:
            for callback in self._callbacks:
                asyncio.get_running_loop().call_soon(
                    lambda cb=callback: asyncio.ensure_future(cb(answer))
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
