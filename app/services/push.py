"""Result push for PLCs and MES systems: signed webhooks with retries, and MQTT.

Classification never waits for a push: each group's results go into that group's own
bounded queue, drained by that group's own worker, so a hung or slow target only ever
delays its own group. Webhook bodies are signed: `X-FSDI-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>" with the group's secret>` and `X-FSDI-Timestamp`. Failed deliveries
are retried with exponential backoff; a full queue drops the oldest result and counts it.
Every delivery goes to an address checked by app.services.egress (no internal targets
unless FSDI_PUSH_ALLOW_HOSTS names them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from app.services.egress import Allow, EgressRefused, deliverable, pinned
from app.settings import Settings

log = logging.getLogger("fsdi.push")


@dataclass(frozen=True)
class Target:
    webhook_url: str | None
    webhook_secret: str | None
    mqtt_topic: str | None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass
class _Lane:
    """One group's queue and the worker that drains it."""

    queue: asyncio.Queue[tuple[Target, bytes]]
    task: asyncio.Task[None]


class Pusher:
    def __init__(self, settings: Settings, counter: Any = None) -> None:
        self.settings = settings
        self.counter = counter  # prometheus Counter with labels (channel, outcome)
        self.targets: dict[str, Target] = {}
        self.allow = Allow.parse(settings.push_allow_hosts.split(","))
        self._lanes: dict[str, _Lane] = {}
        self._client: httpx.AsyncClient | None = None
        self._mqtt: Any = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10, follow_redirects=False)

    async def stop(self) -> None:
        for lane in self._lanes.values():
            lane.task.cancel()
        self._lanes.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._mqtt is not None:
            self._mqtt.loop_stop()
            self._mqtt.disconnect()

    def wants(self, group: str) -> bool:
        """Whether results of `group` are pushed anywhere (skip building the payload)."""
        return self._client is not None and group in self.targets

    def submit(self, group: str, payload: dict[str, Any]) -> None:
        """Queue a result for `group`'s target (call on the event loop)."""
        target = self.targets.get(group)
        if target is None or self._client is None:
            return
        lane = self._lanes.get(group)
        if lane is None or lane.task.done():
            queue: asyncio.Queue[tuple[Target, bytes]] = asyncio.Queue(
                self.settings.push_queue_max)
            lane = _Lane(queue, asyncio.create_task(self._run(queue), name=f"fsdi-push-{group}"))
            self._lanes[group] = lane
        body = json.dumps(payload, separators=(",", ":")).encode()
        if lane.queue.full():
            lane.queue.get_nowait()
            self._count("queue", "dropped")
        lane.queue.put_nowait((target, body))

    async def _run(self, queue: asyncio.Queue[tuple[Target, bytes]]) -> None:
        while True:
            target, body = await queue.get()
            if target.mqtt_topic:
                await asyncio.to_thread(self._publish, target.mqtt_topic, body)
            if target.webhook_url:
                await self._post(target, body)

    async def _post(self, target: Target, body: bytes) -> None:
        if not target.webhook_url or self._client is None:  # stopped meanwhile
            return
        delay = self.settings.push_backoff_s
        for attempt in range(1, self.settings.push_max_attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-FSDI-Timestamp": ts}
            if target.webhook_secret:
                headers["X-FSDI-Signature"] = sign(target.webhook_secret, ts, body)
            try:
                parts, ip = await asyncio.to_thread(deliverable, target.webhook_url, self.allow)
                url, host, ext = pinned(parts, ip)
                r = await self._client.post(url, content=body, headers={**headers, **host},
                                            extensions=ext)
                if r.status_code < 300:
                    self._count("webhook", "delivered")
                    return
                reason = f"HTTP {r.status_code}"
            except EgressRefused as exc:
                self._count("webhook", "refused")
                log.warning("webhook not sent: %s", exc)
                return
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            self._count("webhook", "retry")
            log.warning("webhook attempt %d/%d failed (%s)", attempt,
                        self.settings.push_max_attempts, reason)
            if attempt < self.settings.push_max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self._count("webhook", "failed")

    def _publish(self, topic: str, body: bytes) -> None:
        try:
            client = self._mqtt_client()
            client.publish(topic, body, qos=1).wait_for_publish(timeout=5)
            self._count("mqtt", "delivered")
        except Exception:
            self._count("mqtt", "failed")
            log.exception("MQTT publish to %s failed", topic)

    def _count(self, channel: str, outcome: str) -> None:
        if self.counter is not None:
            self.counter.labels(channel, outcome).inc()

    def _mqtt_client(self) -> Any:
        if self._mqtt is None:
            import paho.mqtt.client as mqtt

            if not self.settings.mqtt_url:
                raise RuntimeError("FSDI_MQTT_URL is not set")
            u = urlparse(self.settings.mqtt_url)
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fsdi-push")
            if u.username:
                c.username_pw_set(u.username, u.password)
            c.connect(u.hostname or "127.0.0.1", u.port or 1883)
            c.loop_start()
            self._mqtt = c
        return self._mqtt
