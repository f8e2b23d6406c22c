"""OS-level names for the service's own threads.

CPython before 3.14 names only its Python-level `Thread` objects; the kernel sees every
thread as "python". Named, the inference, decode and results threads can be told apart
in `top -H`, `ps -L`, py-spy and /proc/<pid>/task/*/comm, and the benchmark splits the
server's CPU time by stage from them.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15  # linux/prctl.h
_LINUX_NAME_BYTES = 15  # the kernel keeps 16 bytes, NUL included


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., Any] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def name_this_thread(name: str | None = None) -> None:
    """Give the calling thread `name` (default: its `threading` name) at the OS level,
    cut to the 15 bytes Linux keeps; a no-op on other systems."""
    if _prctl is None:
        return
    raw = (name or threading.current_thread().name).encode("ascii", "replace")
    _prctl(_PR_SET_NAME, ctypes.c_char_p(raw[:_LINUX_NAME_BYTES]), 0, 0, 0)
