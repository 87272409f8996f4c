"""Endpoint strings and the sockets they open."""

from __future__ import annotations

import pytest

zmq = pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream.transport import Endpoint, SocketOptions  # noqa: E402

GOOD = [
    "router+bind:tcp://0.0.0.0:5555",
    "dealer+connect:tcp://127.0.0.1:5555",
    "req+connect:tcp://localhost:1",
    "rep+bind:tcp://*:65535",
    "pub+bind:tcp://127.0.0.1:*",
    "sub+connect:tcp://[::1]:5555",
    "push+connect:ipc:///tmp/torchstream/in.sock",
    "pull+bind:ipc://@torchstream-in",
]


@pytest.mark.parametrize("text", GOOD)
def test_parse_round_trips(text: str) -> None:
    endpoint = Endpoint.parse(text)
    assert str(endpoint) == text
    assert Endpoint.parse(str(endpoint)) == endpoint


def test_parse_fields() -> None:
    endpoint = Endpoint.parse("router+bind:tcp://0.0.0.0:5555")
    assert (endpoint.socket_type, endpoint.mode, endpoint.url) == (
        "router", "bind", "tcp://0.0.0.0:5555"
    )
    assert endpoint.scheme == "tcp"
    assert Endpoint.parse("pull+bind:ipc://@x").scheme == "ipc"


@pytest.mark.parametrize(
    ("socket_type", "reliable"),
    [("dealer", True), ("router", True), ("req", True), ("rep", True), ("push", True),
     ("pull", True), ("pub", False), ("sub", False)],
)
def test_only_pub_sub_is_unreliable(socket_type: str, reliable: bool) -> None:
    assert Endpoint.parse(f"{socket_type}+bind:tcp://*:5555").reliable is reliable


BAD = [
    ("", "must look like"),
    ("router+bind", "must look like"),
    ("router:tcp://127.0.0.1:5555", "lacks '\\+bind' or '\\+connect'"),
    ("server+bind:tcp://127.0.0.1:5555", "socket type 'server' is unknown; use one of dealer"),
    ("router+listen:tcp://127.0.0.1:5555", "mode 'listen' must be bind or connect"),
    ("router+bind:127.0.0.1:5555", "has no scheme"),
    ("router+bind:localhost", "no scheme"),
    ("router+bind:udp://127.0.0.1:5555", "scheme 'udp' .* not supported; use tcp:// or ipc://"),
    ("router+bind:inproc://name", "scheme 'inproc' .* not supported"),
    ("router+connect:tcp://127.0.0.1", "needs a host and a port"),
    ("router+bind:tcp://:5555", "needs a host and a port"),
    ("router+connect:tcp://127.0.0.1:*", "connect needs a port number"),
    ("router+connect:tcp://*:5555", "'\\*' is only for bind"),
    ("router+bind:tcp://127.0.0.1:99999", "port '99999' must be a number in 1..65535"),
    ("router+bind:tcp://127.0.0.1:0", "port '0' must be a number"),
    ("router+bind:tcp://127.0.0.1:http", "port 'http' must be a number"),
    ("router+bind:tcp://[::1:5555", "IPv6 host goes in brackets"),
    ("router+bind:ipc://", "no path after ipc://"),
    ("router+bind:ipc:///" + "x" * 120, "too long for a Unix socket"),
]


@pytest.mark.parametrize(("text", "match"), BAD, ids=[text or "empty" for text, _ in BAD])
def test_parse_says_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Endpoint.parse(text)


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ValueError, match="socket type 'pair' is unknown"):
        Endpoint("pair", "bind", "tcp://*:5555")
    with pytest.raises(ValueError, match="scheme"):
        Endpoint("pull", "bind", "ws://x:1")


def test_socket_options_are_checked() -> None:
    with pytest.raises(ValueError, match="high_water_mark must be >= 1, got 0"):
        SocketOptions(high_water_mark=0)
    with pytest.raises(ValueError, match="linger_seconds"):
        SocketOptions(linger_seconds=-1)


def test_open_configures_the_socket() -> None:
    options = SocketOptions(high_water_mark=7, linger_seconds=0.25, max_part_bytes=1 << 20)
    router = Endpoint.parse("router+bind:tcp://127.0.0.1:*").open(options=options)
    try:
        assert router.getsockopt(zmq.SNDHWM) == 7
        assert router.getsockopt(zmq.RCVHWM) == 7
        assert router.getsockopt(zmq.LINGER) == 250
        assert router.getsockopt(zmq.MAXMSGSIZE) == 1 << 20
        assert router.getsockopt(zmq.TYPE) == zmq.ROUTER
        resolved = Endpoint.parse("router+bind:tcp://127.0.0.1:*").resolved(router)
        assert resolved.url.startswith("tcp://127.0.0.1:") and not resolved.url.endswith("*")
    finally:
        router.close()
    pub = Endpoint.parse("pub+bind:tcp://127.0.0.1:*").open()
    try:
        assert pub.getsockopt(zmq.TYPE) == zmq.XPUB  # XPUB: counted drops, see SocketOptions
    finally:
        pub.close()


def test_open_translates_bind_errors() -> None:
    first = Endpoint.parse("pull+bind:tcp://127.0.0.1:*")
    sock = first.open()
    try:
        taken = first.resolved(sock)
        with pytest.raises(OSError, match=f"cannot bind pull\\+bind:{taken.url}"):
            taken.open()
    finally:
        sock.close()
