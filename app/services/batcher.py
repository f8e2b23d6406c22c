"""Micro-batching: images from concurrent requests share one forward pass.

One worker task drains a bounded queue, waits at most `max_wait_ms` for company, runs
the network in a single dedicated thread (one busy runtime on the cores, never two) and
routes each slice of the output back to its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.errors import Overloaded


@dataclass
class _Job:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    def __init__(
        self,
        embed: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        max_queue_images: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_images = max_queue_images
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsdi-infer")
        self.queued_images = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="fsdi-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) -> (N, D); 503 with Retry-After when the queue is full."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        n = int(batch.shape[0])
        if self.queued_images + n > self.max_queue_images:
            raise Overloaded(
                "inference queue is full; retry shortly", headers={"Retry-After": "1"}
            )
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queued_images += n
        await self._queue.put(_Job(batch, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = jobs[0].batch.shape[0]
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = (self._queue.get_nowait() if remaining <= 0
                           else await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                jobs.append(job)
                size += job.batch.shape[0]
            batch = np.concatenate([j.batch for j in jobs], axis=0)
            try:
                out = await loop.run_in_executor(self._pool, self._embed_chunks, batch)
            except Exception as exc:  # hand the failure to every waiting request
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                out = None
            finally:
                self.queued_images -= size
            if out is None:
                continue
            if self._on_batch:
                self._on_batch(size)
            start = 0
            for j in jobs:
                n = j.batch.shape[0]
                if not j.future.done():
                    j.future.set_result(out[start:start + n])
                start += n

    def _embed_chunks(self, batch: np.ndarray) -> np.ndarray:
        step = max(self.max_batch, 1)
        return np.concatenate(
            [self._embed(batch[i:i + step]) for i in range(0, batch.shape[0], step)], axis=0
        )
