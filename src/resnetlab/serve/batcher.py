"""Dynamic batching: images from concurrent requests share one forward pass.

A batch runs when ``max_batch`` images have joined it, or when its first image has waited
``max_wait_ms``, or at once when no other request is on its way (being read or decoded):
then waiting could only add latency. Batches run one at a time on a thread of their own, so
the event loop keeps accepting and reading requests meanwhile; what arrives while a batch
runs forms the next one. At most ``max_queue`` images wait: past that, ``submit`` refuses with
``QueueFull`` and queues nothing, so an overloaded server answers at once instead of letting every
request wait longer and longer.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, NamedTuple, TypeVar

import torch

Output = TypeVar("Output")


class QueueFull(Exception):
    """No room in the queue for a request's images; nothing of the request was queued."""


class _Entry(NamedTuple):
    item: torch.Tensor
    future: asyncio.Future
    arrived: float  # event-loop time


class DynamicBatcher(Generic[Output]):
    def __init__(self, run: Callable[[torch.Tensor], list[Output]], max_batch: int, max_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int], None] = lambda size: None):
        self.run = run  # a batch (N x ...) to one output per row, in order
        self.max_batch = max_batch
        self.max_queue = max_queue  # images waiting for a batch, not counting the batch running
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch  # told each batch's size, for the metrics
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._incoming = 0  # requests being read or decoded, whose images will come
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnetlab-batch")
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def check_room(self, images: int) -> None:
        """Raise ``QueueFull`` unless ``images`` more fit in the queue."""
        if self.queued + images > self.max_queue:
            raise QueueFull(f"{self.queued} images are already waiting for the model, and the queue holds at "
                            f"most {self.max_queue}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve_batches())

    async def stop(self) -> None:
        """Finish what is queued, then stop; the server calls this once requests have drained."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and decoding a request: a batch waits for it only while it is on its way."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, items: list[torch.Tensor]) -> list[Output]:
        """Outputs for each item (equal shapes), possibly computed in several batches with other requests'."""
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait(_Entry(item, future, loop.time()))
        return list(await asyncio.gather(*futures))

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0].arrived + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                if self._incoming == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Entry]) -> None:
        # A request whose client went away has its futures cancelled: its images are not run.
        live = [(entry.item, entry.future) for entry in batch if not entry.future.done()]
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
