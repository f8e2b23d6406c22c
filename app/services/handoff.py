"""Handing a worker thread's result to the event loop whose request waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def hand_back(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any],
              value: Any) -> None:
    """Resolve `fut` on its own loop with `value`, or fail it if `value` is an exception.
    Thread-safe; a closed loop (nobody waits any more) is not an error."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, fut, value)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if fut.done():  # the request went away (client disconnect, another part failed)
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)
