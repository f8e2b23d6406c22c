"""`fsdi watch DIR --group G --url URL --key KEY`: a hot folder beside a camera. Each image
file that appears in DIR is classified once it is completely written, then moved to
DIR/done/ with NAME.json (the classify answer) beside it, or to DIR/failed/ with
NAME.error.txt (the service's message). A REST client of the service, like `fsdi check`.

Once, across restarts of either side: before a file is sent, a key for it is written to
DIR/.fsdi-watch/NAME.key (fsynced), and every try sends it as `Idempotency-Key`. A
watcher killed after the service classified the file sends it again on restart with the
same key and gets the first answer back (the service keeps it a day); it is never
classified twice, and no file leaves DIR before its answer is on disk.

Completely written: its size and modification time unchanged for `settle` seconds (a file
renamed into place is older than that already). While the service answers 503 or 429, or
cannot be reached, the same file is tried again after a growing rest (up to 10 s). A key
the service refuses (unknown, revoked, without the right, or not reaching the group: its
scope) stops the watcher at once, at start or mid-run, and leaves the files where they
are: waiting cannot cure it and no file is to blame. Memory
is a few hundred bytes per waiting file (10,000 waiting: a few megabytes); files are
read one at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STATE = ".fsdi-watch"
RETRY_STATUS = (429, 502, 503, 504)


class KeyRefused(Exception):
    """The service refuses this key for this group: a setting to fix, not a file's fault."""


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self, waiting: int) -> str:
        rate = (self.done + self.failed) / max(1e-9, time.monotonic() - self.started)
        return (f"{self.done} done, {self.failed} failed, {waiting} waiting, "
                f"{self.retries} retries, {rate:.1f} files/s")


