"""Endpoints: ``<type>+<bind|connect>:<url>`` strings, and the configured sockets they open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from torchstream._errors import MissingDependencyError

try:
    import zmq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["Endpoint", "SocketOptions", "SocketType"]

SocketType = Literal["dealer", "router", "req", "rep", "pub", "sub", "push", "pull"]
"""ZeroMQ socket types an endpoint may name. Pairs: dealer -> router, req -> rep,
pub -> sub, push -> pull (sender first)."""

Mode = Literal["bind", "connect"]

_TYPES: tuple[str, ...] = get_args(SocketType)
_MODES: tuple[str, ...] = get_args(Mode)
_EXAMPLE = "router+bind:tcp://0.0.0.0:5555"
_MAX_IPC_PATH_BYTES = 107  # sun_path of a Unix socket address, less the terminating NUL

# pub opens an XPUB socket: the same wire protocol, plus subscriptions the application can
# read and XPUB_NODROP, which turns a silent drop at a subscriber's high-water mark into
# EAGAIN that the sender counts.
_ZMQ_TYPES = {
    "dealer": zmq.DEALER, "router": zmq.ROUTER, "req": zmq.REQ, "rep": zmq.REP,
    "pub": zmq.XPUB, "sub": zmq.SUB, "push": zmq.PUSH, "pull": zmq.PULL,
}


@dataclass(frozen=True)
class SocketOptions:
    """How :meth:`Endpoint.open` configures a socket.

    ``high_water_mark``: messages queued per peer and direction (ZMQ_SNDHWM and ZMQ_RCVHWM)
    before a reliable sender blocks or a publisher drops; with large payloads, count in
    frames, not bytes. ``linger_seconds``: how long closing waits to deliver messages still
    queued (0: discard them). ``max_part_bytes``: libzmq's ZMQ_MAXMSGSIZE, a part larger than
    this disconnects its peer (None: no cap; receivers set it from their
    :class:`~torchstream.transport.Limits`).
    """

    high_water_mark: int = 1000
    linger_seconds: float = 1.0
    max_part_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.high_water_mark < 1:
            raise ValueError(f"high_water_mark must be >= 1, got {self.high_water_mark}")
        if self.linger_seconds < 0:
            raise ValueError(f"linger_seconds must be >= 0, got {self.linger_seconds}")
        if self.max_part_bytes is not None and self.max_part_bytes < 1:
            raise ValueError(f"max_part_bytes must be >= 1 or None, got {self.max_part_bytes}")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open a ZeroMQ socket: ``router+bind:tcp://0.0.0.0:5555``.

    ``url`` is ``tcp://HOST:PORT`` (``*`` for all interfaces or, when binding, any free port;
    IPv6 hosts in brackets) or ``ipc://PATH`` (a Unix socket file; ``@name`` for Linux's
    abstract namespace). Construction checks all of it and raises ``ValueError`` naming what
    is wrong; ``str()`` gives back the string :meth:`parse` reads.
    """

    socket_type: SocketType
    mode: Mode
    url: str

    def __post_init__(self) -> None:
        if self.socket_type not in _TYPES:
            raise ValueError(
                f"socket type {self.socket_type!r} is unknown; use one of {', '.join(_TYPES)}"
            )
        if self.mode not in _MODES:
            raise ValueError(f"mode {self.mode!r} is unknown; use bind or connect")
        scheme, sep, address = self.url.partition("://")
        if not sep:
            raise ValueError(f"url {self.url!r} has no scheme; use tcp://HOST:PORT or ipc://PATH")
        if scheme == "tcp":
            self._check_tcp(address)
        elif scheme == "ipc":
            if not address:
                raise ValueError(f"url {self.url!r} has no path after ipc://")
            if not address.startswith("@") and len(address.encode()) > _MAX_IPC_PATH_BYTES:
                raise ValueError(
                    f"ipc path of {len(address.encode())} bytes is too long for a Unix socket "
                    f"(at most {_MAX_IPC_PATH_BYTES}): {address!r}"
                )
        else:
            raise ValueError(
                f"url scheme {scheme!r} in {self.url!r} is not supported; use tcp:// or ipc://"
            )

    def _check_tcp(self, address: str) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"url {self.url!r} needs a host and a port: tcp://HOST:PORT")
        if host.startswith("[") != host.endswith("]"):
            raise ValueError(f"url {self.url!r}: an IPv6 host goes in brackets, [::1]")
        if host == "*" and self.mode == "connect":
            raise ValueError(f"url {self.url!r}: connect needs a host, '*' is only for bind")
        if port == "*":
            if self.mode == "connect":
                raise ValueError(f"url {self.url!r}: connect needs a port number, not '*'")
            return
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"url {self.url!r}: port {port!r} must be a number in 1..65535"
                + (" (or '*' for any free port)" if self.mode == "bind" else "")
            )

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Read ``<type>+<bind|connect>:<url>``, e.g. ``push+connect:ipc:///tmp/in.sock``."""
        head, colon, url = text.partition(":")
        socket_type, plus, mode = head.partition("+")
        if not colon or not url:
            raise ValueError(f"endpoint {text!r} must look like '<type>+<mode>:<url>' ({_EXAMPLE})")
        if not plus:
            raise ValueError(
                f"endpoint {text!r} lacks '+bind' or '+connect' after the socket type "
                f"({_EXAMPLE})"
            )
        if socket_type not in _TYPES:
            raise ValueError(
                f"endpoint {text!r}: socket type {socket_type!r} is unknown; use one of "
                f"{', '.join(_TYPES)}"
            )
        if mode not in _MODES:
            raise ValueError(f"endpoint {text!r}: mode {mode!r} must be bind or connect")
        return cls(socket_type, mode, url)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.socket_type}+{self.mode}:{self.url}"

    @property
    def reliable(self) -> bool:
        """False for pub/sub, which drop for slow subscribers; the other pairs block instead."""
        return self.socket_type not in ("pub", "sub")

    @property
    def scheme(self) -> Literal["tcp", "ipc"]:
        return "tcp" if self.url.startswith("tcp://") else "ipc"

    def open(
        self,
        context: zmq.Context[Any] | None = None,
        *,
        options: SocketOptions = SocketOptions(),
    ) -> zmq.Socket[Any]:
        """Create the socket, configure it, bind or connect it; the caller closes it.

        Besides ``options``: router sockets get ZMQ_ROUTER_MANDATORY (an unroutable or full
        peer raises instead of dropping silently); req sockets get ZMQ_REQ_RELAXED and
        ZMQ_REQ_CORRELATE (a lost answer does not lock the socket, a late one is dropped);
        pub opens an XPUB with ZMQ_XPUB_NODROP
        (a send to a subscriber at its high-water mark raises ``zmq.Again`` when sent with
        NOBLOCK, so drops can be counted) and ZMQ_XPUB_VERBOSER (every subscribe and
        unsubscribe is readable). Sub sockets subscribe to nothing: the caller does.
        A ``zmq.asyncio.Context`` gives an asyncio socket configured the same way.
        Raises ``OSError`` when the address cannot be bound or connected.
        """
        ctx = zmq.Context.instance() if context is None else context
        sock: zmq.Socket[Any] = ctx.socket(_ZMQ_TYPES[self.socket_type])
        try:
            sock.setsockopt(zmq.LINGER, round(options.linger_seconds * 1000))
            sock.setsockopt(zmq.SNDHWM, options.high_water_mark)
            sock.setsockopt(zmq.RCVHWM, options.high_water_mark)
            if options.max_part_bytes is not None:
                sock.setsockopt(zmq.MAXMSGSIZE, options.max_part_bytes)
            if self.socket_type == "router":
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            elif self.socket_type == "req":
                sock.setsockopt(zmq.REQ_RELAXED, 1)
                sock.setsockopt(zmq.REQ_CORRELATE, 1)
            elif self.socket_type == "pub":
                sock.setsockopt(zmq.XPUB_NODROP, 1)
                sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if self.url.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            if self.mode == "bind":
                sock.bind(self.url)
            else:
                sock.connect(self.url)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise OSError(exc.errno, f"cannot {self.mode} {self}: {exc.strerror}") from exc
        return sock

    def resolved(self, sock: zmq.Socket[Any]) -> Endpoint:
        """This endpoint with the address ``sock`` actually bound (a real port for ``*``)."""
        if self.mode != "bind":
            return self
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        url = last.decode() if isinstance(last, bytes) else str(last)
        return Endpoint(self.socket_type, self.mode, url)
