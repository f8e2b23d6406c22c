"""Image bytes on both stores: the local directory and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.seaweed import SECRET_KEY, Seaweed, credentials_env
from storage.blobs import NotAllStored, sha256_hex
from storage.objects import LocalObjects, S3Objects, StoreUnavailable, open_objects
from storage.packs import ObjectPacks, PackUnavailable, QueryImages
from storage.stores import open_stores
from tests.conftest import S3_ENDPOINT, s3_prefix_url


def test_query_images_keep_many_in_one_write_and_read_each_back(
        tmp_path: Path, blob_url: str | None) -> None:
    _, packs = open_stores(blob_url, tmp_path, S3_ENDPOINT)
    batches = [[b"a" * 5, b"", b"bc"], [b"d" * 300], []]
    refs = [packs.keep(b) for b in batches]
    assert [[packs.read(r) for r in rs] for rs in refs] == batches
    assert len({r.split(":")[0] for r in refs[0]}) == 1  # one pack (one object) per call
    name = refs[0][0].split(":")[0]
    for bad in ("", "x:1:2", f"{name}:0", f"../{name}:0:1", f"{name}:-1:5", f"{name}:10000:5",
                f"{'1' * 19}-{'a' * 12}.pack:0:1"):
        assert packs.read(bad) is None  # malformed, outside the pack, or no such pack
    packs.close()


def test_object_packs_prune_by_the_time_in_their_names_from_several_replicas(
        tmp_path: Path, blob_url: str | None) -> None:
    objects = open_objects(blob_url, tmp_path, S3_ENDPOINT)
    a, b = ObjectPacks(objects), ObjectPacks(objects)  # two replicas on one store
    old = a.keep([b"old"])[0]
    time.sleep(0.05)
    cutoff_s = time.time()
    new = b.keep([b"new"])[0]
    age = time.time() - cutoff_s + 0.02  # older than this: only `old`
    removed = a.prune(age) + b.prune(age)  # both sweep; the second finds nothing left
    assert removed == 1
    assert a.read(old) is None and b.read(new) == b"new" and a.read(new) == b"new"


def test_put_many_names_what_it_wrote_when_one_fails(tmp_path: Path,
                                                     blob_url: str | None) -> None:
    blobs, _ = open_stores(blob_url, tmp_path, S3_ENDPOINT)
    blobs.put(b"there")
    real_put = blobs.objects.put

    def put(key: str, data: bytes) -> None:
        if data == b"bad":
            raise StoreUnavailable("refused")
        real_put(key, data)

    blobs.objects.put = put  # type: ignore[method-assign]
    items = [(d, sha256_hex(d)) for d in (b"there", b"new", b"bad")]
    with pytest.raises(NotAllStored) as info:
        blobs.put_many(items)
    assert info.value.created == [sha256_hex(b"new")]  # not the one that was already there


@pytest.mark.s3
def test_the_bucket_is_created_when_missing_and_urls_are_checked(tmp_path: Path) -> None:
    s3_prefix_url()  # credentials, or skip / fail in CI
    bucket = f"fsdi-new-{uuid.uuid4().hex[:8]}"
    store = open_objects(f"s3://{bucket}/p", tmp_path, S3_ENDPOINT)
    assert isinstance(store, S3Objects) and store.describe().startswith(f"s3://{bucket}/p/")
    store.put("k", b"v")
    assert store.get("k") == b"v" and [o.key for o in store.list("")] == ["k"]
    store.delete("k")
    store.delete("k")  # already gone: no error (another replica removed it)
    store.client.delete_bucket(Bucket=bucket)
    assert isinstance(open_objects(None, tmp_path), LocalObjects)
    assert isinstance(open_objects(str(tmp_path / "x"), tmp_path), LocalObjects)
    for bad in ("s3://", "gs://bucket/x", "http://host/x"):
        with pytest.raises(ValueError):
            open_objects(bad, tmp_path)


@pytest.fixture
def own_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    """A SeaweedFS of this test's own, which it may kill, pause and restart."""
    s3_prefix_url()  # skip / fail in CI the same way as the shared server
    for k, v in credentials_env().items():
        monkeypatch.setenv(k, v)
    server = Seaweed(tmp_path / "seaweed").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.s3
