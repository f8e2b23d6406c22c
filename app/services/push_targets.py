"""Per-group push targets: configure, read and remove, each in one transaction with its
audit event; the runtime's targets are reloaded after the commit."""

from __future__ import annotations

from app.errors import NotFound, Unprocessable
from app.schemas import PushConfig, PushPublic
from app.services.egress import EgressRefused, vet
from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo
from storage.notify import notify_change
from storage.tables import PushTarget


def public(t: PushTarget) -> PushPublic:
    return PushPublic(group=t.group_name, webhook_url=t.webhook_url,
                      signed=bool(t.webhook_secret), mqtt_topic=t.mqtt_topic)


def configure(rt: Runtime, group: str, body: PushConfig, who: Principal) -> PushPublic:
    """Push this group's results to a signed webhook and/or an MQTT topic."""
    if not body.webhook_url and not body.mqtt_topic:
        raise Unprocessable("give webhook_url, mqtt_topic or both", code="no_target")
    if body.mqtt_topic and not rt.settings.mqtt_url:
        raise Unprocessable("this service has no MQTT broker (FSDI_MQTT_URL)", code="no_broker")
    if body.webhook_url:
        try:
            vet(body.webhook_url, rt.pusher.allow)
        except EgressRefused as exc:
            raise Unprocessable(str(exc), code="webhook_refused") from None
    with rt.sessions.begin() as s:
        t = s.get(PushTarget, group) or PushTarget(group_name=group)
        t.webhook_url, t.webhook_secret, t.mqtt_topic = (body.webhook_url, body.secret,
                                                         body.mqtt_topic)
        s.add(t)
        notify_change(s)
        repo.audit(s, who.actor, "push.set", f"group={group} webhook={body.webhook_url} "
                   f"mqtt={body.mqtt_topic}")
        s.flush()
        out = public(t)
    with rt.sessions() as s:  # after the commit
        rt.load_push_targets(s)
    return out


def get(rt: Runtime, group: str) -> PushPublic:
    with rt.sessions() as s:
        t = s.get(PushTarget, group)
        if t is None:
            raise NotFound(f"group {group!r} has no push target")
        return public(t)


def remove(rt: Runtime, group: str, who: Principal) -> None:
    with rt.sessions.begin() as s:
        t = s.get(PushTarget, group)
        if t is None:
            raise NotFound(f"group {group!r} has no push target")
        s.delete(t)
        notify_change(s)
        repo.audit(s, who.actor, "push.delete", f"group={group}")
    with rt.sessions() as s:
        rt.load_push_targets(s)
