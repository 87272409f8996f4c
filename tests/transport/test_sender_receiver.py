"""Sender and Receiver (transport/_channel.py) over real sockets, on loopback TCP and on Unix
sockets. Not test_channel.py: that basename is tests/pipeline's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

zmq = pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import (  # noqa: E402
    BrokenResourceError,
    ClosedResourceError,
    Frame,
    OverloadedError,
)
from torchstream.transport import (  # noqa: E402
    PROTOCOL_VERSION,
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    ImagePayload,
    Limits,
    Message,
    PacketPayload,
    RawPayload,
    Receiver,
    ResultMessage,
    Sender,
    Shutdown,
    SocketOptions,
    encode,
)

TIMEOUT = 5.0  # seconds; only reached when something is broken
PACKET = PacketPayload(codec="h264", width=64, height=48, time_base=(1, 90000),
                       extradata=b"\x01\x64\x00\x1f")


def frame(source_id: str, seq: int) -> FrameMessage:
    return FrameMessage(source_id=source_id, seq=seq, pts_seconds=seq / 30, payload=PACKET)


@pytest.fixture
def raw_sockets() -> Iterator[list[Any]]:
    """Plain pyzmq sockets a test opens to talk to a Receiver outside the protocol."""
    sockets: list[Any] = []
    yield sockets
    for sock in sockets:
        sock.close(linger=0)


def connect_raw(sockets: list[Any], socket_type: int, url: str) -> Any:
    sock = zmq.Context.instance().socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    sockets.append(sock)
    return sock


def test_every_message_kind_crosses_a_socket(bind_url: str) -> None:
    result = Frame(source_id="cam", seq=2, width=64, height=48)
    result.add_object(label="car", confidence=0.9, box=[1, 2, 30, 40])
    jpeg = b"\xff\xd8\xff\xe0" + bytes(100)
    sent: list[tuple[Message, bytes | None]] = [
        (frame("cam", 0), b"\x00\x00\x00\x01" + bytes(1000)),
        (FrameMessage(source_id="cam", seq=1, payload=RawPayload(
            width=4, height=2, format="nv12")), bytes(range(12))),
        (FrameMessage(source_id="cam", seq=2, payload=ImagePayload(format="jpeg"),
                      traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
         jpeg),
        (ResultMessage(frame=result, content="image", payload=ImagePayload(format="jpeg")),
         jpeg),
        (EndOfStream(source_id="cam", last_seq=2), None),
        (Shutdown(secret="s3cret", reason="test"), None),
    ]
    with Receiver(f"pull+bind:{bind_url}", shutdown_secret="s3cret") as rx, \
            Sender(f"push+connect:{rx.endpoint.url}") as tx:
        for message, payload in sent:
            assert tx.send(message, payload)
        for message, payload in sent:
            got, view = rx.recv(timeout_seconds=TIMEOUT)
            assert got == message
            assert (None if view is None else bytes(view)) == payload
        assert rx.statistics().received == len(sent)
        assert rx.statistics().rejected == {}


def test_three_dealers_multiplexed_into_one_router(bind_url: str) -> None:
    sources = ["cam-a", "cam-b", "cam-c"]
    with Receiver(f"router+bind:{bind_url}") as rx:
        senders = [Sender(f"dealer+connect:{rx.endpoint.url}") for _ in sources]
        try:
            for seq in range(40):
                for sender, source in zip(senders, sources, strict=True):
                    sender.send(frame(source, seq), b"packet")
            for sender, source in zip(senders, sources, strict=True):
                sender.send(EndOfStream(source_id=source, last_seq=39))
            received: dict[str, list[int]] = {source: [] for source in sources}
            ended: set[str] = set()
            while ended != set(sources):
                message, _ = rx.recv(timeout_seconds=TIMEOUT)
                if isinstance(message, EndOfStream):
                    ended.add(message.source_id)
                else:
                    assert isinstance(message, FrameMessage)
                    assert message.source_id not in ended
                    received[message.source_id].append(message.seq)
            assert received == {source: list(range(40)) for source in sources}
            # Each acknowledgement went to its own dealer.
            for sender, source in zip(senders, sources, strict=True):
                ack, _ = sender.recv(timeout_seconds=TIMEOUT)
                assert ack == EndOfStreamAck(source_id=source, last_seq=39)
            stats = rx.statistics()
            assert (stats.received, stats.sources, stats.acks_sent) == (123, 3, 3)
        finally:
            for sender in senders:
                sender.close()


def test_send_eos_waits_for_the_acknowledgement(bind_url: str) -> None:
    with Receiver(f"router+bind:{bind_url}") as rx, \
            Sender(f"dealer+connect:{rx.endpoint.url}") as tx:
        received: list[Message] = []

        def serve() -> None:  # the receiving process: a frame, a reply to it, then the EOS
            received.append(rx.recv(timeout_seconds=TIMEOUT)[0])
            rx.reply(ResultMessage(frame=Frame(source_id="cam", seq=0, width=64, height=48)))
            received.append(rx.recv(timeout_seconds=TIMEOUT)[0])

        thread = threading.Thread(target=serve, name="ts/test/receiver")
        thread.start()
        tx.send(frame("cam", 0), b"p")
        ack = tx.send_eos("cam", last_seq=0, ack_timeout_seconds=TIMEOUT)
        thread.join()
        assert ack == EndOfStreamAck(source_id="cam", last_seq=0)
        assert [type(m) for m in received] == [FrameMessage, EndOfStream]
        # The reply that came before the ack waited for recv.
        reply, _ = tx.recv(timeout_seconds=0)
        assert isinstance(reply, ResultMessage) and reply.seq == 0
        assert rx.statistics().acks_sent == 1


def test_an_unread_eos_is_not_acknowledged(bind_url: str) -> None:
    with Receiver(f"router+bind:{bind_url}") as rx, \
            Sender(f"dealer+connect:{rx.endpoint.url}") as tx:
        with pytest.raises(TimeoutError, match=r"'cam' not acknowledged within 0\.2 s"):
            tx.send_eos("cam", last_seq=None, ack_timeout_seconds=0.2)
        assert rx.statistics().acks_sent == 0


def test_push_and_pub_have_no_acknowledgement(bind_url: str) -> None:
    with Receiver(f"pull+bind:{bind_url}") as rx, \
            Sender(f"push+connect:{rx.endpoint.url}") as tx:
        assert tx.send_eos("cam", last_seq=3) is None
        assert rx.recv(timeout_seconds=TIMEOUT)[0] == EndOfStream(source_id="cam", last_seq=3)
        with pytest.raises(ValueError, match="only a dealer receives replies"):
            tx.recv(timeout_seconds=0)


def test_manual_acknowledgement(bind_url: str) -> None:
    with Receiver(f"router+bind:{bind_url}", ack_eos=False) as rx, \
            Sender(f"dealer+connect:{rx.endpoint.url}") as tx:
        tx.send(EndOfStream(source_id="cam", last_seq=None))
        eos, _ = rx.recv(timeout_seconds=TIMEOUT)
        with pytest.raises(TimeoutError):
            tx.recv(timeout_seconds=0.1)
        assert isinstance(eos, EndOfStream)
        rx.reply(EndOfStreamAck(source_id="cam", last_seq=None))
        assert tx.recv(timeout_seconds=TIMEOUT)[0] == EndOfStreamAck(source_id="cam")


def test_restarted_dealer_resumes_its_stream(bind_url: str) -> None:
    with Receiver(f"router+bind:{bind_url}") as rx:
        with Sender(f"dealer+connect:{rx.endpoint.url}") as first:
            for seq in range(5):
                first.send(frame("cam", seq), b"p")
            assert [rx.recv(timeout_seconds=TIMEOUT)[0].seq for _ in range(5)] == [
                0, 1, 2, 3, 4
            ]
        # The adapter restarts: a new socket, so a new routing id, same source id.
        with Sender(f"dealer+connect:{rx.endpoint.url}") as second:
            for seq in range(5, 10):
                second.send(frame("cam", seq), b"p")
            assert [rx.recv(timeout_seconds=TIMEOUT)[0].seq for _ in range(5)] == [
                5, 6, 7, 8, 9
            ]
            # Replies for the source reach the new connection, not the closed one.
            rx.reply(ResultMessage(frame=Frame(source_id="cam", seq=9, width=64, height=48)))
            reply, _ = second.recv(timeout_seconds=TIMEOUT)
            assert isinstance(reply, ResultMessage) and reply.seq == 9
            second.send(EndOfStream(source_id="cam", last_seq=9))
            assert isinstance(rx.recv(timeout_seconds=TIMEOUT)[0], EndOfStream)
            assert second.recv(timeout_seconds=TIMEOUT)[0] == EndOfStreamAck(
                source_id="cam", last_seq=9
            )
        assert rx.statistics().sources == 1


def test_reply_to_an_unknown_source_is_a_broken_resource(bind_url: str) -> None:
    with Receiver(f"router+bind:{bind_url}") as rx, \
            pytest.raises(BrokenResourceError, match="no connection has sent for source"):
        rx.reply(EndOfStreamAck(source_id="nobody"))


@pytest.mark.parametrize("pair", [("push", "pull"), ("dealer", "router")])
def test_reliable_pairs_block_then_time_out_instead_of_dropping(
    bind_url: str, pair: tuple[str, str]
) -> None:
    sender_type, receiver_type = pair
    options = SocketOptions(high_water_mark=2, linger_seconds=0)
    payload = bytes(256 * 1024)  # big enough to fill the kernel's socket buffers quickly
    with Receiver(f"{receiver_type}+bind:{bind_url}", options=options) as rx, \
            Sender(f"{sender_type}+connect:{rx.endpoint.url}", options=options,
                   send_timeout_seconds=0.2) as tx:
        sent = 0
        with pytest.raises(OverloadedError, match="high-water mark of 2 messages reached"):
            for seq in range(2000):
                tx.send(frame("cam", seq), payload)
                sent += 1
        assert 0 < sent < 2000
        # Nothing was dropped: every message that send accepted arrives, in order.
        seqs = [rx.recv(timeout_seconds=TIMEOUT)[0].seq for _ in range(sent)]
        assert seqs == list(range(sent))
        with pytest.raises(TimeoutError):
            rx.recv(timeout_seconds=0.1)
        assert tx.statistics().dropped == 0


def test_pub_sub_filters_by_source_id_prefix(bind_url: str) -> None:
    with Sender(f"pub+bind:{bind_url}") as pub, \
            Receiver(f"sub+connect:{pub.endpoint.url}", subscribe=["cam-1"]) as one, \
            Receiver(f"sub+connect:{pub.endpoint.url}") as every:
        pub.wait_for_subscribers(2, timeout_seconds=TIMEOUT)
        for source in ["cam-1", "cam-2", "cam-10"]:
            assert pub.send(frame(source, 0), b"p")
        pub.send(EndOfStream(source_id="cam-1", last_seq=0))
        got = [one.recv(timeout_seconds=TIMEOUT)[0] for _ in range(3)]
        # A prefix, not an exact match: cam-10 starts with cam-1.
        assert [(m.source_id, type(m).__name__) for m in got] == [
            ("cam-1", "FrameMessage"), ("cam-10", "FrameMessage"), ("cam-1", "EndOfStream")
        ]
        assert [every.recv(timeout_seconds=TIMEOUT)[0].source_id
                for _ in range(4)] == ["cam-1", "cam-2", "cam-10", "cam-1"]
        assert pub.statistics().subscriptions == 2


def test_pub_counts_what_a_slow_subscriber_cannot_take(bind_url: str) -> None:
    options = SocketOptions(high_water_mark=2, linger_seconds=0)
    payload = bytes(256 * 1024)
    attempts = 400
    with Sender(f"pub+bind:{bind_url}", options=options) as pub, \
            Receiver(f"sub+connect:{pub.endpoint.url}", options=options) as sub:
        pub.wait_for_subscribers(timeout_seconds=TIMEOUT)
        results = [pub.send(frame("cam", seq), payload) for seq in range(attempts)]
        stats = pub.statistics()
        assert stats.dropped == results.count(False) > 0
        assert stats.sent == results.count(True)
        # Exact accounting: the subscriber gets every message that was not counted dropped.
        delivered = [seq for seq, ok in enumerate(results) if ok]
        assert [sub.recv(timeout_seconds=TIMEOUT)[0].seq
                for _ in delivered] == delivered
        with pytest.raises(TimeoutError):
            sub.recv(timeout_seconds=0.1)


def test_shutdown_needs_the_configured_secret(bind_url: str) -> None:
    with Receiver(f"pull+bind:{bind_url}", shutdown_secret="right") as rx, \
            Sender(f"push+connect:{rx.endpoint.url}") as tx:
        tx.send(Shutdown(secret="wrong"))
        tx.send(Shutdown(secret="right"))
        message, _ = rx.recv(timeout_seconds=TIMEOUT)
        assert isinstance(message, Shutdown) and message.matches("right")
        assert rx.statistics().rejected == {"shutdown_refused": 1}
    with Receiver(f"pull+bind:{bind_url}") as rx, \
            Sender(f"push+connect:{rx.endpoint.url}") as tx:
        tx.send(Shutdown(secret="right"))
        tx.send(frame("cam", 0), b"p")
        assert isinstance(rx.recv(timeout_seconds=TIMEOUT)[0], FrameMessage)
        assert rx.statistics().rejected == {"shutdown_refused": 1}


def test_a_flood_of_bad_messages_is_counted_and_logged_once(
    bind_url: str, raw_sockets: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with Receiver(f"pull+bind:{bind_url}") as rx:
        push = connect_raw(raw_sockets, zmq.PUSH, rx.endpoint.url)
        for _ in range(200):
            push.send_multipart([b"cam", b"\xc1 not msgpack"])
        push.send_multipart(encode(frame("cam", 0), b"p"))
        message, _ = rx.recv(timeout_seconds=TIMEOUT)
        assert isinstance(message, FrameMessage)
        assert rx.statistics().rejected == {"bad_header": 200}
        lines = [r for r in caplog.records if "rejected a message" in r.getMessage()]
        assert len(lines) == 1
        assert "bad_header" in lines[0].getMessage() and str(rx.endpoint) in lines[0].getMessage()


def test_an_oversized_part_cannot_exhaust_memory(raw_sockets: list[Any]) -> None:
    # Over max_part_bytes, libzmq drops the connection before buffering the part; the peer
    # reconnects and later messages get through.
    limits = Limits(max_header_bytes=1024, max_payload_bytes=1024, max_part_bytes=4096)
    with Receiver("pull+bind:tcp://127.0.0.1:*", limits=limits) as rx:
        push = connect_raw(raw_sockets, zmq.PUSH, rx.endpoint.url)
        push.send_multipart([b"cam", b"x" * 100_000])
        good = encode(frame("cam", 0), b"p")
        for _ in range(50):  # resend until the reconnected pipe delivers one
            push.send_multipart(good)
            try:
                message, _ = rx.recv(timeout_seconds=0.2)
            except TimeoutError:
                continue
            assert isinstance(message, FrameMessage)
            break
        else:
            pytest.fail("no message got through after the oversized one")
        # Between the limits and the hard cap a message is received, counted and rejected.
        push.send_multipart([*encode(frame("cam", 1), b"p")[:2], b"y" * 2000])
        push.send_multipart(encode(frame("cam", 2), b"p"))
        while (message := rx.recv(timeout_seconds=TIMEOUT)[0]).seq < 2:
            pass
        assert rx.statistics().rejected == {"payload_too_large": 1}


def valid_parts() -> list[list[bytes]]:
    messages: list[tuple[Message, bytes | None]] = [
        (frame("cam", 3), b"\x00\x00\x01" * 10),
        (FrameMessage(source_id="cam", seq=4, payload=RawPayload(
            width=2, height=2, format="rgb24")), bytes(12)),
        (EndOfStream(source_id="cam", last_seq=4), None),
        (ResultMessage(frame=Frame(source_id="cam", seq=1, width=2, height=2)), None),
    ]
    return [[bytes(part) for part in encode(m, p)] for m, p in messages]


@st.composite
def hostile_messages(draw: st.DrawFn) -> list[bytes]:
    strategy = draw(st.sampled_from(["random", "flip", "truncate", "parts", "header"]))
    if strategy == "random":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
    parts = list(draw(st.sampled_from(valid_parts())))
    if strategy == "flip":
        index = draw(st.integers(0, len(parts) - 1))
        part = bytearray(parts[index])
        if part:
            position = draw(st.integers(0, len(part) - 1))
            part[position] ^= draw(st.integers(1, 255))
        parts[index] = bytes(part)
    elif strategy == "truncate":
        index = draw(st.integers(0, len(parts) - 1))
        parts[index] = parts[index][: draw(st.integers(0, max(0, len(parts[index]) - 1)))]
    elif strategy == "parts":
        if draw(st.booleans()) and len(parts) > 1:
            del parts[draw(st.integers(0, len(parts) - 1))]
        else:
            parts.insert(draw(st.integers(0, len(parts))), draw(st.binary(max_size=16)))
    else:
        values = st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
            | st.text(max_size=8)
            | st.binary(max_size=8),
            lambda children: st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=10), children, max_size=4),
            max_leaves=12,
        )
        fields = draw(st.dictionaries(
            st.sampled_from(["kind", "version", "source_id", "seq", "payload", "metadata",
                             "frame", "content", "pts_seconds", "secret", "last_seq", "x"]),
            values, max_size=8,
        ))
        if draw(st.booleans()):
            fields.update(kind=draw(st.sampled_from(["frame", "result", "eos", "shutdown"])),
                          version=PROTOCOL_VERSION)
        parts[1] = msgspec.msgpack.encode(fields)
    return parts


@pytest.mark.parametrize("pair", [(zmq.PUSH, "pull"), (zmq.DEALER, "router")],
                         ids=["push-pull", "dealer-router"])
def test_fuzzed_messages_never_stop_a_receiver(
    raw_sockets: list[Any], pair: tuple[int, str]
) -> None:
    raw_type, receiver_type = pair
    with Receiver(f"{receiver_type}+bind:tcp://127.0.0.1:*", shutdown_secret="s") as rx:
        attacker = connect_raw(raw_sockets, raw_type, rx.endpoint.url)
        counter = iter(range(10**9))
        accepted = 0

        @given(hostile_messages())
        @settings(max_examples=150, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow])
        def throw(parts: list[bytes]) -> None:
            nonlocal accepted
            before = rx.statistics()
            attacker.send_multipart(parts)
            sentinel = next(counter)
            attacker.send_multipart(encode(FrameMessage(source_id="sentinel", seq=sentinel)))
            got = 0
            while True:
                message, _ = rx.recv(timeout_seconds=TIMEOUT)
                if isinstance(message, FrameMessage) and message.source_id == "sentinel":
                    assert message.seq == sentinel
                    break
                got += 1  # a mutation that is still a valid message
            after = rx.statistics()
            assert got + after.rejected_total - before.rejected_total == 1
            accepted += got

        throw()
        # After all that, a good message still gets through, and the rejects were counted.
        attacker.send_multipart(encode(frame("cam", 99), b"p"))
        message, payload = rx.recv(timeout_seconds=TIMEOUT)
        assert message == frame("cam", 99) and payload is not None and bytes(payload) == b"p"
        assert rx.statistics().rejected_total > 0


def test_wrong_endpoint_types_are_refused() -> None:
    with pytest.raises(ValueError, match="a Sender needs a dealer / req / push / pub endpoint"):
        Sender("pull+bind:tcp://127.0.0.1:*")
    with pytest.raises(ValueError, match="a Receiver needs a router / rep / pull / sub endpoint"):
        Receiver("push+connect:tcp://127.0.0.1:5555")
    with pytest.raises(ValueError, match="rep answers every message at once"):
        Receiver("rep+bind:tcp://127.0.0.1:*", ack_eos=False)
    with pytest.raises(ValueError, match="subscribe is for sub endpoints"):
        Receiver("pull+bind:tcp://127.0.0.1:*", subscribe=["cam"])


def test_close_is_idempotent_and_final(bind_url: str) -> None:
    rx = Receiver(f"pull+bind:{bind_url}")
    tx = Sender(f"push+connect:{rx.endpoint.url}")
    for end in (rx, tx):
        end.close()
        end.close()
    with pytest.raises(ClosedResourceError, match="is closed"):
        rx.recv(timeout_seconds=0)
    with pytest.raises(ClosedResourceError):
        tx.send(frame("cam", 0), b"p")
    assert rx.statistics().received == 0  # statistics stay readable


def test_rejected_messages_are_logged_with_the_endpoint(
    caplog: pytest.LogCaptureFixture, raw_sockets: list[Any]
) -> None:
    caplog.set_level(logging.WARNING, logger="torchstream")
    with Receiver("pull+bind:tcp://127.0.0.1:*") as rx:
        push = connect_raw(raw_sockets, zmq.PUSH, rx.endpoint.url)
        push.send_multipart([b"cam", msgspec.msgpack.encode(
            {"kind": "frame", "version": 99, "source_id": "cam", "seq": 0})])
        push.send_multipart(encode(frame("cam", 0), b"p"))
        rx.recv(timeout_seconds=TIMEOUT)
    [record] = [r for r in caplog.records if "rejected" in r.getMessage()]
    expected = f"wrong_version: protocol version 99, this end speaks {PROTOCOL_VERSION}"
    assert expected in record.getMessage()
