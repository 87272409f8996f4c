"""The client SDK (``pip install 'torchstream[transport]'``): send images and video to a
pipeline module over ZeroMQ, and read its results, blocking or with asyncio.

- :class:`Source` / :class:`AsyncSource` send images (JPEG, PNG), raw pictures and encoded
  video packets, and end-of-stream. Each send returns a :class:`SendResult` with the W3C
  trace id it started: the active OpenTelemetry span's trace when there is one.
- :class:`Sink` / :class:`AsyncSink` iterate :class:`Result` objects (frame metadata,
  optional content, end-of-stream markers), each with the trace id of the request that
  caused it, filtered by source id or prefix, until an idle timeout.
- :class:`NatsSink` / :class:`AsyncNatsSink` read the same results from NATS JetStream
  workers (``torchstream worker``; needs ``torchstream[nats]``), each once: results of a
  fenced worker and copies are dropped and counted; live, or from the results stream.
- :class:`Matcher` / :class:`AsyncMatcher` route results to futures of pending requests;
  :class:`AsyncClient` puts it together for request/response services.

Endpoints are written as for :mod:`torchstream.transport`: ``dealer+connect:tcp://host:5555``.
Both flavours share one sans-IO core, so they check, number and trace requests identically.
"""

from torchstream.client._async_client import AsyncClient
from torchstream.client._async_nats_sink import AsyncNatsSink
from torchstream.client._async_sink import AsyncSink
from torchstream.client._async_source import AsyncSource
from torchstream.client._matcher import AsyncMatcher, Matcher, MatcherStatistics
from torchstream.client._nats_sink import NatsSink
from torchstream.client._requests import ImageFormat, RawFormat, SendResult, image_format
from torchstream.client._results import ContentKind, Result
from torchstream.client._sink import Sink
from torchstream.client._sockets import SinkStatistics, SourceStatistics
from torchstream.client._source import Source
from torchstream.client._trace import new_traceparent

__all__ = [
    "AsyncClient",
    "AsyncMatcher",
    "AsyncNatsSink",
    "AsyncSink",
    "AsyncSource",
    "ContentKind",
    "ImageFormat",
    "Matcher",
    "MatcherStatistics",
    "NatsSink",
    "RawFormat",
    "Result",
    "SendResult",
    "Sink",
    "SinkStatistics",
    "Source",
    "SourceStatistics",
    "image_format",
    "new_traceparent",
]
