"""Connect the line: how long a classification takes to reach what consumes it, per path,
in one run against one `fsdi serve` (SQLite, a group of 3 classes):

- webhook: a local HTTP receiver; MQTT: Mosquitto on 127.0.0.1:1883 and a paho
  subscriber; OPC UA: an asyncua client subscribed (publishing interval 10 ms) to the
  group's LastResult/ResultId, over the None endpoint with a key as its password.
  Measured from the result's stored time (`created_at`, set as its
  transaction writes it; read back from /results) to arrival, on this machine's clock.
- hot folder (`fsdi watch`, in this process): from a file renamed into the folder to its
  NAME.json on disk, end to end (the settle wait included: a renamed-in file written a
  second earlier counts as written at once).

    python -m bench.connect [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from bench.imagegen import CLASSES, sample
from bench.server import Server, free_port

KEY = "connect-bench-admin-key-0123"
H = {"Authorization": f"Bearer {KEY}"}
GROUP = "line"


def percentiles(xs: list[float]) -> str:
    a = np.asarray(xs) * 1e3
    return f"p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms (n={len(a)})"


def stored_times(c: httpx.Client, ids: set[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    cursor = None
    while len(out) < len(ids):
        params: dict[str, str | int] = {"group": GROUP, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/api/v1/results", params=params).json()
        for it in page["items"]:
            if it["id"] in ids:
                out[it["id"]] = datetime.fromisoformat(it["created_at"]).timestamp()
        cursor = page["next_cursor"]
        if not cursor:
            break
    return out


def push_paths(srv: Server, c: httpx.Client, n: int) -> dict[str, list[float]]:
    """Webhook and MQTT arrivals of n classifications, one at a time."""
    import paho.mqtt.client as mqtt

    arrived: dict[str, dict[int, float]] = {"webhook": {}, "MQTT": {}, "OPC UA": {}}
    opcua_ready, opcua_stop = threading.Event(), threading.Event()
    plc = threading.Thread(target=lambda: asyncio.run(opcua_client(
        srv.env["FSDI_OPCUA_URL"], arrived["OPC UA"], opcua_ready, opcua_stop)), daemon=True)
    plc.start()
    assert opcua_ready.wait(30), "the OPC UA client did not subscribe"

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            t = time.time()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            for r in body["results"]:
                arrived["webhook"][r["id"]] = t
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    recv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=recv.serve_forever, daemon=True).start()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        t = time.time()
        for r in json.loads(msg.payload)["results"]:
            arrived["MQTT"][r["id"]] = t

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fsdi-bench-connect")
    sub.on_message = on_message
    sub.connect("127.0.0.1", 1883)
    sub.subscribe("fsdi/bench/line", qos=1)
    sub.loop_start()
    try:
        r = c.put(f"/api/v1/groups/{GROUP}/push", json={
            "webhook_url": f"http://127.0.0.1:{recv.server_address[1]}/hook",
            "mqtt_topic": "fsdi/bench/line"})
        assert r.status_code == 200, r.text
        time.sleep(1.0)
        ids = set()
        for i in range(n):
            r = c.post("/api/v1/classify", params={"group": GROUP},
                       files=[("files", (f"q{i}.png", sample("brick", "scratch", 5000 + i),
                                         "image/png"))])
            ids.add(r.json()["results"][0]["id"])
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(a) < n for a in arrived.values()):
            time.sleep(0.1)
        stored = stored_times(c, ids)
        return {path: [a[i] - stored[i] for i in ids if i in a]
                for path, a in arrived.items()}
    finally:
        c.delete(f"/api/v1/groups/{GROUP}/push")
        opcua_stop.set()
        plc.join(10)
        sub.loop_stop()
        sub.disconnect()
        recv.shutdown()


async def opcua_client(url: str, arrived: dict[int, float], ready: threading.Event,
                       stop: threading.Event) -> None:
    """A PLC: subscribed to LastResult/ResultId of the group until `stop`."""
    from asyncua import Client, ua

    class Handler:
        def datachange_notification(self, node: object, val: int, data: object) -> None:
            if val:
                arrived[val] = time.time()

    c = Client(url)
    c.set_user("bench")
    c.set_password(KEY)
    async with c:
        ns = await c.get_namespace_index("urn:fsdi")
        deadline = time.monotonic() + 10  # the group's nodes appear within a second
        node = c.get_node(f"ns={ns};s=FSDI/Groups/{GROUP}/LastResult/ResultId")
        while True:
            try:
                await node.read_value()
                break
            except ua.UaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        sub = await c.create_subscription(10, Handler())
        await sub.subscribe_data_change(node)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)


def hot_folder(srv: Server, n: int, tmp: Path) -> list[float]:
    from app.watch import Watcher

    folder, staging = tmp / "camera", tmp / "staging"
    folder.mkdir()
    staging.mkdir()
    w = Watcher(folder, GROUP, srv.url, KEY, settle=1.0, poll=0.02, say=lambda m: None)
    stop = threading.Event()
    t = threading.Thread(target=w.run, kwargs={"stop": stop.is_set}, daemon=True)
    t.start()
    out = []
    try:
        for i in range(n):
            name = f"part-{i:04d}.png"
            (staging / name).write_bytes(sample("grass", "stain", 7000 + i))
            old = time.time() - 2  # written two seconds before it is moved in
            os.utime(staging / name, (old, old))
            t0 = time.time()
            os.replace(staging / name, folder / name)
            note = folder / "done" / (name + ".json")
            while not note.exists():
                time.sleep(0.002)
            out.append(note.stat().st_mtime - t0)
    finally:
        stop.set()
        t.join(10)
        w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-connect-"))
    srv = Server(tmp / "data", {"FSDI_ADMIN_KEY": KEY, "FSDI_MQTT_URL": "mqtt://127.0.0.1:1883",
                                "FSDI_PUSH_ALLOW_HOSTS": "127.0.0.1",
                                "FSDI_OPCUA_URL": f"opc.tcp://127.0.0.1:{free_port()}/fsdi"}
                 ).start()
    try:
        with httpx.Client(base_url=srv.url, headers=H, timeout=60) as c:
            for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
                cid = c.post("/api/v1/classes", json={"name": name, "group": GROUP}).json()["id"]
                c.post(f"/api/v1/classes/{cid}/images", files=[
                    ("files", (f"{j}.png", sample(surf, defect, 40 * ci + j), "image/png"))
                    for j in range(3)])
            for path, xs in push_paths(srv, c, a.n).items():
                print(f"{path:<12} stored -> arrived: {percentiles(xs)}")
        print(f"{'hot folder':<12} renamed in -> NAME.json on disk: "
              f"{percentiles(hot_folder(srv, a.n, tmp))}")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