class Watcher:
    def __init__(self, folder: Path, group: str, url: str, key: str, settle: float = 1.0,
                 poll: float = 0.5, timeout: float = 60.0,
                 say: Callable[[str], None] = print) -> None:
        self.folder, self.group, self.settle, self.poll = folder, group, settle, poll
        self.state = folder / STATE
        self.done_dir, self.failed_dir = folder / "done", folder / "failed"
        for d in (self.state, self.done_dir, self.failed_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                   headers={"Authorization": f"Bearer {key}"})
        self.say = say
        self.tally = Tally()
        for stale in self.state.glob("*.key"):  # its file left DIR before the key did
            if not (folder / stale.name[:-len(".key")]).exists():
                stale.unlink()
        # name -> (size, mtime_ns, monotonic time it was first seen so)
        self.seen: dict[str, tuple[int, int, float]] = {}

    def close(self) -> None:
        self.client.close()

    def check(self) -> None:
        """Raise KeyRefused when the key is not valid or does not reach the group (a
        service that cannot be reached yet is not an error: the files wait for it)."""
        try:
            r = self.client.get("/api/v1/me")
        except httpx.TransportError:
            return
        if r.status_code in (401, 403):
            raise KeyRefused(f"the service refuses this key: {_message(r)}")
        if r.status_code == 200:
            groups = r.json().get("groups")
            if groups is not None and self.group not in groups:
                raise KeyRefused(f"this key reaches the groups {', '.join(sorted(groups))}, "
                                 f"not {self.group!r} (create one with --groups "
                                 f"{self.group})")

    def ready(self) -> tuple[list[str], int]:
        """Names completely written (oldest first), and how many files are waiting."""
        now, wall = time.monotonic(), time.time()
        ready: list[tuple[int, str]] = []
        present: set[str] = set()
        with os.scandir(self.folder) as it:
            for e in it:
                if not e.is_file() or e.name.startswith(".") or \
                        not e.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                st = e.stat()
                present.add(e.name)
                sig = (st.st_size, st.st_mtime_ns)
                first = self.seen.get(e.name)
                if first is None or first[:2] != sig:
                    self.seen[e.name] = (*sig, now)
                    first = self.seen[e.name]
                # unchanged for `settle` seconds, or last written that long ago (renamed in)
                if st.st_size > 0 and (now - first[2] >= self.settle
                                       or wall - st.st_mtime >= self.settle):
                    ready.append((st.st_mtime_ns, e.name))
        for gone in set(self.seen) - present:
            del self.seen[gone]
        return [n for _, n in sorted(ready)], len(present)

    def run(self, once: bool = False, stop: Callable[[], bool] = lambda: False) -> Tally:
        """Watch until `stop()` (or, with `once`, until the folder holds nothing)."""
        last_line = 0.0
        while not stop():
            names, waiting = self.ready()
            for name in names:
                if stop():
                    break
                self.handle(name)
                if time.monotonic() - last_line >= 2.0:
                    self.say(self.tally.line(waiting))
                    last_line = time.monotonic()
            if once and waiting == 0:
                break
            if not names:
                time.sleep(self.poll)
        self.say("summary: " + self.tally.line(len(self.seen)))
        return self.tally

    def handle(self, name: str) -> None:
        """Classify one file (retrying while the service is away), then move it."""
        path = self.folder / name
        key = self._key(name)
        rest = 0.5
        while True:
            try:
                with path.open("rb") as fh:
                    r = self.client.post("/api/v1/classify", params={"group": self.group},
                                         headers={"Idempotency-Key": key},
                                         files=[("files", (name, fh.read()))])
            except httpx.TransportError as e:
                self._wait(f"{name}: the service cannot be reached ({e})", rest)
            else:
                if r.status_code == 200:
                    self._finish(name, self.done_dir, name + ".json", json.dumps(
                        r.json()["results"][0], indent=1))
                    self.tally.done += 1
                    return
                # the key (401, 403) or its reach (404: a group out of scope answers as
                # a missing one): stop, every file would fail alike
                if r.status_code in (401, 403, 404):
                    raise KeyRefused(f"the service answered {r.status_code} for group "
                                     f"{self.group!r}: {_message(r)}")
                # 409 in_progress: this file's first try still runs (retry); any other
                # refusal is this file's or the group's and is not cured by waiting
                if r.status_code not in RETRY_STATUS and _code(r) != "in_progress":
                    self._finish(name, self.failed_dir, name + ".error.txt",
                                 f"{r.status_code} {_message(r)}\n")
                    self.tally.failed += 1
                    return
                self._wait(f"{name}: the service answered {r.status_code} "
                           f"({_message(r)})", rest)
            rest = min(10.0, rest * 2)

    def _wait(self, why: str, seconds: float) -> None:
        self.tally.retries += 1
        self.say(f"{why}; trying again in {seconds:g} s")
        time.sleep(seconds)

    def _key(self, name: str) -> str:
        """The file's idempotency key: made once, kept until the file has left DIR."""
        keyfile = self.state / (name + ".key")
        if keyfile.is_file():
            return keyfile.read_text().strip()
        key = f"watch-{uuid.uuid4().hex}"
        _write_durably(keyfile, key)
        return key

    def _finish(self, name: str, where: Path, note: str, text: str) -> None:
        """The answer on disk first, then the image beside it, then the key forgotten."""
        target = _free(where, name)
        _write_durably(where / (target.name + note[len(name):]), text)
        os.replace(self.folder / name, target)
        _fsync_dir(where)
        _fsync_dir(self.folder)
        (self.state / (name + ".key")).unlink(missing_ok=True)


def _code(r: httpx.Response) -> str | None:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:500]


def _free(where: Path, name: str) -> Path:
    """`where/name`, or `where/stem-2.ext`… when a file of that name is there already."""
    target = where / name
    stem, suffix, n = Path(name).stem, Path(name).suffix, 2
    while target.exists():
        target = where / f"{stem}-{n}{suffix}"
        n += 1
    return target


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(folder: Path, group: str, url: str, key: str, settle: float, once: bool) -> int:
    w = Watcher(folder, group, url, key, settle,
                say=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        w.check()
        tally = w.run(once=once)
    except KeyRefused as exc:
        print(f"fsdi watch stopped: {exc}; the files stay in {folder}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        tally = w.tally
        print("summary: " + tally.line(len(w.seen)), file=sys.stderr)
    finally:
        w.close()
    return 0 if tally.failed == 0 else 1
