"""Annotated video files, one per source."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING

from torchstream._draw import AnnotationStyle, annotate
from torchstream._errors import BrokenResourceError, ClosedResourceError
from torchstream.codecs._encode import VideoEncoder

if TYPE_CHECKING:
    from torchstream.frame import Frame
    from torchstream.pipeline._session import Session

__all__ = ["VideoSink"]

_FIELDS = frozenset({"source_id", "session"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DEFAULT_STYLE = AnnotationStyle()


def safe_filename_part(source_id: str) -> str:
    """``source_id`` reduced to characters safe in a file name on every OS.

    Runs of anything but letters, digits, ``.``, ``_`` and ``-`` become one ``_``; leading dots
    are dropped (no hidden files, no ``..``); at most 100 characters; never empty.
    ``"rtsp://10.0.0.5/cam 1"`` becomes ``"rtsp_10.0.0.5_cam_1"``.
    """
    cleaned = _UNSAFE.sub("_", source_id).lstrip(".")[:100]
    return cleaned or "source"


def _fields(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"path {template!r} is not a valid template: {exc}") from None


class VideoSink:
    """Writes each source's frames, annotated, to an H.264 video file of its own.

    File names: when ``path`` contains ``{source_id}`` (and optionally ``{session}``) it is a
    template, ``"out/{source_id}.mp4"``. Otherwise the first source to arrive writes to
    ``path`` itself and every other source to ``<stem>-<source_id><suffix>`` beside it
    (``out.mp4``, ``out-cam2.mp4``). Source ids are made safe for file names (see
    :func:`safe_filename_part`). A source that comes back after its session ended (an idle
    timeout) gets a new file: ``{session}`` counts its files from 0, and without that field
    ``-s<n>`` is added to the stem (``out-cam2-s1.mp4``). Two sources never share a file:
    on a clash, ``-2``, ``-3``... is added. Existing files are overwritten.

    Each file is opened at its source's first frame (sized like it; see
    :class:`~torchstream.codecs.VideoEncoder` for odd sizes, timing and the ``crf`` and
    ``preset`` options), finished at :meth:`end_session` and any still open at :meth:`close`.
    ``fps`` is the frame rate assumed for frames without ``pts_seconds`` (30 when None);
    frames with pts keep their own timing. The frame's surface is annotated on a new canvas
    with ``style`` and copied to the host here, on the sink's thread.

    Errors: a missing or unwritable output directory raises ValueError here, at construction
    (or, when the directory itself depends on ``{source_id}``,
    :class:`~torchstream.BrokenResourceError` at the source's first frame). A file that cannot
    be created or written (a full disk) raises :class:`~torchstream.BrokenResourceError`
    naming it, and so does every later frame of that source until its session ends. A frame
    without a surface raises ValueError naming its source; ``write`` after ``close`` raises
    :class:`~torchstream.ClosedResourceError`. ``close`` is idempotent.

    Rule of thumb: use ``.mkv`` when a crash must not lose the recording so far.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        style: AnnotationStyle = _DEFAULT_STYLE,
        crf: int = 23,
        preset: str = "veryfast",
        fps: float | None = None,
        name: str = "video",
    ) -> None:
        self.name = name
        self._template = str(path)
        fields = _fields(self._template)
        if not fields <= _FIELDS:
            raise ValueError(
                f"path may only use the fields {sorted(_FIELDS)}, got {sorted(fields)} in "
                f"{self._template!r}"
            )
        self._is_template = "source_id" in fields
        self._has_session = "session" in fields
        if self._has_session and not self._is_template:
            raise ValueError(f"a path with {{session}} also needs {{source_id}}: {str(path)!r}")
        directory = Path(self._template).parent
        if not _fields(str(directory)):
            # Fail now rather than at the first frame, after models have loaded.
            where = f"path {str(path)!r}: directory {str(directory)!r}"
            if not directory.exists():
                raise ValueError(f"{where} does not exist")
            if not directory.is_dir():
                raise ValueError(f"{where} is not a directory")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ValueError(f"{where} is not writable")
        self._style = style
        self._fps = 30.0 if fps is None else fps
        self._crf = crf
        self._preset = preset
        self._encoders: dict[str, VideoEncoder] = {}
        self._broken: dict[str, BrokenResourceError] = {}
        self._files_per_source: dict[str, int] = {}
        self._first_source: str | None = None
        self._paths: list[Path] = []
        self._closed = False
        # Check the options and suffix now, not at the first frame (this opens no file).
        VideoEncoder(self._file_for("check", 0), crf=crf, preset=preset, fps=self._fps)

    @property
    def written_paths(self) -> list[Path]:
        """The files this sink has created so far, in the order they were opened."""
        return list(self._paths)

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise ClosedResourceError(f"sink {self.name!r} is closed")
        if frame.surface is None:
            raise ValueError(
                f"sink {self.name!r}: frame {frame.source_id}#{frame.seq} of source "
                f"{frame.source_id!r} has no surface; a video sink needs decoded pixels"
            )
        broken = self._broken.get(frame.source_id)
        if broken is not None:
            raise BrokenResourceError(
                f"sink {self.name!r}: source {frame.source_id!r} lost its file until its "
                f"session ends: {broken}"
            ) from broken
        canvas = annotate(frame, self._style)
        encoder = self._encoders.get(frame.source_id)
        if encoder is None:
            encoder = self._open(frame.source_id)
        first = encoder.frames_written == 0
        try:
            encoder.encode(canvas, pts_seconds=frame.pts_seconds)
        except BrokenResourceError as exc:
            del self._encoders[frame.source_id]
            self._broken[frame.source_id] = exc
            raise
        if first:
            self._paths.append(encoder.path)

    def end_session(self, session: Session) -> None:
        """Finish the file of the session's source, if it has one open."""
        self._broken.pop(session.source_id, None)
        encoder = self._encoders.pop(session.source_id, None)
        if encoder is not None:
            encoder.close()

    def close(self) -> None:
        """Finish every open file (idempotent); raises the first error after trying them all."""
        if self._closed:
            return
        self._closed = True
        encoders, self._encoders = list(self._encoders.values()), {}
        error: BaseException | None = None
        for encoder in encoders:
            try:
                encoder.close()
            except Exception as exc:  # keep closing the others, then report the first
                error = error or exc
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"VideoSink({self._template!r}, name={self.name!r}, files={len(self._paths)})"

    def _open(self, source_id: str) -> VideoEncoder:
        if self._first_source is None:
            self._first_source = source_id
        index = self._files_per_source.get(source_id, 0)
        self._files_per_source[source_id] = index + 1
        path = self._file_for(source_id, index)
        taken = set(self._paths) | {e.path for e in self._encoders.values()}
        candidate, n = path, 1
        while candidate in taken:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        encoder = VideoEncoder(candidate, crf=self._crf, preset=self._preset, fps=self._fps)
        self._encoders[source_id] = encoder
        return encoder

    def _file_for(self, source_id: str, index: int) -> Path:
        safe = safe_filename_part(source_id)
        if self._is_template:
            path = Path(self._template.format(source_id=safe, session=index))
            if self._has_session or index == 0:
                return path
            return path.with_name(f"{path.stem}-s{index}{path.suffix}")
        path = Path(self._template)
        stem = path.stem if source_id == self._first_source else f"{path.stem}-{safe}"
        if index > 0:
            stem = f"{stem}-s{index}"
        return path.with_name(stem + path.suffix)
