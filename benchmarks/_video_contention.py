"""Part ``contention`` of benchmarks/video.py: does decoding slow the model stage down, and
where does the interference come from (the GPU itself, or the process: GIL, driver locks)?

The sample's model stage runs alone on preloaded 1080p frames (as in ``stage_alone``) while
N PyNvVideoCodec decoders loop over the clip: in no other thread, in threads of this process,
in another process; and beside a pure-Python busy thread (the GIL alone).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from _video_models import Variant, stage_alone


def _decode_loop(path: str, stop: Any, counts: Any, index: int) -> None:
    import PyNvVideoCodec as nvc
    import torch

    while not stop.is_set():
        demuxer = nvc.CreateDemuxer(filename=path)
        decoder = nvc.CreateDecoder(
            gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True,
            outputColorType=nvc.OutputColorType.RGB,
        )
        for packet in demuxer:
            for picture in decoder.Decode(packet):
                torch.utils.dlpack.from_dlpack(picture)
                counts[index] += 1
            if stop.is_set():
                return


def _process_decoders(path: str, streams: int, stop: Any, counts: Any) -> None:
    threads = [threading.Thread(target=_decode_loop, args=(path, stop, counts, i))
               for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def contention(
    clip: Path, model: str, weights: Path | None, variant: Variant, streams: int
) -> list[dict[str, Any]]:
    rows = []
    seconds = 6.0
    for mode in ("none", "threads", "process", "python"):
        context = multiprocessing.get_context("spawn")
        stop: Any = threading.Event() if mode in ("threads", "python") else context.Event()
        counts: Any = [0] * streams if mode == "threads" else context.Array("q", streams)
        workers: list[Any] = []
        if mode == "threads":
            workers = [threading.Thread(target=_decode_loop, args=(str(clip), stop, counts, i),
                                        daemon=True) for i in range(streams)]
        elif mode == "process":
            workers = [context.Process(target=_process_decoders,
                                       args=(str(clip), streams, stop, counts))]
        elif mode == "python":
            def spin(stop: Any = stop) -> None:
                x = 0
                while not stop.is_set():
                    x += 1
            workers = [threading.Thread(target=spin, daemon=True)]
        for worker in workers:
            worker.start()
        time.sleep(3.0 if mode == "process" else 1.0)  # the decoders get going
        before = sum(counts) if mode in ("threads", "process") else 0
        started = time.perf_counter()
        fps = stage_alone(model, weights, variant, 32, seconds=seconds)
        elapsed = time.perf_counter() - started
        decoded = (sum(counts) - before) / elapsed if mode in ("threads", "process") else None
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        rows.append({"variant": variant.name, "decoders": mode if mode != "threads"
                     else f"{streams} threads", "stage_fps": fps, "decode_fps": decoded})
        if mode == "process":
            rows[-1]["decoders"] = f"{streams} in another process"
    return rows
