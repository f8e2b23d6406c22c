"""Where image bytes live: a local directory or an S3-compatible object store.

Both hold objects under the same keys (`blobs/ab/cd/<sha256>`, `query-images/<pack>`), so
moving from one to the other is a copy of keys (`fsdi blobs migrate`). The local store is
the embedded default; the S3 store is what lets replicas on different hosts serve each
other's images (README, "Many hosts").

Every failure to reach the store is raised as `StoreUnavailable`, whichever client said
it, so callers answer 503 (enrolment) or carry on without the bytes (keeping a classified
image is best effort).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class StoreUnavailable(OSError):
    """The object store could not be reached, or failed, within its timeouts."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch, when the object was last written


class ObjectStore(ABC):
    """Keys are relative paths with `/` separators; values are whole byte strings."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs and messages: never a credential."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key` durably (a reader sees all of it or nothing)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The whole object, or None when there is none."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """`length` bytes from `start`, or None when the object or that stretch is gone."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone (another replica removed it)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in no particular order."""

    @abstractmethod
    def check(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    def remove_temp(self, older_than: float) -> int:
        """Remove leftovers of interrupted writes last touched before `older_than`
        (epoch seconds); an object store has none (a PUT is atomic)."""
        return 0

    def exists(self, key: str) -> bool:
        return self.size(key) is not None


class LocalObjects(ObjectStore):
    """Files under `root`: temp file + fsync + rename + directory fsync per put."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".tmp-") for p in parts):
            raise ValueError(f"not an object key: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        except OSError as exc:
            raise StoreUnavailable(f"{self.root}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreUnavailable(f"{self.root}: {exc.strerror or exc}") from exc
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        try:
            with open(self.path(key), "rb") as fh:
                fh.seek(start)
                data = fh.read(length)
        except FileNotFoundError:
            return None
        return data if len(data) == length else None

    def size(self, key: str) -> int | None:
        p = self.path(key)
        try:
            return p.stat().st_size if p.is_file() else None
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names (the data directory also holds the
        # database and the ONNX cache).
        base = self.root
        start = base.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else base
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # removed meanwhile
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise StoreUnavailable(f"{self.root} is not writable")
        except OSError as exc:
            raise StoreUnavailable(f"{self.root}: {exc.strerror or exc}") from exc

    def remove_temp(self, older_than: float) -> int:
        removed = 0
        for p in self.root.rglob(".tmp-*") if self.root.is_dir() else ():
            try:
                if p.stat().st_mtime <= older_than:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class S3Objects(ObjectStore):
    """An S3 bucket (AWS or any S3-compatible server) through boto3. Timeouts are short
    and retries few: a request that would wait on a dead store fails fast instead, and
    the caller decides (503, or carry on without the bytes)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 connect_timeout_s: float = 2.0, read_timeout_s: float = 5.0,
                 max_attempts: int = 2, pool: int = 32) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        config = Config(connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                        retries={"total_max_attempts": max_attempts, "mode": "standard"},
                        max_pool_connections=pool,
                        s3={"addressing_style": "path"} if endpoint_url else None,
                        # SeaweedFS and other S3-compatible servers do not all speak the
                        # CRC trailers newer boto3 sends by default.
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        # Credentials come from the standard chain (AWS_ACCESS_KEY_ID, ...), never from
        # our settings, so they are never in our logs or error messages.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config)
        self._bucket_ready = False
        self._lock = threading.Lock()

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        self._ensure_bucket()
        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as exc:
            # no such object, or no such stretch of it
            if _status(exc) in (404, 416) or _code(exc) in ("NoSuchKey", "NotFound",
                                                            "InvalidRange"):
                raise KeyError(kw.get("Key", "")) from None
            raise StoreUnavailable(f"{self.describe()}: {what} failed: {_code(exc)}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{self.describe()}: {what} failed: "
                                   f"{type(exc).__name__}") from None

    def _ensure_bucket(self) -> None:
        """Create the bucket on first use if it is missing (CONTRACT.md, "Many hosts")."""
        if self._bucket_ready:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:
            if self._bucket_ready:
                return
            try:
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if _status(exc) != 404 and _code(exc) not in ("NoSuchBucket", "NotFound"):
                        raise
                    try:
                        self.client.create_bucket(Bucket=self.bucket)
                    except ClientError as exc2:  # another replica created it meanwhile
                        if _code(exc2) not in ("BucketAlreadyOwnedByYou",
                                               "BucketAlreadyExists"):
                            raise
            except ClientError as exc:
                raise StoreUnavailable(f"{self.describe()}: bucket check failed: "
                                       f"{_code(exc)}") from None
            except BotoCoreError as exc:
                raise StoreUnavailable(f"{self.describe()}: unreachable: "
                                       f"{type(exc).__name__}") from None
            self._bucket_ready = True

    def put(self, key: str, data: bytes) -> None:
        self._call("put", self.client.put_object, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes | None:
        try:
            r = self._call("get", self.client.get_object, Key=self.prefix + key)
        except KeyError:
            return None
        return _read_body(self, r)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        if length == 0:
            return b"" if self.exists(key) else None
        try:
            r = self._call("get", self.client.get_object, Key=self.prefix + key,
                           Range=f"bytes={start}-{start + length - 1}")
        except KeyError:
            return None
        data = _read_body(self, r)
        return data if len(data) == length else None

    def size(self, key: str) -> int | None:
        try:
            r = self._call("head", self.client.head_object, Key=self.prefix + key)
        except KeyError:
            return None
        return int(r["ContentLength"])

    def delete(self, key: str) -> None:
        with contextlib.suppress(KeyError):
            self._call("delete", self.client.delete_object, Key=self.prefix + key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": self.prefix + prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            try:
                page = self._call("list", self.client.list_objects_v2, **kw)
            except KeyError:
                return
            for o in page.get("Contents", ()):
                yield ObjectInfo(o["Key"][len(self.prefix):], int(o["Size"]),
                                 o["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def check(self) -> None:
        self._bucket_ready = False  # a check asks the server, never a remembered answer
        self._ensure_bucket()


def _read_body(store: S3Objects, response: Any) -> bytes:
    from botocore.exceptions import BotoCoreError

    try:
        return bytes(response["Body"].read())
    except (BotoCoreError, OSError) as exc:
        raise StoreUnavailable(f"{store.describe()}: read failed: "
                               f"{type(exc).__name__}") from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or "error"


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def open_objects(url: str | None, data_dir: Path, endpoint_url: str | None = None,
                 **s3: Any) -> ObjectStore:
    """The store a URL names: unset -> `data_dir` on local disk; `s3://bucket/prefix`;
    a path or `file://` URL -> that directory. `s3` (timeouts, attempts) goes to
    S3Objects."""
    if not url:
        return LocalObjects(data_dir)
    u = urlparse(url)
    if u.scheme == "s3":
        if not u.netloc:
            raise ValueError(f"{url!r} names no bucket (s3://BUCKET/PREFIX)")
        return S3Objects(u.netloc, u.path, endpoint_url, **s3)
    if u.scheme == "file":
        return LocalObjects(Path(u.path))
    if u.scheme == "":
        return LocalObjects(Path(url))
    raise ValueError(f"{url!r}: image storage is s3://BUCKET/PREFIX or a local path")

