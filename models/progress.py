"""Progress for long jobs: a bar on a terminal; anywhere else (a file, a pipe, CI logs) one
line when a stage starts and one when it ends, never hundreds of carriage returns."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Lines(Generic[T]):
    """What `progress` gives where there is no terminal: tqdm's few methods we use."""

    def __init__(self, iterable: Iterable[T] | None, desc: str, total: float | None,
                 unit: str) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (
            len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = 0.0
        self.t0 = time.monotonic()
        self.closed = False
        of = "" if self.total is None else f" {self.total:,.0f} {unit}"
        print(f"{desc}:{of} …", file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(f"{self.desc}: done, {self.n:,.0f} {self.unit} in "
                  f"{time.monotonic() - self.t0:.1f} s", file=sys.stderr, flush=True)

    def __enter__(self) -> Lines[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: float | None = None,
             unit: str = "it", **bar: Any) -> Any:
    """tqdm(iterable, ...) on a terminal, `Lines` elsewhere; used as either (iterate,
    `update`, a context manager)."""
    if sys.stderr.isatty() or bar.get("disable"):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, **bar)
    return Lines(iterable, desc, total, unit)
