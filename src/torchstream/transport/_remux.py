"""Re-muxing the original video packets of a source's results into a file, without decoding
or encoding them (``torchstream sink video`` for ``module --content original``)."""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from torchstream._errors import BrokenResourceError
from torchstream.transport._protocol import PacketPayload

__all__ = ["PacketRemuxer"]

log = logging.getLogger(__name__)

_START_CODES = (b"\x00\x00\x01", b"\x00\x00\x00\x01")


@dataclass(order=True)
class _Held:
    seq: int
    data: bytes = field(compare=False)
    pts: int | None = field(compare=False)
    dts: int | None = field(compare=False)
    duration: int | None = field(compare=False)
    keyframe: bool = field(compare=False)


class PacketRemuxer:
    """Writes one source's packets into ``path`` (the container from its suffix: ``.mp4``,
    ``.mkv``, ``.ts``, ...) as they were encoded: no decoding, no quality loss, next to no
    CPU.

    Results come in display (pts) order, one per picture, while a container takes packets
    in decode order: with B-frames the two differ. The order is restored here from ``seq``:
    a sender numbers a stream's packets in the order it sends them, and that is decode order
    (the module decodes them in that order), so the packet whose seq is the next one due
    goes out at once and the others wait. The packet's ``dts`` (which source adapters copy
    from the demuxer) is its decode timestamp in the file. Ordering by dts alone would also
    work but cannot tell a late packet from a missing one; a missing seq (a result dropped
    by pub, a picture the pipeline dropped) is known to be missing only once
    ``reorder_window`` results wait behind it, after which the lowest waiting seq goes out
    and the gap is skipped. So memory and delay are bounded by ``reorder_window`` packets,
    which must exceed the stream's reordering depth (a few frames for H.264 B-frames).

    The file starts at a keyframe: results before the first one (a sink that joined mid-GOP)
    are skipped and counted in ``skipped``; so are results too late for their place (the
    window had moved past them) and packets whose dts does not increase (a sender without
    dts, whose stream has B-frames: without dts the pts stands in for it, which is right
    only without reordering). H.264 and HEVC arrive in Annex B with their parameter sets in
    band, from which MP4 and Matroska build their headers; Annex B ``extradata`` is put
    before the first packet. A packet without ``duration`` lasts as long as the step between
    the last two pictures shown (the frame interval of a constant-rate stream).
    """

    def __init__(self, path: str | Path, *, reorder_window: int = 32) -> None:
        if reorder_window < 1:
            raise ValueError(f"reorder_window must be >= 1, got {reorder_window}")
        self.path = Path(path)
        self._window = reorder_window
        self._container: Any = None
        self._stream: Any = None
        self._time_base = Fraction(1, 90000)
        self._extradata: bytes | None = None
        self._held: list[_Held] = []
        self._next_seq: int | None = None  # None: waiting for the first keyframe
        self._last_dts: int | None = None
        self._last_pts: int | None = None
        self._interval: int | None = None  # between the last two pictures shown
        self.written = 0
        self.skipped = 0

    def write(self, seq: int, description: PacketPayload, data: bytes | memoryview,
              *, keyframe: bool) -> None:
        """Take the packet of the result numbered ``seq`` (``keyframe``: it starts a GOP)."""
        pts = description.pts
        if pts is not None:  # results come in display order: pts steps are frame durations
            if self._last_pts is not None and pts > self._last_pts:
                self._interval = pts - self._last_pts
            self._last_pts = pts
        if self._next_seq is None:
            if not keyframe:
                self.skipped += 1
                return
            self._open(description)
            self._next_seq = seq
        if seq < self._next_seq:
            self.skipped += 1
            return
        heapq.heappush(self._held, _Held(seq, bytes(data), pts, description.dts,
                                         description.duration, keyframe))
        while self._held and (
            self._held[0].seq == self._next_seq or len(self._held) > self._window
        ):
            self._mux(heapq.heappop(self._held))

    def close(self) -> None:
        """Mux what waits (gaps skipped) and finish the file. Idempotent."""
        while self._held:
            self._mux(heapq.heappop(self._held))
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:  # av.FFmpegError, OSError
                raise BrokenResourceError(f"{self.path}: cannot finish the file: {exc}") from exc

    def _open(self, description: PacketPayload) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = av.open(str(self.path), "w")
        except (av.FFmpegError, OSError) as exc:
            raise BrokenResourceError(f"{self.path}: cannot open for writing: {exc}") from exc
        try:
            self._time_base = Fraction(*description.time_base)
            self._stream = container.add_mux_stream(
                description.codec, width=description.width, height=description.height,
                time_base=self._time_base,
            )
        except (ValueError, av.FFmpegError) as exc:
            container.close()
            raise BrokenResourceError(
                f"{self.path}: cannot hold {description.codec} packets: {exc}"
            ) from exc
        self._container = container
        extradata = description.extradata
        if extradata is not None and extradata.startswith(_START_CODES):
            self._extradata = extradata

    def _mux(self, held: _Held) -> None:
        import av

        self._next_seq = held.seq + 1
        dts = held.dts if held.dts is not None else held.pts
        if dts is not None and self._last_dts is not None and dts <= self._last_dts:
            self.skipped += 1
            log.warning("%s: packet #%d skipped: dts %d does not increase (last %d)",
                        self.path, held.seq, dts, self._last_dts)
            return
        data = held.data
        if self._extradata is not None:  # parameter sets before the first packet
            data, self._extradata = self._extradata + data, None
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = self._time_base
        packet.pts, packet.dts = held.pts, dts
        packet.is_keyframe = held.keyframe
        # MP4 needs the last picture's duration, or its edit list cuts that picture off.
        duration = held.duration if held.duration is not None else self._interval
        if duration is not None:
            packet.duration = duration
        try:
            self._container.mux(packet)
        except av.FFmpegError as exc:
            raise BrokenResourceError(f"{self.path}: cannot write packet #{held.seq}: {exc}") \
                from exc
        self._last_dts = dts
        self.written += 1
