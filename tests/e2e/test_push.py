"""Result push against a local HTTP receiver and the local Mosquitto broker."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.services.push import sign
from bench.imagegen import CLASSES, sample
from bench.server import Server

KEY = "push-admin-key-0123456789abc"
H = {"Authorization": f"Bearer {KEY}"}
SECRET = "webhook-secret-0123456789"


class Receiver(BaseHTTPRequestHandler):
    calls: list[tuple[dict[str, str], bytes]] = []
    fail_first = 1

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.calls.append((dict(self.headers), body))
        status = 500 if len(Receiver.calls) <= Receiver.fail_first else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def mqtt_available() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path, model_cache: Path):  # type: ignore[no-untyped-def]
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR":
                                     str(model_cache), "FSDI_MQTT_URL": "mqtt://127.0.0.1:1883",
                                     "FSDI_PUSH_BACKOFF_S": "0.2",
                                     "FSDI_PUSH_ALLOW_HOSTS": "127.0.0.1"}).start()
    c = httpx.Client(base_url=srv.url, headers=H, timeout=60)
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        cid = c.post("/api/v1/classes", json={"name": name, "group": "line7"}).json()["id"]
        c.post(f"/api/v1/classes/{cid}/images", files=[
            ("files", (f"{j}.png", sample(surf, defect, 70 * ci + j), "image/png"))
            for j in range(2)])
    yield srv, c
    c.close()
    srv.stop()


def classify(c: httpx.Client) -> dict:  # type: ignore[type-arg]
    r = c.post("/api/v1/classify", params={"group": "line7"},
               files=[("files", ("q.png", sample("grass", "stain", 5), "image/png"))])
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_signed_webhook_is_retried_until_delivered(server) -> None:  # type: ignore[no-untyped-def]
    srv, c = server
    recv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=recv.serve_forever, daemon=True).start()
    Receiver.calls = []
    url = f"http://127.0.0.1:{recv.server_address[1]}/hook"
    try:
        assert c.put("/api/v1/groups/line7/push", json={"webhook_url": "ftp://x"}
                     ).status_code == 422
        r = c.put("/api/v1/groups/line7/push", json={"webhook_url": url, "secret": SECRET})
        assert r.status_code == 200 and r.json()["signed"] is True
        assert "secret" not in c.get("/api/v1/groups/line7/push").json()
        res = classify(c)
        deadline = time.monotonic() + 10
        while len(Receiver.calls) < 2:
            assert time.monotonic() < deadline, Receiver.calls
            time.sleep(0.05)
        headers, body = Receiver.calls[-1]
        assert headers["X-FSDI-Signature"] == sign(SECRET, headers["X-FSDI-Timestamp"], body)
        pushed = json.loads(body)
        assert pushed["group"] == "line7"
        assert pushed["results"][0]["id"] == res["results"][0]["id"]
        assert c.delete("/api/v1/groups/line7/push").status_code == 204
        assert c.get("/api/v1/groups/line7/push").status_code == 404
    finally:
        recv.shutdown()


@pytest.mark.skipif(not mqtt_available() and not os.environ.get("CI"),
                    reason="no MQTT broker at 127.0.0.1:1883 (CI has one)")
def test_results_are_published_to_mqtt(server) -> None:  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    srv, c = server
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    sub.connect("127.0.0.1", 1883)
    sub.subscribe("fsdi/test/line7", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        assert c.put("/api/v1/groups/line7/push", json={"mqtt_topic": "fsdi/test/line7"}
                     ).status_code == 200
        res = classify(c)
        deadline = time.monotonic() + 10
        while not got:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(got[0])["results"][0]["id"] == res["results"][0]["id"]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_push_outcomes_are_metrics(server) -> None:  # type: ignore[no-untyped-def]
    srv, c = server
    c.put("/api/v1/groups/line7/push", json={"webhook_url": "http://127.0.0.1:9/closed"})
    classify(c)
    deadline = time.monotonic() + 15
    while 'fsdi_push_total{channel="webhook",outcome="retry"}' not in httpx.get(
            srv.url + "/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = httpx.get(srv.url + "/metrics").text
    for name in ("fsdi_requests_total", "fsdi_classify_seconds", "fsdi_images_classified_total",
                 "fsdi_unknown_total", "fsdi_images_enrolled_total", "fsdi_batch_size",
                 "fsdi_queue_images", "fsdi_classes_cached"):
        assert name in text, name
