"""JSON lines: one line of metadata per frame, the format people and tools read."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from torchstream._errors import BrokenResourceError
from torchstream.frame import Frame, encode_json
from torchstream.pipeline._session import Session

__all__ = ["JsonLinesSink"]


class JsonLinesSink:
    """Writes each frame's metadata as one JSON line (see the README for the schema).

    All sources go to one file, each source's lines in order (lines of different sources
    interleave). ``path`` may be ``-`` for standard output. The file is flushed at the end of
    every session and closed by ``close`` (idempotent). An unwritable path raises
    :class:`~torchstream.BrokenResourceError` naming it at the first write.
    """

    def __init__(self, path: str | Path, *, name: str = "jsonl") -> None:
        self.name = name
        self.path = str(path)
        self._file: IO[bytes] | None = None
        self._closed = False
        self.lines_written = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            if self.path == "-":
                import sys

                self._file = sys.stdout.buffer
            else:
                try:
                    self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
                except OSError as exc:
                    raise BrokenResourceError(
                        f"cannot write JSON lines to {self.path}: {exc.strerror}"
                    ) from exc
        return self._file

    def write(self, frame: Frame) -> None:
        file = self._open()
        file.write(encode_json(frame) + b"\n")
        self.lines_written += 1

    def end_session(self, session: Session) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        file, self._file = self._file, None
        if file is None:
            return
        file.flush()
        if self.path != "-":
            file.close()
