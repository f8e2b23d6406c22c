"""Hostile uploads, overload, ownership and the audit log."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from bench.imagegen import CLASSES, png_bytes, sample
from tests.app.conftest import as_files, make_settings, new_key, serving


def enc(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_header_size(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (CRC fixed up) over a tiny real body."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def bomb() -> bytes:
    """3,000 x 3,000 zeros: a few kB on disk, 9 Mpx decoded (over the test limit of 4 Mpx)."""
    return enc(Image.new("L", (3000, 3000)), "PNG", optimize=True)


def texture_png() -> bytes:
    return sample("brick", "scratch", 31)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.fromarray(np.asarray(Image.open(io.BytesIO(texture_png())))[:, :100])
    return enc(img, "JPEG", exif=exif)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(4)]
    return enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)


def palette_transparent() -> bytes:
    img = Image.open(io.BytesIO(texture_png())).convert("P", palette=Image.Palette.ADAPTIVE)
    return enc(img, "PNG", transparency=0)


HOSTILE = [  # (name, bytes factory, expected status, expected error code or None)
    ("random.png", lambda: np.random.default_rng(0).bytes(5000), 422, "invalid_image"),
    ("truncated.png", lambda: texture_png()[:400], 422, "invalid_image"),
    ("truncated.jpg", lambda: enc(Image.open(io.BytesIO(texture_png())), "JPEG")[:900],
     422, "invalid_image"),
    ("empty.png", lambda: b"", 422, "empty_file"),
    ("bomb.png", bomb, 413, "too_many_pixels"),
    ("huge-header.png", lambda: png_with_header_size(100_000, 100_000), 413,
     "too_many_pixels"),
    ("anim.gif", lambda: enc(Image.new("P", (8, 8)), "GIF"), 422, "invalid_image"),
    ("svg.png", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", 422, "invalid_image"),
    ("png-named.jpg", texture_png, 200, None),
    ("polyglot.png", lambda: texture_png() + b"PK\x03\x04<html>payload</html>", 200, None),
    ("cmyk.jpg", lambda: enc(Image.open(io.BytesIO(texture_png())).convert("CMYK"), "JPEG"),
     200, None),
    ("sixteen.png", lambda: enc(Image.fromarray(
        np.asarray(Image.open(io.BytesIO(texture_png())).convert("L")).astype(np.uint16)
        * 257), "PNG"), 200, None),
    ("palette-alpha.png", palette_transparent, 200, None),
    ("exif-rotated.jpg", exif_rotated, 200, None),
    ("animated.webp", animated_webp, 200, None),
    ("one-by-n.png", lambda: png_bytes(Image.new("RGB", (1, 500), (90, 90, 90))), 200, None),
    ("bmp.bmp", lambda: enc(Image.open(io.BytesIO(texture_png())), "BMP"), 200, None),
    ("tiff.tif", lambda: enc(Image.open(io.BytesIO(texture_png())), "TIFF"), 200, None),
]


@pytest.fixture(scope="module")
def hostile_group(client: TestClient) -> str:
    grp = f"h-{uuid.uuid4().hex[:8]}"
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        cid = client.post("/api/v1/classes", json={"name": name, "group": grp}).json()["id"]
        files = [(f"{j}.png", sample(surf, defect, 300 * ci + j)) for j in range(3)]
        assert client.post(f"/api/v1/classes/{cid}/images", files=as_files(files)
                           ).status_code == 201
    return grp


@pytest.mark.parametrize("name,make,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_classify(client: TestClient, hostile_group: str, name: str,
                               make, status: int, code: str | None) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/classify", params={"group": hostile_group},
                    files=[("files", (name, make(), "image/jpeg"))])
    assert r.status_code == status, r.text
    if code:
        err = r.json()["error"]
        assert err["code"] == code and name in err["message"]
        assert "PIL" not in err["message"] and "cannot identify" not in err["message"]
    else:
        assert len(r.json()["results"][0]["top_k"]) == 3


@pytest.mark.parametrize("name,make,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_enrolment_changes_nothing_or_everything(
        client: TestClient, name: str, make, status: int, code: str | None) -> None:  # type: ignore[no-untyped-def]
    grp = f"e-{uuid.uuid4().hex[:8]}"
    cid = client.post("/api/v1/classes", json={"name": "x", "group": grp}).json()["id"]
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    before = rt.blobs.all_digests()
    r = client.post(f"/api/v1/classes/{cid}/images",
                    files=as_files([("ok.png", sample("gravel", None, 77)), (name, make())]))
    count = client.get(f"/api/v1/classes/{cid}").json()["image_count"]
    if status == 200:
        assert r.status_code == 201 and count == 2
        if name == "exif-rotated.jpg":
            img = r.json()["images"][1]
            assert (img["width"], img["height"]) == (160, 100)  # stored upright
    else:
        assert r.status_code == status and count == 0
        assert rt.blobs.all_digests() == before


def test_overload_answers_503_with_retry_after(tmp_path: Path, model_cache: Path) -> None:
    with serving(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", model_cache,
                              queue_max_images=1)) as c:
        cid = c.post("/api/v1/classes", json={"name": "a"}).json()["id"]
        r = c.post(f"/api/v1/classes/{cid}/images", files=as_files(
            [("a.png", sample("brick", None, 1))]))
        assert r.status_code == 201
        two = as_files([("a.png", sample("brick", None, 2)), ("b.png", sample("brick", None, 3))])
        r = c.post("/api/v1/classify", files=two)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert c.post("/api/v1/classify", files=as_files([("a.png", sample("brick", None, 4))])
                      ).status_code == 200  # the queue drained: service recovered


def test_groups_never_leak_into_each_other(client: TestClient) -> None:
    ids: dict[str, set[int]] = {}
    images: dict[str, set[int]] = {}
    for grp in ("iso-a-" + uuid.uuid4().hex[:6], "iso-b-" + uuid.uuid4().hex[:6]):
        ids[grp], images[grp] = set(), set()
        for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
            cid = client.post("/api/v1/classes", json={"name": name, "group": grp}).json()["id"]
            r = client.post(f"/api/v1/classes/{cid}/images", files=as_files(
                [(f"{j}.png", sample(surf, defect, 900 * ci + j + len(ids))) for j in range(2)]))
            ids[grp].add(cid)
            images[grp] |= {i["id"] for i in r.json()["images"]}
    a, b = list(ids)
    r = client.post("/api/v1/classify", params={"group": a, "top_k": 10, "evidence": True},
                    files=as_files([("q.png", sample("brick", "scratch", 5))]))
    tops = r.json()["results"][0]["top_k"]
    assert {t["class_id"] for t in tops} <= ids[a] and not {t["class_id"] for t in tops} & ids[b]
    assert {e["image_id"] for t in tops for e in t["evidence"]} <= images[a]


def test_audit_log_is_admin_only_paged_and_append_only(client: TestClient) -> None:
    grp = f"audit-{uuid.uuid4().hex[:6]}"
    cid = client.post("/api/v1/classes", json={"name": "a", "group": grp}).json()["id"]
    client.post(f"/api/v1/classes/{cid}/images", files=as_files(
        [("a.png", sample("grass", None, 1))]))
    client.post("/api/v1/classify", params={"group": grp},
                files=as_files([("q.png", sample("grass", None, 2))]))
    client.delete(f"/api/v1/classes/{cid}")
    op = new_key(client, "operator")
    assert client.get("/api/v1/audit", headers={"Authorization": f"Bearer {op}"}
                      ).status_code == 403
    items = []
    offset = 0
    while True:
        page = client.get("/api/v1/audit", params={"offset": offset, "limit": 50}).json()
        items += page["items"]
        if len(page["items"]) < 50:
            break
        offset += 50
    mine = [i for i in items if f"group={grp}" in i["detail"] or f"class={cid}" in i["detail"]
            or f"id={cid}" in i["detail"]]
    assert [i["action"] for i in mine] == ["class.create", "image.add", "classify",
                                           "class.delete"]
    assert "sha256=" in mine[2]["detail"] and "model=fsdi_lite0_meta@" in mine[2]["detail"]
    assert mine[0]["actor"] == "admin-env"
    engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'x'"))
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))


def test_chunked_body_over_the_limit_is_cut_off_while_streaming(client: TestClient) -> None:
    """No Content-Length: the limit is enforced on the bytes as they arrive."""
    sent = [0]

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(64):  # 64 x 128 KiB = 8 MiB, over the test limit of 4 MiB
            sent[0] += 1
            yield b"x" * (128 * 1024)

    r = client.post("/api/v1/classify", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
