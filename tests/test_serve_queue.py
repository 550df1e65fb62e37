"""The queue limit (``--max-queue``), in the batcher and in the service, on a model that runs
only when the test lets it."""
from __future__ import annotations

import asyncio
import io
import threading

import httpx
import pytest
import torch
from PIL import Image

from resnetlab import create_model, save_weights
from resnetlab.serve.app import create_app
from resnetlab.serve.batcher import DynamicBatcher, QueueFull
from resnetlab.serve.model import ServedModel
from resnetlab.serve.settings import ServeSettings


def test_a_full_queue_refuses_a_request_whole_and_the_queued_ones_are_served():
    started, release, batches = threading.Event(), threading.Event(), []

    def run(batch: torch.Tensor) -> list[float]:
        started.set()
        release.wait(10)  # the first batch holds the model until the queue has been tried
        batches.append(batch.flatten().tolist())
        return [10 * value for value in batch.flatten().tolist()]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([torch.tensor([1.0])]))
        while not started.is_set():  # its image has left the queue and is running
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit([torch.tensor([2.0]), torch.tensor([3.0])]))
        await asyncio.sleep(0)
        assert batcher.queued == 2
        with pytest.raises(QueueFull, match="2 images are already waiting"):
            await batcher.submit([torch.tensor([4.0])])
        assert batcher.queued == 2  # the refused request left nothing behind
        release.set()
        answers = await asyncio.gather(first, second)
        after = await batcher.submit([torch.tensor([5.0]), torch.tensor([6.0])])  # room again once drained
        await batcher.stop()
        return answers, after

    (first, second), after = asyncio.run(scenario())
    assert first == [10.0] and second == [20.0, 30.0] and after == [50.0, 60.0]
    assert batches == [[1.0], [2.0], [3.0], [5.0], [6.0]]  # the refused image never ran


def png(seed: int) -> bytes:
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_full_queue_is_refused_before_the_body_is_read(tmp_path):
    checkpoint = save_weights(create_model("cifar_resnet20", num_classes=10), tmp_path / "model.safetensors")
    model = ServedModel(checkpoint, "eager")
    started, release, run = threading.Event(), threading.Event(), model.infer

    def held(batch: torch.Tensor):
        started.set()
        release.wait(30)
        return run(batch)

    model.infer = held
    settings = ServeSettings(checkpoint=str(checkpoint), max_batch=1, max_images=2, max_queue=2,
                             threads=torch.get_num_threads())  # the app sets the threads: keep this process's
    app = create_app(settings, model)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                       base_url="http://service") as client:
            def post(*images: bytes):
                return client.post("/predict", files=[("file", (f"{i}.png", image, "image/png"))
                                                      for i, image in enumerate(images)])

            first = asyncio.ensure_future(post(png(0)))
            while not started.is_set():  # the first image holds the model
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(post(png(1), png(2)))
            for _ in range(1000):  # until its two images fill the queue
                queued = await client.get("/metrics")
                if "resnetlab_queued_images 2.0" in queued.text:
                    break
                await asyncio.sleep(0.01)
            # Not an image: read, this would be a 415; with the queue full it is refused unread.
            refused = await client.post("/predict", content=b"no image", headers={"content-type": "text/plain"})
            release.set()
            served = await asyncio.gather(first, second)
            after = await client.post("/predict", content=b"no image", headers={"content-type": "text/plain"})
            return refused, served, after

    refused, served, after = asyncio.run(scenario())
    assert refused.status_code == 503 and "2 images are already waiting" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert [len(answer.json()["predictions"]) for answer in served] == [1, 2]
    assert after.status_code == 415  # with room again, the same body is read and found to be no image
