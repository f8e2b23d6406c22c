"""Hostile clients against a real `fsdi serve` process on loopback (issue findings A–I).
Every loop is bounded in count and time; nothing leaves 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.imagegen import CLASSES, sample
from bench.server import Server
from tests.conftest import fresh_pg_database

KEY = "hostile-admin-key-0123456789abc"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("hostile") / "data", {
        "FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(model_cache),
        "FSDI_HEADER_TIMEOUT_S": "2", "FSDI_BODY_IDLE_TIMEOUT_S": "2",
        "FSDI_PUSH_ALLOW_HOSTS": "127.0.0.1", "FSDI_PUSH_BACKOFF_S": "0.2",
        "FSDI_PUSH_MAX_ATTEMPTS": "1"}).start()
    yield s
    s.stop()


def enrol(url: str, group: str, n_classes: int = 2) -> dict[str, int]:
    ids = {}
    with httpx.Client(base_url=url, headers=H, timeout=60) as c:
        for ci, (name, (surf, defect)) in enumerate(list(CLASSES.items())[:n_classes]):
            r = c.post("/api/v1/classes", json={"name": name, "group": group})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
            files = [("files", (f"{j}.png", sample(surf, defect, 40 * ci + j), "image/png"))
                     for j in range(2)]
            assert c.post(f"/api/v1/classes/{ids[name]}/images", files=files).status_code == 201
    return ids


def healthz_seconds(url: str) -> float:
    t0 = time.monotonic()
    r = httpx.get(url + "/healthz", timeout=5)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def connect(srv: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (data before the close is read)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- A: idle, half-sent and trickling connections -----------------------------------------

def test_a_idle_connections_never_lock_out_healthz(srv: Server) -> None:
    idle = [connect(srv) for _ in range(300)]
    try:
        time.sleep(0.3)
        assert healthz_seconds(srv.url) < 1.0
        r = httpx.get(srv.url + "/api/v1/me", headers=H, timeout=5)
        assert r.status_code == 200
    finally:
        for s in idle:
            s.close()


def test_a_half_sent_headers_and_trickled_bodies_are_cut_off(srv: Server) -> None:
    half = connect(srv)
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
    body = connect(srv)
    body.sendall(b"POST /api/v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + KEY.encode() + b"\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Length: 1000\r\n\r\nab")  # then silence
    try:
        assert closed_within(half, 6), "half-sent headers kept the connection"
        assert closed_within(body, 6), "a stalled body kept the connection"
    finally:
        half.close()
        body.close()
    assert healthz_seconds(srv.url) < 1.0


# -- B: oversized headers ---------------------------------------------------------------

def test_b_a_32_mb_header_is_refused_while_healthz_keeps_answering(srv: Server) -> None:
    answer: list[bytes] = []

    def attack() -> None:
        s = connect(srv)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            for _ in range(32):
                s.sendall(chunk)
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass  # refused mid-way: the server closed on us
        try:
            s.settimeout(5)
            answer.append(s.recv(200))
        except OSError:
            answer.append(b"")
        s.close()

    t = threading.Thread(target=attack)
    t.start()
    slowest = 0.0
    while t.is_alive():
        slowest = max(slowest, healthz_seconds(srv.url))
        time.sleep(0.05)
    t.join()
    assert slowest < 1.0
    assert answer[0] == b"" or answer[0].startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer


# -- C: a keyless body is never read ----------------------------------------------------

def test_c_keyless_upload_gets_401_from_its_headers(srv: Server) -> None:
    s = connect(srv)
    size = 60 * 1024 * 1024
    s.sendall(b"POST /api/v1/classify HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: multipart/form-data; boundary=b\r\n"
              + f"Content-Length: {size}\r\n\r\n".encode())
    with contextlib.suppress(OSError):  # closed after the 401 before our MB: still fine
        s.sendall(b"x" * (1024 * 1024))
    s.settimeout(5)
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    assert b"www-authenticate: bearer" in head.lower()


# -- D: 16-bit images cost what their pixels cost at 8 bits ------------------------------

def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_d_sixteen_bit_pngs_stay_within_memory(srv: Server) -> None:
    if not Path(f"/proc/{srv.pid}/status").exists():
        pytest.skip("needs /proc")
    enrol(srv.url, "sixteen")
    a = np.zeros((6200, 6200), np.uint16)
    a[::97, :] = 60000
    a[:, ::89] = 30000
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    png = buf.getvalue()
    assert Image.open(io.BytesIO(png)).mode.startswith("I;16")
    files = [("files", (f"{i}.png", png, "image/png")) for i in range(4)]
    warm = [("files", ("w.png", sample("brick", None, 1), "image/png"))]
    httpx.post(srv.url + "/api/v1/classify", params={"group": "sixteen"}, files=warm,
               headers=H, timeout=60)
    before = peak_rss_bytes(srv.pid)
    r = httpx.post(srv.url + "/api/v1/classify", params={"group": "sixteen"}, files=files,
                   headers=H, timeout=120)
    assert r.status_code == 200, r.text
    grown = peak_rss_bytes(srv.pid) - before
    assert grown < 500 * 1024 * 1024, f"peak memory grew by {grown / 2**20:.0f} MiB"


# -- E: a deleted class's id never comes back --------------------------------------------

def test_e_feedback_on_a_deleted_class_never_promotes_into_another_group(srv: Server) -> None:
    c = httpx.Client(base_url=srv.url, headers=H, timeout=60)
    ids = enrol(srv.url, "line1")
    x = ids["scratch"] if "scratch" in ids else next(iter(ids.values()))
    q = [("files", ("q.png", sample("brick", None, 7), "image/png"))]
    rid = c.post("/api/v1/classify", params={"group": "line1"}, files=q).json()["results"][0]["id"]
    fb = c.post("/api/v1/feedback", json={"result_id": rid, "correct": False, "class_id": x})
    assert fb.status_code == 201, fb.text
    assert c.delete(f"/api/v1/classes/{x}").status_code == 204
    y = c.post("/api/v1/classes", json={"name": "y", "group": "other-line"}).json()["id"]
    assert y != x
    r = c.post(f"/api/v1/feedback/{fb.json()['id']}/promote")
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_target_class"
    assert c.get(f"/api/v1/classes/{y}").json()["image_count"] == 0


# -- F: webhooks never reach internal addresses -----------------------------------------

@pytest.mark.parametrize("url", [
    "http://localhost:8000/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data",
    "http://2130706433/x", "http://0x7f000001/x", "http://10.1.2.3/x", "http://192.168.0.5/",
    "http://172.16.0.1/", "http://224.0.0.1/", "http://[::ffff:127.0.0.1]/",
    "http://alice:s3cr3t@example.com/hook", "ftp://example.com/x"])
def test_f_internal_or_credentialed_webhooks_are_refused(any_backend: Server, url: str
                                                         ) -> None:
    """On a server with no FSDI_PUSH_ALLOW_HOSTS (the `srv` one allows 127.0.0.1)."""
    srv = any_backend
    r = httpx.put(srv.url + "/api/v1/groups/ssrf/push", json={"webhook_url": url}, headers=H,
                  timeout=10)
    assert r.status_code == 422, (url, r.text)
    assert "s3cr3t" not in r.text
    audit = httpx.get(srv.url + "/api/v1/audit", params={"limit": 1000}, headers=H).text
    assert "s3cr3t" not in audit


# -- G: one hung webhook target holds up only its own group -----------------------------

class _Fast(BaseHTTPRequestHandler):
    arrived: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        _Fast.arrived.append(time.monotonic())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_g_a_hung_target_does_not_delay_another_group(srv: Server) -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # accepts (the kernel does) and never answers
    fast = ThreadingHTTPServer(("127.0.0.1", 0), _Fast)
    threading.Thread(target=fast.serve_forever, daemon=True).start()
    c = httpx.Client(base_url=srv.url, headers=H, timeout=60)
    try:
        enrol(srv.url, "hung-line", 1)
        enrol(srv.url, "fast-line", 1)
        for group, port in (("hung-line", hung.getsockname()[1]),
                            ("fast-line", fast.server_address[1])):
            r = c.put(f"/api/v1/groups/{group}/push",
                      json={"webhook_url": f"http://127.0.0.1:{port}/hook"})
            assert r.status_code == 200, r.text
        q = [("files", ("q.png", sample("brick", None, 3), "image/png"))]
        for _ in range(3):
            assert c.post("/api/v1/classify", params={"group": "hung-line"}, files=q
                          ).status_code == 200
        sent = time.monotonic()
        assert c.post("/api/v1/classify", params={"group": "fast-line"}, files=q
                      ).status_code == 200
        deadline = sent + 5
        while not _Fast.arrived and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _Fast.arrived and _Fast.arrived[0] - sent < 3, "the hung line held it up"
    finally:
        fast.shutdown()
        hung.close()
        for group in ("hung-line", "fast-line"):
            c.delete(f"/api/v1/groups/{group}/push")


# -- H: NUL and control characters are a 422 on every backend, secrets never logged ------

@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                marks=pytest.mark.postgres)])
def any_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                model_cache: Path) -> Iterator[Server]:
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(model_cache)}
    pg = None
    if request.param == "postgres":
        pg = fresh_pg_database()
        env["FSDI_DATABASE_URL"] = next(pg)
    s = Server(tmp_path_factory.mktemp(f"nul-{request.param}") / "data", env).start()
    yield s
    s.stop()
    if pg is not None:
        next(pg, None)


SECRET = "super-secret-webhook-value-0123"


def test_h_control_characters_are_422_and_nothing_leaks(any_backend: Server) -> None:
    with httpx.Client(base_url=any_backend.url, headers=H, timeout=30) as c:
        bad = [("POST", "/api/v1/classes", {"name": "a\x00b"}),
               ("POST", "/api/v1/classes", {"name": "ok", "description": "x\x00y"}),
               ("POST", "/api/v1/classes", {"name": "tab\tname"}),
               ("POST", "/api/v1/keys", {"role": "machine", "label": "l\x00"}),
               ("PUT", "/api/v1/groups/g/push", {"webhook_url": "https://example.com/h",
                                                 "secret": SECRET + "\x00"})]
        for method, path, body in bad:
            r = c.request(method, path, json=body)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
            assert c.get("/api/v1/me").status_code == 200  # the connection still serves
        for params in ({"group": "a\x00b"}, {"group": "line 1"}):
            assert c.get("/api/v1/classes", params=params).status_code == 422
            files = [("files", ("q.png", sample("brick", None, 1), "image/png"))]
            assert c.post("/api/v1/classify", params=params, files=files).status_code == 422
    log = any_backend.log.read_text()
    assert SECRET not in log and "Traceback" not in log


# -- I: browser and offline hygiene -----------------------------------------------------

def test_i_headers_offline_docs_and_redacted_access_log(srv: Server) -> None:
    page = httpx.get(srv.url + "/", timeout=10)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    docs = httpx.get(srv.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "http://" not in docs.text and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{srv.url}/docs-assets/{asset}", timeout=10).status_code == 200
    assert "script-src 'self' 'sha256-" in docs.headers["content-security-policy"]
    r = httpx.get(srv.url + "/api/v1/classes", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    leaked = "fsdi_ThisKeyWasPastedIntoAUrl0123456789"
    httpx.get(srv.url + "/healthz", params={"key": leaked, "token": "tok-secret-9"}, timeout=10)
    time.sleep(0.3)
    log = srv.log.read_text()
    assert "/healthz?" in log and leaked not in log and "tok-secret-9" not in log