def test_a_dead_or_hung_store_fails_fast_names_no_secret_and_recovers(
        own_s3: Seaweed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    blobs, packs = open_stores("s3://fsdi/x", tmp_path, own_s3.endpoint)
    digest, _ = blobs.put(b"before")
    kept = packs.keep([b"q1"])[0]

    own_s3.pause()  # accepts connections, answers nothing: a hung store
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as hung:
        packs.keep([b"q2"])
    assert time.monotonic() - t0 < 5  # the kept-image client gives up within seconds
    with pytest.raises(PackUnavailable):  # paused after a failure, without asking again
        packs.keep([b"q3"])
    own_s3.resume()

    own_s3.kill()  # a dead store: connection refused
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as dead:
        blobs.put(b"during")
    assert time.monotonic() - t0 < 15
    with pytest.raises(StoreUnavailable):
        blobs.objects.check()
    for exc in (hung.value, dead.value):
        assert SECRET_KEY not in str(exc) and own_s3.endpoint in str(exc)
    assert SECRET_KEY not in caplog.text

    own_s3.start()  # back: the same clients work again, nothing restarted
    assert blobs.get(digest) == b"before" and packs.read(kept) == b"q1"
    assert blobs.put(b"after")[1]
    blobs.objects.check()
    assert isinstance(packs, QueryImages)
    packs.retry_s = 0  # past the pause
    assert packs.read(packs.keep([b"q4"])[0]) == b"q4"


@pytest.mark.s3
def test_copy_store_both_ways_resumes_and_refuses_corrupt_bytes(tmp_path: Path) -> None:
    """Disk -> S3 -> another disk: every owned object arrives checked; a rerun copies only
    what grew; a blob whose bytes no longer match its name is reported, not copied; the
    database and the ONNX cache stay where they are."""
    from storage.transfer import copy_store

    blobs, packs = open_stores(None, tmp_path / "one", S3_ENDPOINT)
    digests = [blobs.put(bytes([i]) * 100)[0] for i in range(5)]
    refs = packs.keep([b"query-1", b"query-2"])
    (tmp_path / "one" / "fsdi.db").write_bytes(b"not an image")
    (tmp_path / "one" / "onnx").mkdir()
    (tmp_path / "one" / "onnx" / "net.onnx").write_bytes(b"a cache")
    s3 = open_objects(s3_prefix_url(), tmp_path, S3_ENDPOINT)
    first = copy_store(blobs.objects, s3)
    assert (first.copied, first.already, first.ok) == (6, 0, True)
    refs += packs.keep([b"query-3"])  # the running process's pack grows meanwhile
    rotten = tmp_path / "one" / "blobs" / digests[0][:2] / digests[0][2:4] / digests[0]
    again = copy_store(blobs.objects, s3)
    assert (again.copied, again.already) == (1, 5)  # only the grown pack
    back = open_objects(str(tmp_path / "two"), tmp_path)
    rotten.write_bytes(b"bit rot")
    reverse = copy_store(s3, back)
    assert reverse.ok and reverse.copied == 6
    two_blobs, two_packs = open_stores(None, tmp_path / "two")
    assert [two_blobs.get(d) for d in digests] == [bytes([i]) * 100 for i in range(5)]
    assert [two_packs.read(r) for r in refs] == [b"query-1", b"query-2", b"query-3"]
    assert not (tmp_path / "two" / "fsdi.db").exists()
    assert not (tmp_path / "two" / "onnx").exists()
    rotten_copy = copy_store(blobs.objects, open_objects(str(tmp_path / "three"), tmp_path))
    assert rotten_copy.corrupt == [f"blobs/{digests[0][:2]}/{digests[0][2:4]}/{digests[0]}"]
    assert not rotten_copy.ok
