"""Dynamic batching: images from concurrent requests share one forward pass.

The first image to arrive opens a batch; it runs when ``max_batch`` images have joined or
``max_wait_ms`` has passed, whichever comes first. Batches run one at a time on a thread of
their own, so the event loop keeps accepting and reading requests meanwhile; what arrives
while a batch runs forms the next one.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

Output = TypeVar("Output")


class DynamicBatcher(Generic[Output]):
    def __init__(self, run: Callable[[torch.Tensor], list[Output]], max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.run = run  # a batch (N x ...) to one output per row, in order
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch  # told each batch's size, for the metrics
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnetlab-batch")
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve_batches())

    async def stop(self) -> None:
        """Finish what is queued, then stop; the server calls this once requests have drained."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, items: list[torch.Tensor]) -> list[Output]:
        """Outputs for each item (equal shapes), possibly computed in several batches with other requests'."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
        # A request whose client went away has its futures cancelled: its images are not run.
        live = [(item, future) for item, future in batch if not future.done()]
        try:
            if live:
                self.on_batch(len(live))
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.run, torch.stack([item for item, _ in live]))
                for (_, future), output in zip(live, outputs):
                    if not future.done():
                        future.set_result(output)
        except Exception as error:  # the requests of this batch fail with it; the batcher goes on
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
        finally:
            for _ in batch:
                self._queue.task_done()
