"""The HTTP front end on a running module (``torchstream module``), through the client SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from torchstream._errors import BrokenResourceError, ClosedResourceError, OverloadedError
from torchstream.client._async_client import AsyncClient
from torchstream.http._backend import WARMUP_SOURCE_ID, Outcome, RequestFailed, _warmup_image
from torchstream.http._images import CheckedImage
from torchstream.pipeline._statistics import PipelineHealth
from torchstream.transport._endpoint import Endpoint

__all__ = ["ModuleBackend"]


class ModuleBackend:
    """Frames go to a module's input (``source_endpoint``, e.g. ``dealer+connect:…``),
    results come from its output (``results_endpoint``, e.g. ``sub+connect:…`` or, acknowledged,
    ``router+bind:…``), matched to requests by trace id. Ready once one warm-up image (as
    source ``warmup_source_id``) made the round trip (the module is up, its models loaded).
    A frame that the module drops is not reported over the wire: its request ends at its
    deadline (``504``).
    """

    def __init__(
        self,
        source_endpoint: Endpoint | str,
        results_endpoint: Endpoint | str,
        *,
        max_pending: int = 4096,
        timeout_seconds: float = 60.0,
        warmup_timeout_seconds: float = 600.0,
        warmup_source_id: str = WARMUP_SOURCE_ID,
    ) -> None:
        self._client = AsyncClient(
            source_endpoint, results_endpoint, max_pending=max_pending,
            timeout_seconds=timeout_seconds,
        )
        self._warmup_timeout = warmup_timeout_seconds
        self._warmup_source_id = warmup_source_id
        self._entered = False
        self._ready = False
        self._closing = False
        self._failure: str | None = None
        self._open: set[str] = set()

    async def start(self) -> None:
        await self._client.__aenter__()
        self._entered = True
        deadline = time.monotonic() + self._warmup_timeout
        # A subscriber may miss results published before its subscription reached the
        # module: ask again until one comes back.
        while True:
            try:
                await asyncio.wait_for(
                    self.submit(self._warmup_source_id, _warmup_image(),
                                deadline_monotonic=deadline,
                                traceparent=""),
                    min(5.0, max(0.1, deadline - time.monotonic())),
                )
                break
            except (asyncio.TimeoutError, RequestFailed) as exc:
                if time.monotonic() >= deadline:
                    self._failure = f"the module did not answer a warm-up image: {exc!r}"
                    await self.aclose()
                    raise BrokenResourceError(self._failure) from None
        await self.end_source(self._warmup_source_id)
        self._ready = True

    async def aclose(self) -> None:
        """End the sources this front end opened on the module (best effort), close the
        sockets."""
        self._closing = True
        self._ready = False
        if self._entered:
            for source_id in list(self._open):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.end_source(source_id), 2.0)
            await self._client.aclose()

    def health(self) -> PipelineHealth:
        if self._failure is not None:
            return PipelineHealth(False, False, self._failure)
        if self._closing:
            return PipelineHealth(False, False, "stopped")
        if not self._ready:
            return PipelineHealth(True, False, "waiting for the module to answer")
        return PipelineHealth(True, True, f"module answering on {self._client.sink.endpoint}")

    def submit(
        self,
        source_id: str,
        image: CheckedImage,
        *,
        deadline_monotonic: float,
        traceparent: str,
    ) -> asyncio.Future[Outcome]:
        self._open.add(source_id)
        return asyncio.ensure_future(self._request(source_id, image, traceparent))

    async def _request(self, source_id: str, image: CheckedImage, traceparent: str) -> Outcome:
        try:
            result = await self._client.request(
                source_id, image.data, format=image.kind, traceparent=traceparent or None
            )
        except OverloadedError as exc:
            raise RequestFailed(503, f"the module is not taking frames: {exc}") from None
        except (BrokenResourceError, ClosedResourceError) as exc:
            raise RequestFailed(503, f"the module connection failed: {exc}") from None
        except TimeoutError:
            raise RequestFailed(504, "the module did not answer in time") from None
        if result.frame is None:
            raise RequestFailed(500, f"the module sent no frame for {source_id!r}")
        return Outcome(result.frame, None)

    async def end_source(self, source_id: str) -> None:
        self._open.discard(source_id)
        # On failure the module ends the idle source by itself.
        with contextlib.suppress(
            TimeoutError, OverloadedError, ClosedResourceError, BrokenResourceError
        ):
            await self._client.source.send_eos(source_id, ack_timeout_seconds=10.0)

    def status(self) -> dict[str, Any]:
        stats = self._client.statistics()
        return {
            "module": str(self._client.source.endpoint),
            "results": str(self._client.sink.endpoint),
            "matcher": {
                "pending": stats.pending,
                "matched": stats.matched,
                "unmatched": stats.unmatched,
                "expired": stats.expired,
            },
        }
