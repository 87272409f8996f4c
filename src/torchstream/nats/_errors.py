"""The errors of the NATS layer, under :class:`~torchstream.TorchStreamError`."""

from __future__ import annotations

from torchstream._errors import BrokenResourceError, TorchStreamError

__all__ = ["JetStreamError", "LayoutError", "NatsUnavailableError"]


class JetStreamError(TorchStreamError):
    """The JetStream API refused a request: ``code`` is the HTTP-like status (400, 404, 503),
    ``error_code`` JetStream's own number (10059: stream not found, 10014: consumer not
    found, ...), ``description`` its words. Raised for requests this layer makes (creating
    streams and consumers, unpinning); deliveries report their statuses as
    :class:`~torchstream.nats.PullResult` outcomes instead."""

    def __init__(self, subject: str, code: int, error_code: int, description: str) -> None:
        super().__init__(f"{subject}: {description} (status {code}, error {error_code})")
        self.subject = subject
        self.code = code
        self.error_code = error_code
        self.description = description


class LayoutError(TorchStreamError):
    """The streams and consumers on the server do not fit the :class:`~torchstream.nats.Layout`
    asked for in a way that cannot be changed safely (another partition count re-maps every
    camera; a subject captured by a foreign stream). The message says what differs and how to
    start over."""


class NatsUnavailableError(BrokenResourceError):
    """The NATS server cannot be reached, or JetStream does not answer (not enabled, no meta
    leader in a cluster, timed out). The message names the URL or the request."""
