"""Micro-batching: images from concurrent requests share one forward pass.

A request's images are cut into chunks of at most `max_batch` and put on one bounded
queue. `streams` inference threads drain it: each takes a chunk, waits at most
`max_wait_ms` for company up to `max_batch` images, runs the network and hands each slice
of the output back to its request's event loop. The threads pull work themselves, so a
busy event loop never leaves the network idle between two batches.

The runtime gives every stream `threads // streams` cores, so the streams together never
ask for more cores than the machine has. Several single-threaded streams avoid a barrier
between the threads of one forward pass, and small batches keep activations in cache;
the defaults follow the sweep in bench/README.md.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.errors import Overloaded
from app.services.handoff import hand_back
from app.services.threadnames import name_this_thread


@dataclass
class _Job:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    def __init__(
        self,
        embed: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        max_queue_images: int,
        on_batch: Callable[[int], None] | None = None,
        streams: int = 1,
        embed_alone: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """`embed_alone`, if given, runs a batch that nothing else waits beside (one
        camera alone): it may use every core where `embed` uses one stream's share."""
        self._embed = embed
        self._embed_alone = embed_alone or embed
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.streams = max(1, streams)
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.queued_images = 0

    async def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name=f"fsdi-infer-{i}", daemon=True)
            for i in range(self.streams)
        ]
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        # A forward pass in flight finishes on its own (daemon threads): never block the
        # shutdown on it.
        self._threads = []

    async def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, C) -> (N, D); 503 with Retry-After when the queue is full.
        The chunks of one request may run on different streams at once."""
        if not self._threads:
            raise RuntimeError("batcher not started")
        n = int(batch.shape[0])
        with self._lock:
            if self.queued_images + n > self.max_queue_images:
                raise Overloaded(
                    "inference queue is full; retry shortly", headers={"Retry-After": "1"}
                )
            self.queued_images += n
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        for i in range(0, n, self.max_batch):
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put(_Job(batch[i:i + self.max_batch], fut, loop))
            futures.append(fut)
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool, bool]:
        """`first` plus whatever arrives within max_wait, up to max_batch images; no wait
        at all while no other image is queued or in a forward pass (one camera alone
        never waits for company that is not coming). Returns the jobs and whether a stop
        sentinel was met, and whether nothing else was queued or running."""
        jobs = [first]
        size = first.batch.shape[0]
        with self._lock:
            alone = self.queued_images <= size
        deadline = time.monotonic() + (0.0 if alone else self.max_wait)
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = (self._queue.get_nowait() if remaining <= 0
                       else self._queue.get(timeout=remaining))
            except queue.Empty:
                break
            if job is None:
                return jobs, True, False
            jobs.append(job)
            size += job.batch.shape[0]
        return jobs, False, alone and len(jobs) == 1

    def _run(self) -> None:
        name_this_thread()
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping, alone = self._collect(first)
            embed = self._embed_alone if alone else self._embed
            batch = (jobs[0].batch if len(jobs) == 1
                     else np.concatenate([j.batch for j in jobs], axis=0))
            size = int(batch.shape[0])
            out: np.ndarray | BaseException
            try:
                out = np.concatenate([embed(batch[i:i + self.max_batch])
                                      for i in range(0, size, self.max_batch)], axis=0)
            except Exception as exc:  # hand the failure to every waiting request
                out = exc
            with self._lock:
                self.queued_images -= size
            if self._on_batch and not isinstance(out, BaseException):
                self._on_batch(size)
            start = 0
            for j in jobs:
                n = j.batch.shape[0]
                part = out if isinstance(out, BaseException) else out[start:start + n]
                hand_back(j.loop, j.future, part)
                start += n
            if stopping:
                return
