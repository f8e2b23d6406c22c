"""The micro-batcher, the decode fan-out and the results' group commit, without a
network or a database: fake functions that record what they were given."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from app.errors import ApiError, Overloaded
from app.services.batcher import MicroBatcher
from app.services.results import GroupCommit
from app.services.uploads import decode_all
from app.settings import Settings
from models.backbones import PreprocessConfig


def tagged(n: int, tag: int) -> np.ndarray:
    """n one-pixel 'images' whose value identifies the request and the position."""
    return (np.arange(n, dtype=np.float32)[:, None] + 100 * tag).reshape(n, 1)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def running(embed: Callable[[np.ndarray], np.ndarray], **kw: Any
                  ) -> AsyncIterator[MicroBatcher]:
    """A started batcher over `embed`, stopped on the way out."""
    b = MicroBatcher(embed, **kw)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def test_results_go_back_to_their_own_request_in_order() -> None:
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        async with running(lambda x: x * 2, max_batch=4, max_wait_ms=20,
                           max_queue_images=100, on_batch=sizes.append, streams=2) as b:
            return await asyncio.gather(*(b.embed(tagged(n, t))
                                          for t, n in enumerate([3, 1, 6, 2])))

    outs = run(main())
    for t, (out, n) in enumerate(zip(outs, [3, 1, 6, 2], strict=True)):
        np.testing.assert_array_equal(out, tagged(n, t) * 2)
    assert sum(sizes) == 12
    assert max(sizes) > 1  # concurrent requests shared forward passes


def test_one_request_is_spread_over_the_streams() -> None:
    threads: set[str] = set()

    def slow(x: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return x

    async def main() -> float:
        async with running(slow, max_batch=1, max_wait_ms=0, max_queue_images=100,
                           streams=2) as b:
            t = time.perf_counter()
            out = await b.embed(tagged(6, 0))
            np.testing.assert_array_equal(out, tagged(6, 0))
            return time.perf_counter() - t

    took = run(main())
    assert threads == {"fsdi-infer-0", "fsdi-infer-1"}
    assert took < 6 * 0.05 * 0.8  # two streams at once, not one after the other


def test_a_failed_forward_pass_reaches_its_request_and_the_batcher_goes_on() -> None:
    def picky(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise RuntimeError("bad batch")
        return x

    async def main() -> None:
        async with running(picky, max_batch=8, max_wait_ms=0, max_queue_images=100,
                           streams=1) as b:
            with pytest.raises(RuntimeError, match="bad batch"):
                await b.embed(-np.ones((2, 1), np.float32))
            np.testing.assert_array_equal(await b.embed(tagged(3, 1)), tagged(3, 1))
            assert b.queued_images == 0

    run(main())


def test_full_queue_is_refused_with_retry_after() -> None:
    gate = threading.Event()

    def blocked(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return x

    async def main() -> None:
        async with running(blocked, max_batch=4, max_wait_ms=0, max_queue_images=4,
                           streams=1) as b:
            try:
                first = asyncio.ensure_future(b.embed(tagged(4, 0)))
                await asyncio.sleep(0.05)
                with pytest.raises(Overloaded) as exc:
                    await b.embed(tagged(1, 1))
                assert exc.value.headers == {"Retry-After": "1"}
                gate.set()
                np.testing.assert_array_equal(await first, tagged(4, 0))
            finally:
                gate.set()  # never leave the stream blocked at stop

    run(main())


def test_stop_ends_the_inference_threads() -> None:
    async def main() -> list[threading.Thread]:
        b = MicroBatcher(lambda x: x, max_batch=2, max_wait_ms=1, max_queue_images=10,
                         streams=3)
        await b.start()
        threads = list(b._threads)
        await b.stop()
        with pytest.raises(RuntimeError, match="not started"):
            await b.embed(tagged(1, 0))
        return threads

    for t in run(main()):
        t.join(2)
        assert not t.is_alive()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_inference_threads_carry_os_level_names() -> None:
    def comm(t: threading.Thread) -> str:
        return Path(f"/proc/self/task/{t.native_id}/comm").read_text().strip()

    async def main() -> list[str]:
        async with running(lambda x: x, max_batch=2, max_wait_ms=1, max_queue_images=10,
                           streams=2) as b:
            deadline = time.monotonic() + 5  # each thread names itself as it starts
            while time.monotonic() < deadline and not all(
                    comm(t).startswith("fsdi") for t in b._threads):
                await asyncio.sleep(0.01)
            return [comm(t) for t in b._threads]

    assert run(main()) == ["fsdi-infer-0", "fsdi-infer-1"]


def test_streams_never_ask_for_more_cores_than_threads() -> None:
    s = Settings(threads=2)
    assert (s.streams, s.stream_threads) == (2, 1)
    s = Settings(threads=4, infer_streams=2)
    assert (s.streams, s.stream_threads) == (2, 2)
    with pytest.raises(ValidationError, match="oversubscribe"):
        Settings(threads=1, infer_streams=2)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (40, 30), value).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_keeps_request_order_and_names_the_first_bad_file() -> None:
    cfg = PreprocessConfig(input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, grey=True)
    settings = Settings(decode_workers=2)
    pool = ThreadPoolExecutor(2)
    parts = [(f"{i}.png", png(10 * i)) for i in range(5)]
    ups = run(decode_all(parts, cfg, settings, pool))
    assert [u.filename for u in ups] == [p[0] for p in parts]
    assert [int(u.tensor.mean()) for u in ups] == [0, 10, 20, 30, 40]
    bad = [parts[0], ("b1.png", b"junk"), parts[2], ("b3.png", b""), parts[4]]
    with pytest.raises(ApiError) as exc:
        run(decode_all(bad, cfg, settings, pool))
    assert exc.value.message.startswith("b1.png:") and exc.value.code == "invalid_image"
    bad = [parts[0], parts[1], parts[2], ("b3.png", b"")]  # only the other worker's slice
    with pytest.raises(ApiError) as exc:
        run(decode_all(bad, cfg, settings, pool))
    assert exc.value.message.startswith("b3.png:") and exc.value.code == "empty_file"
    pool.shutdown()


def test_group_commit_shares_one_write_and_a_bad_request_fails_alone() -> None:
    writes: list[list[int]] = []
    gate = threading.Event()

    def write(items: list[int]) -> list[int]:
        gate.wait(5)  # the first write holds the writer while the others queue up
        writes.append(items)
        if -1 in items:
            raise ValueError("bad row")
        return [10 * i for i in items]

    async def main() -> list[int | BaseException]:
        gc: GroupCommit[int, int] = GroupCommit(write, name="test-writer")
        gc.start()
        try:
            first = asyncio.ensure_future(gc.submit(0))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(gc.submit(i)) for i in (1, 2, -1, 3)]
            await asyncio.sleep(0.05)
            gate.set()
            return list(await asyncio.gather(first, *rest, return_exceptions=True))
        finally:
            gate.set()
            gc.stop()

    out = run(main())
    assert out[:3] == [0, 10, 20] and out[4] == 30
    assert isinstance(out[3], ValueError)
    assert writes[0] == [0] and writes[1] == [1, 2, -1, 3]  # four requests, one write ...
    assert sorted(writes[2:]) == [[-1], [1], [2], [3]]  # ... which failed: each alone


def test_group_commit_writes_what_was_submitted_before_stop() -> None:
    written: list[int] = []

    def write(items: list[int]) -> list[int]:
        time.sleep(0.02)
        written.extend(items)
        return items

    async def main() -> None:
        gc: GroupCommit[int, int] = GroupCommit(write, name="test-writer")
        gc.start()
        futs = [asyncio.ensure_future(gc.submit(i)) for i in range(5)]
        await asyncio.sleep(0)  # all five queued
        thread = gc._thread
        gc.stop()
        assert await asyncio.gather(*futs) == list(range(5))
        assert thread is not None
        thread.join(2)
        assert not thread.is_alive()
        with pytest.raises(RuntimeError, match="not started"):
            await gc.submit(9)

    run(main())
    assert written == list(range(5))


def test_a_request_alone_never_waits_for_company_and_a_crowd_still_shares() -> None:
    """One camera: nothing else queued, so no max_wait; several requests: they wait for
    each other and share forward passes as before."""
    sizes: list[int] = []

    async def alone() -> float:
        async with running(lambda x: x, max_batch=4, max_wait_ms=200, max_queue_images=100,
                           on_batch=sizes.append) as b:
            t0 = time.perf_counter()
            for t in range(3):
                await b.embed(tagged(1, t))
            return time.perf_counter() - t0

    assert run(alone()) < 0.2  # three requests, not one 200 ms wait each
    assert sizes == [1, 1, 1]
    sizes.clear()

    async def crowd() -> None:
        async with running(lambda x: x, max_batch=4, max_wait_ms=200, max_queue_images=100,
                           on_batch=sizes.append) as b:
            await asyncio.gather(*(b.embed(tagged(1, t)) for t in range(4)))

    run(crowd())
    assert max(sizes) > 1
