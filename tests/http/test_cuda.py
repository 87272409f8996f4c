"""The front end on a CUDA pipeline: JPEGs decode with nvJPEG into GPU memory, in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest
from tests.http._support import jpeg, png, running

from torchstream.frame import Frame
from torchstream.http import InProcessBackend, ServeConfig, create_app
from torchstream.pipeline import BatchPolicy

pytestmark = pytest.mark.gpu


class Where:
    name = "where"
    batch_policy = BatchPolicy(max_size=32, max_wait_seconds=0.005)

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            surface = frame.require_surface(self.name)
            frame.attributes["device"] = surface.device.type
            frame.attributes["mean"] = round(float(surface.float().mean()), 1)
            frame.attributes["batch"] = len(frames)


def test_images_decode_on_the_gpu_and_batch_across_requests():
    app = create_app(InProcessBackend([Where()], device="cuda"), ServeConfig(max_in_flight=128))
    with running(app) as url:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                bodies = [jpeg(640, 480, value=i % 200) for i in range(64)] + [png(64, 48)]
                return await asyncio.gather(*(
                    client.post("/v1/infer", content=body, headers={
                        "content-type": "image/png" if i == 64 else "image/jpeg"})
                    for i, body in enumerate(bodies)
                ))

        replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 65
    results = [r.json() for r in replies]
    assert {r["attributes"]["device"] for r in results} == {"cuda"}
    assert max(r["attributes"]["batch"] for r in results) > 1  # batched across requests
    assert (results[64]["width"], results[64]["height"]) == (64, 48)  # PNG: CPU decode
