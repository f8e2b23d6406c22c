"""Per-group result push configuration (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import Admin, GroupPath, RuntimeDep
from app.errors import NotFound, Unprocessable
from app.schemas import PushConfig, PushPublic
from app.services.egress import EgressRefused, vet
from storage import repositories as repo
from storage.tables import PushTarget

router = APIRouter(prefix="/api/v1/groups/{group}/push", tags=["push"])
Group = GroupPath


def _public(t: PushTarget) -> PushPublic:
    return PushPublic(group=t.group_name, webhook_url=t.webhook_url,
                      signed=bool(t.webhook_secret), mqtt_topic=t.mqtt_topic)


@router.put("", response_model=PushPublic)
def set_push(group: Group, body: PushConfig, rt: RuntimeDep, who: Admin) -> PushPublic:
    """Push this group's classification results to a signed webhook and/or an MQTT topic."""
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
        repo.audit(s, who.actor, "push.set", f"group={group} webhook={body.webhook_url} "
                   f"mqtt={body.mqtt_topic}")
        s.flush()
        out = _public(t)
    with rt.sessions() as s:  # after the commit
        rt.load_push_targets(s)
    return out


@router.get("", response_model=PushPublic)
def get_push(group: Group, rt: RuntimeDep, _: Admin) -> PushPublic:
    with rt.sessions() as s:
        t = s.get(PushTarget, group)
        if t is None:
            raise NotFound(f"group {group!r} has no push target")
        return _public(t)


@router.delete("", status_code=204)
def delete_push(group: Group, rt: RuntimeDep, who: Admin) -> Response:
    with rt.sessions.begin() as s:
        t = s.get(PushTarget, group)
        if t is None:
            raise NotFound(f"group {group!r} has no push target")
        s.delete(t)
        repo.audit(s, who.actor, "push.delete", f"group={group}")
    with rt.sessions() as s:
        rt.load_push_targets(s)
    return Response(status_code=204)
