"""ZeroMQ transport (``pip install 'torchstream[transport]'``): frames into a pipeline running
in another process, results out of it.

An :class:`Endpoint` is written ``<type>+<bind|connect>:<url>``
(``router+bind:tcp://0.0.0.0:5555``). A :class:`Sender` (dealer, req, push or pub) sends
protocol messages, a :class:`Receiver` (router, rep, pull or sub) receives them, checked. The
protocol itself, :func:`encode` / :func:`decode` and the message types, does no I/O and can
serve any other socket layer (asyncio included).

Reliable pairs (dealer -> router, req -> rep, push -> pull) block the sender when the
receiver does not keep up; pub -> sub drops for slow subscribers and counts what it drops.
Nothing received is trusted: a malformed message is counted, logged and skipped, never
raised into your loop.
"""

from torchstream._errors import ProtocolError
from torchstream.transport._channel import (
    Receiver,
    ReceiverStatistics,
    Sender,
    SenderStatistics,
)
from torchstream.transport._endpoint import Endpoint, SocketOptions, SocketType
from torchstream.transport._module import Content, Module, ModuleStatistics, PublishSink
from torchstream.transport._protocol import (
    PROTOCOL_VERSION,
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    ImagePayload,
    Limits,
    Message,
    PacketPayload,
    Payload,
    RawPayload,
    Receipt,
    RejectReason,
    ResultAck,
    ResultMessage,
    Shutdown,
    decode,
    encode,
    topic_of,
)
from torchstream.transport._rejects import Rejects

__all__ = [
    "PROTOCOL_VERSION",
    "Content",
    "EndOfStream",
    "EndOfStreamAck",
    "Endpoint",
    "FrameMessage",
    "ImagePayload",
    "Limits",
    "Message",
    "Module",
    "ModuleStatistics",
    "PacketPayload",
    "Payload",
    "ProtocolError",
    "PublishSink",
    "RawPayload",
    "Receipt",
    "Receiver",
    "ReceiverStatistics",
    "RejectReason",
    "Rejects",
    "ResultAck",
    "ResultMessage",
    "Sender",
    "SenderStatistics",
    "Shutdown",
    "SocketOptions",
    "SocketType",
    "decode",
    "encode",
    "topic_of",
]
