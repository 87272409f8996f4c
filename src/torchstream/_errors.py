"""The error classes of torchstream: one base and a short list under it."""

from __future__ import annotations

__all__ = [
    "BrokenResourceError",
    "ClosedResourceError",
    "MissingDependencyError",
    "OverloadedError",
    "PipelineError",
    "ProtocolError",
    "SourceError",
    "StageError",
    "TorchStreamError",
]


class TorchStreamError(Exception):
    """Base class of every error torchstream raises on purpose."""


class ClosedResourceError(TorchStreamError):
    """You used a channel, pipeline or sink after closing it yourself."""


class BrokenResourceError(TorchStreamError):
    """The other side went away: a channel's consumer stopped, a sink's file became unwritable."""


class OverloadedError(TorchStreamError):
    """A non-blocking put found a bounded channel full."""


class SourceError(TorchStreamError):
    """An input could not be opened or read: missing file, unsupported or corrupt media,
    unreachable URL. The message names the input; other sources are not affected."""

    def __init__(self, source_id: str, message: str) -> None:
        super().__init__(f"{source_id}: {message}")
        self.source_id = source_id
        self.reason = message


class StageError(TorchStreamError):
    """A stage raised while processing a frame. The frame is dropped (reason ``stage_error``)
    and the error is recorded on its session; other frames and sources go on."""

    def __init__(self, stage: str, source_id: str, seq: int, cause: BaseException) -> None:
        super().__init__(f"stage {stage!r} failed on {source_id}#{seq}: {cause!r}")
        self.stage = stage
        self.source_id = source_id
        self.seq = seq


class PipelineError(TorchStreamError):
    """The pipeline itself failed (a bug in torchstream or a stage's setup); raised on exit."""


class ProtocolError(TorchStreamError):
    """A message from a socket broke torchstream's wire protocol (``torchstream.transport``):
    wrong number of parts, an undecodable or oversized header, another protocol version, a
    payload that does not match its header. ``reason`` is a short stable name for metrics
    (``wrong_version``, ``payload_mismatch``, ...), ``detail`` says what exactly was wrong.
    Receivers count it under its reason, log it and drop the message; they never stop for it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MissingDependencyError(TorchStreamError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed: pip install 'torchstream[{extra}]'"
        )
