"""Annotated video files, one per source."""

from __future__ import annotations

import contextlib
import os
import re
import string
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torchstream._draw import AnnotationStyle, annotate
from torchstream._errors import BrokenResourceError, ClosedResourceError
from torchstream.codecs._encode import VideoEncoder
from torchstream.pipeline._channel import Channel, EndOfChannel

if TYPE_CHECKING:
    from torchstream.frame import Frame
    from torchstream.pipeline._session import Session

__all__ = ["VideoSink"]

_FIELDS = frozenset({"source_id", "session"})
_MEDIA_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".webm", ".ts", ".m4v", ".flv", ".h264", ".h265", ".hevc"}
)
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


class _EncoderThread:
    """One file's encoder on a thread of its own (``ts/encode/<file>``), fed through a bounded
    queue: the sink's thread only draws, starts the download of the canvas to pinned host
    memory (asynchronous on CUDA) and moves on; x264 runs here. The first frame is encoded on
    the caller's thread so that a file that cannot be created fails at once."""

    def __init__(self, encoder: VideoEncoder, *, capacity: int = 8) -> None:
        self.encoder = encoder
        self._queue: Channel[tuple[torch.Tensor, torch.cuda.Event | None, float | None]] = (
            Channel(f"encode/{encoder.path.name}", capacity)
        )
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, canvas: torch.Tensor, pts_seconds: float | None) -> None:
        if self._error is not None:
            raise BrokenResourceError(f"{self.encoder.path}: {self._error}") from self._error
        if self._thread is None:  # first frame: open the file here, errors surface now
            self.encoder.encode(canvas, pts_seconds=pts_seconds)
            self._thread = threading.Thread(
                target=self._run, name=f"ts/encode/{self.encoder.path.name}", daemon=True
            )
            self._thread.start()
            return
        ready: torch.cuda.Event | None = None
        host = canvas
        if canvas.is_cuda:
            host = torch.empty(canvas.shape, dtype=canvas.dtype, pin_memory=True)
            host.copy_(canvas, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        self._queue.put((host, ready, pts_seconds))

    def _run(self) -> None:
        while True:
            try:
                host, ready, pts_seconds = self._queue.get()
            except EndOfChannel:
                return
            if self._error is not None:
                continue  # the file is gone: drain so the sink never blocks on us
            try:
                if ready is not None:
                    ready.synchronize()
                self.encoder.encode(host, pts_seconds=pts_seconds)
            except Exception as exc:
                self._error = exc

    def finish(self) -> None:
        """Encode what is queued, finish the file; raise the first error it met."""
        self._queue.close()
        if self._thread is not None:
            self._thread.join()
        try:
            self.encoder.close()
        except Exception as exc:
            self._error = self._error or exc
        if self._error is not None:
            raise self._error


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
    with ``style`` on the sink's thread (on the frame's device); each file is then encoded on
    a thread of its own (``ts/encode/<file>``) fed by a bounded queue, the canvas reaching it
    through an asynchronous copy to pinned memory when it is on the GPU. A full queue makes
    ``write`` wait, which the pipeline turns into dropped frames for live sources and
    backpressure for files. An encoding error surfaces at the source's next ``write`` or at
    the end of its session.

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
        self._encoders: dict[str, _EncoderThread] = {}
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
        frame.require_surface(f"sink {self.name!r}")
        broken = self._broken.get(frame.source_id)
        if broken is not None:
            raise BrokenResourceError(
                f"sink {self.name!r}: source {frame.source_id!r} lost its file until its "
                f"session ends: {broken}"
            ) from broken
        canvas = annotate(frame, self._style)
        worker = self._encoders.get(frame.source_id)
        if worker is None:
            worker = self._open(frame.source_id)
        first = worker.encoder.frames_written == 0
        try:
            worker.submit(canvas, frame.pts_seconds)
        except BrokenResourceError as exc:
            del self._encoders[frame.source_id]
            self._broken[frame.source_id] = exc
            with contextlib.suppress(Exception):  # already reported above
                worker.finish()
            raise
        if first:
            self._paths.append(worker.encoder.path)

    def end_session(self, session: Session) -> None:
        """Finish the file of the session's source, if it has one open."""
        self._broken.pop(session.source_id, None)
        worker = self._encoders.pop(session.source_id, None)
        if worker is not None:
            worker.finish()

    def close(self) -> None:
        """Finish every open file (idempotent); raises the first error after trying them all."""
        if self._closed:
            return
        self._closed = True
        workers, self._encoders = list(self._encoders.values()), {}
        error: BaseException | None = None
        for worker in workers:
            try:
                worker.finish()
            except Exception as exc:  # keep closing the others, then report the first
                error = error or exc
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"VideoSink({self._template!r}, name={self.name!r}, files={len(self._paths)})"

    def _open(self, source_id: str) -> _EncoderThread:
        if self._first_source is None:
            self._first_source = source_id
        index = self._files_per_source.get(source_id, 0)
        self._files_per_source[source_id] = index + 1
        path = self._file_for(source_id, index)
        taken = set(self._paths) | {w.encoder.path for w in self._encoders.values()}
        candidate, n = path, 1
        while candidate in taken:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        encoder = VideoEncoder(candidate, crf=self._crf, preset=self._preset, fps=self._fps)
        worker = _EncoderThread(encoder)
        self._encoders[source_id] = worker
        return worker

    def _file_for(self, source_id: str, index: int) -> Path:
        # A source named after its file ("clip.mp4") should not give "out-clip.mp4.mp4".
        base = Path(source_id)
        name = base.stem if base.suffix.lower() in _MEDIA_SUFFIXES and base.stem else source_id
        safe = safe_filename_part(name)
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
