"""req -> rep (transport/_reqrep.py and the rep side of _channel.py) over real sockets, on
loopback TCP and Unix sockets: every message answered, ends of stream acknowledged,
malformed messages answered too, a rep process killed mid-request and restarted, and a
module fed over rep by the video adapter and the SDK."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

zmq = pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import BrokenResourceError, OverloadedError  # noqa: E402
from torchstream.client import Source  # noqa: E402
from torchstream.testing import SyntheticVideo, write_video  # noqa: E402
from torchstream.transport import (  # noqa: E402
    PROTOCOL_VERSION,
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    Limits,
    Message,
    Module,
    PacketPayload,
    ProtocolError,
    Receipt,
    Receiver,
    ResultMessage,
    Sender,
    Shutdown,
    decode,
    encode,
)
from torchstream.transport._adapters import send_video  # noqa: E402

TIMEOUT = 10.0  # seconds; only reached when something is broken
PACKET = PacketPayload(codec="h264", width=64, height=48, time_base=(1, 90000))


def frame(source_id: str, seq: int) -> FrameMessage:
    return FrameMessage(source_id=source_id, seq=seq, payload=PACKET)


@contextmanager
def serving(receiver: Receiver) -> Iterator[list[tuple[Message, bytes | None]]]:
    """``receiver`` receiving on a thread until an end of stream; yields what it got."""
    got: list[tuple[Message, bytes | None]] = []

    def serve() -> None:
        while True:
            message, payload = receiver.recv(TIMEOUT)
            got.append((message, None if payload is None else bytes(payload)))
            if isinstance(message, EndOfStream):
                return

    thread = threading.Thread(target=serve, name="ts/test/rep")
    thread.start()
    try:
        yield got
    finally:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_every_message_is_answered_and_the_end_acknowledged(bind_url: str) -> None:
    with Receiver(f"rep+bind:{bind_url}") as rx, \
            Sender(f"req+connect:{rx.endpoint.url}", send_timeout_seconds=TIMEOUT) as tx:
        with serving(rx) as got:
            for seq in range(20):
                assert tx.send(frame("cam", seq), seq.to_bytes(4, "big")) is True
            ack = tx.send_eos("cam", last_seq=19)
        assert ack == EndOfStreamAck(source_id="cam", last_seq=19)
        assert [m for m, _ in got] == [*(frame("cam", s) for s in range(20)),
                                      EndOfStream(source_id="cam", last_seq=19)]
        assert [p for _, p in got][:3] == [b"\x00\x00\x00\x00", b"\x00\x00\x00\x01",
                                          b"\x00\x00\x00\x02"]
        sent, received = tx.statistics(), rx.statistics()
    assert (sent.sent, sent.received, sent.rejected) == (21, 21, {})
    assert (received.received, received.acks_sent, received.acks_failed) == (21, 21, 0)


def test_malformed_messages_are_answered_so_the_requester_is_never_stuck(
    bind_url: str,
) -> None:
    with Receiver(f"rep+bind:{bind_url}", limits=Limits(max_payload_bytes=100)) as rx:
        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(rx.endpoint.url)
        wrong_version = msgspec.msgpack.encode(
            {"kind": "frame", "version": PROTOCOL_VERSION + 1, "source_id": "cam", "seq": 0})
        bad = {
            "parts": [b"just one part"],
            "bad_header": [b"cam", b"\xc1 not msgpack"],
            "wrong_version": [b"cam", wrong_version],
            "payload_too_large": encode(frame("cam", 0), bytes(101)),
        }
        try:
            with serving(rx) as got:  # recv answers the rejects as it goes
                for reason, parts in bad.items():
                    raw.send_multipart(parts)
                    assert raw.poll(TIMEOUT * 1000), reason
                    answer, _ = decode(raw.recv_multipart())
                    assert answer == Receipt(rejected=reason)  # type: ignore[arg-type]
                # Then good ones go through, answered with their receipts.
                for message, payload, answer in [
                    (frame("cam", 1), b"p", Receipt(source_id="cam", seq=1)),
                    (EndOfStream(source_id="cam", last_seq=1), None,
                     EndOfStreamAck(source_id="cam", last_seq=1)),
                ]:
                    raw.send_multipart(encode(message, payload))
                    assert raw.poll(TIMEOUT * 1000)
                    assert decode(raw.recv_multipart())[0] == answer
        finally:
            raw.close()
        assert [m for m, _ in got] == [frame("cam", 1), EndOfStream(source_id="cam", last_seq=1)]
        assert rx.statistics().rejected == {reason: 1 for reason in bad}


def test_a_rejection_raises_for_the_sender_which_goes_on(bind_url: str) -> None:
    limits = Limits(max_payload_bytes=100)
    with Receiver(f"rep+bind:{bind_url}", limits=limits) as rx, \
            Sender(f"req+connect:{rx.endpoint.url}", send_timeout_seconds=TIMEOUT) as tx, \
            serving(rx) as got:
        with pytest.raises(ProtocolError) as caught:
            tx.send(frame("cam", 0), bytes(101))
        assert caught.value.reason == "payload_too_large"
        with pytest.raises(ProtocolError) as refused:
            tx.send(Shutdown(secret="guess"))
        assert refused.value.reason == "shutdown_refused"
        assert tx.send(frame("cam", 1), b"p")
        tx.send_eos("cam", last_seq=1)
    assert [m for m, _ in got] == [frame("cam", 1), EndOfStream(source_id="cam", last_seq=1)]


def test_no_answer_in_time_is_overloaded_and_the_socket_is_not_wedged(bind_url: str) -> None:
    silent = zmq.Context.instance().socket(zmq.REP)  # receives, never answers
    silent.setsockopt(zmq.LINGER, 0)
    if bind_url.startswith("tcp"):
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        url = f"tcp://127.0.0.1:{port}"
    else:
        silent.bind(bind_url)
        url = bind_url
    with Sender(f"req+connect:{url}", send_timeout_seconds=0.3) as tx:
        try:
            with pytest.raises(OverloadedError, match=r"no answer within 0\.3 s"):
                tx.send(frame("cam", 0), b"p")
            assert silent.poll(TIMEOUT * 1000)
            assert decode(silent.recv_multipart())[0] == frame("cam", 0)
        finally:
            silent.close()
        with bind_again(f"rep+bind:{url}") as rx, serving(rx) as got:
            try:
                assert tx.send(frame("cam", 1), b"p")  # a plain REQ socket: EFSM here
            except BrokenResourceError:
                # The silent peer's disconnection reached the sender only once this request
                # was on its way (ipc: at once or a little later): it says "may be lost,
                # send it again", so the caller does, and the receiver may get it twice.
                assert tx.send(frame("cam", 1), b"p")
            assert tx.send_eos("cam", last_seq=1) is not None
    received = [m for m, _ in got]
    assert received[-1] == EndOfStream(source_id="cam", last_seq=1)
    assert set(received[:-1]) == {frame("cam", 1)} and len(received) <= 3


_SILENT_PEER = """
import sys, zmq
rep = zmq.Context.instance().socket(zmq.REP)
rep.bind(sys.argv[1])
print("ready", flush=True)
rep.recv_multipart()
print("got", flush=True)
sys.stdin.read()
"""


def test_a_killed_and_restarted_rep_peer(tmp_path: Path, scheme: str) -> None:
    url = f"tcp://127.0.0.1:{free_port()}" if scheme == "tcp" else f"ipc://{tmp_path}/rep"
    with subprocess.Popen(
        [sys.executable, "-c", _SILENT_PEER, url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as peer:
        try:
            got = _send_through_a_kill(peer, url)
        finally:
            peer.kill()
    assert [(m, p) for m, p in got] == [
        (frame("cam", 0), b"again"), (frame("cam", 1), b"next"),
        (EndOfStream(source_id="cam", last_seq=1), None),
    ]


def _send_through_a_kill(
    peer: subprocess.Popen[str], url: str
) -> list[tuple[Message, bytes | None]]:
    assert peer.stdout is not None and peer.stdout.readline() == "ready\n"

    def kill_once_received() -> None:
        assert peer.stdout is not None and peer.stdout.readline() == "got\n"
        peer.kill()  # SIGKILL: the request dies with it, unanswered

    killer = threading.Thread(target=kill_once_received, name="ts/test/killer")
    killer.start()
    # No timeout: without noticing the disconnection this would wait forever.
    with Sender(f"req+connect:{url}") as tx:
        started = time.monotonic()
        with pytest.raises(BrokenResourceError, match="disconnected before answering"):
            tx.send(frame("cam", 0), b"lost")
        assert time.monotonic() - started < TIMEOUT
        killer.join(TIMEOUT)
        with bind_again(f"rep+bind:{url}") as rx, serving(rx) as got:
            assert tx.send(frame("cam", 0), b"again")  # the caller sends it again
            assert tx.send(frame("cam", 1), b"next")
            assert tx.send_eos("cam", last_seq=1) is not None
    return got


def test_a_module_on_rep_serves_the_video_adapter_and_the_sdk(
    tmp_path: Path, scheme: str
) -> None:
    if scheme == "tcp":
        inbound, outbound = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    else:
        inbound, outbound = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    clip = write_video(tmp_path / "clip.mp4", SyntheticVideo(width=96, height=64), 20,
                       codec="libx264")
    module = Module([], inbound=f"rep+bind:{inbound}", outbound=f"push+bind:{outbound}")
    results: list[ResultMessage] = []

    def collect() -> None:
        ended: set[str] = set()
        with Receiver(f"pull+connect:{outbound}") as inbox:
            while ended != {"clip", "app"}:
                message, _ = inbox.recv(TIMEOUT * 3)
                if isinstance(message, ResultMessage):
                    results.append(message)
                elif isinstance(message, EndOfStream):
                    ended.add(message.source_id)

    thread = threading.Thread(target=module.run, name="ts/test/module")
    thread.start()
    try:
        assert module.ready.wait(TIMEOUT)
        out = threading.Thread(target=collect, name="ts/test/collect")
        out.start()
        report = send_video(str(clip), f"req+connect:{inbound}", source_id="clip")
        assert (report.frames, report.acknowledged) == (20, True)
        with Source(f"req+connect:{inbound}", send_timeout_seconds=TIMEOUT) as source:
            for seq in range(3):
                pixels = bytes([seq * 40]) * (32 * 24 * 3)
                source.send_frame("app", pixels, width=32, height=24)
            source.send_eos("app")
        out.join(TIMEOUT * 3)
        stats = module.statistics()
    finally:
        module.stop()
        thread.join(TIMEOUT * 3)
    assert sorted(r.seq for r in results if r.source_id == "clip") == list(range(20))
    assert [r.seq for r in results if r.source_id == "app"] == [0, 1, 2]
    assert stats.inbound.received == 20 + 1 + 3 + 1
    assert stats.inbound.acks_sent == stats.inbound.received
    assert stats.inbound.rejected_total == 0 and not stats.messages_refused


# helpers -----------------------------------------------------------------------------------


@pytest.fixture(params=["tcp", "ipc"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def bind_again(endpoint: str) -> Iterator[Receiver]:
    """A receiver bound where a closed or killed one was (a TCP port frees asynchronously)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            receiver = Receiver(endpoint)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with receiver:
        yield receiver
