"""The dynamic batcher's queue limit, on a model that runs only when the test lets it."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from resnetlab.serve.batcher import DynamicBatcher, QueueFull


def test_a_full_queue_refuses_a_request_whole_and_the_queued_ones_are_served():
    started, release, batches = threading.Event(), threading.Event(), []

    def run(batch: torch.Tensor) -> list[float]:
        started.set()
        release.wait(10)  # the first batch holds the model until the queue has been tried
        batches.append(batch.flatten().tolist())
        return [10 * value for value in batch.flatten().tolist()]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch=1, max_wait_ms=0, max_queued=2)
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
